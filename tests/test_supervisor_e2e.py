"""`edgehost up` end to end: real processes, the real litestream binary, moto S3 over HTTP."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import pytest

from edgehost.engine import layout, litestream
from procs import (Proc, Writer, edgehost, edgehost_argv, pid_alive, plain_restore, rows, service,
                   start_supervisor, supervisor_status, sync_db, wait_until)

pytestmark = pytest.mark.e2e


def _restored_ids(home, slug, tmp_path) -> list[int]:
    settings = home.settings()
    ref = layout.property_db(settings, slug)
    out = tmp_path / f"check-{slug}-{time.monotonic_ns()}.db"
    proc = plain_restore(litestream.replication(settings).restore_url(ref), out, home.environ())
    assert proc.returncode == 0, proc.stderr
    return [r[0] for r in rows(out, "SELECT id FROM compliance_events ORDER BY id")]


def test_start_order_restart_after_kill_and_clean_stop(s3_home, tmp_path):
    settings = s3_home.settings()
    up = start_supervisor(s3_home)
    url = settings.portal_url
    try:
        log = up.output()
        assert log.index("litestream ready") < log.index("starting portal")
        assert "AWS_CA_BUNDLE dropped" in log or "AWS_CA_BUNDLE" not in os.environ
        httpx.post(f"{url}/properties", json={"slug": "acme"}).raise_for_status()
        writer = Writer(url, "acme", pause=0.005).start()

        # kill -9 litestream: it comes back, and what was written meanwhile reaches the replica.
        old = service(settings, "litestream")
        os.kill(old["pid"], signal.SIGKILL)
        wait_until(lambda: service(settings, "litestream")["state"] == "running"
                   and service(settings, "litestream")["pid"] not in (None, old["pid"]), 30, what="litestream restart")
        assert service(settings, "litestream")["restarts"] == 1

        # kill -9 the portal: it comes back and serves again.
        portal = service(settings, "portal")
        t0 = time.monotonic()
        os.kill(portal["pid"], signal.SIGKILL)
        wait_until(lambda: service(settings, "portal")["pid"] not in (None, portal["pid"])
                   and httpx.get(f"{url}/healthz", timeout=1).status_code == 200, 30, what="portal restart")
        print(f"portal serving again {time.monotonic() - t0:.2f}s after kill -9")
        time.sleep(1)
        acked = writer.stop()
        assert len(acked) > 20
        sync_db(settings, layout.property_db(settings, "acme"))
        assert set(acked) <= set(_restored_ids(s3_home, "acme", tmp_path))

        pids = [s["pid"] for s in supervisor_status(settings)["services"]]
    finally:
        code = up.stop()
    assert code == 0, up.output()
    assert not [p for p in pids if pid_alive(p)], "a child outlived the supervisor"
    assert not settings.supervisor_socket.exists()


def test_sigterm_during_writes_loses_no_acknowledged_row(s3_home, tmp_path):
    settings = s3_home.settings()
    up = start_supervisor(s3_home)
    url = settings.portal_url
    httpx.post(f"{url}/properties", json={"slug": "busy"}).raise_for_status()
    writer = Writer(url, "busy").start()
    wait_until(lambda: len(writer.acked) > 200, 30, what="writes")
    up.signal(signal.SIGTERM)  # as launchd/systemd would, while the writer is still going
    assert up.popen.wait(90) == 0, up.output()
    acked = writer.stop()
    restored = set(_restored_ids(s3_home, "busy", tmp_path))
    lost = [i for i in acked if i not in restored]
    print(f"acknowledged {len(acked)} rows, lost {len(lost)}")
    assert lost == []
    log = up.output()
    assert log.index("portal stopped") < log.index("litestream stopped")


def test_a_fresh_machine_gets_every_database_back_before_the_portal_starts(s3_home, tmp_path):
    settings = s3_home.settings()
    up = start_supervisor(s3_home)
    url = settings.portal_url
    expected = {}
    for slug in ("alpha", "bravo", "charlie"):
        httpx.post(f"{url}/properties", json={"slug": slug}).raise_for_status()
        expected[slug] = [httpx.post(f"{url}/properties/{slug}/events", json={"kind": "k"}).json()["id"] for _ in range(5)]
        sync_db(settings, layout.property_db(settings, slug))
    httpx.put(f"{url}/study/users/u1", json={"email": "a@b.c"}).raise_for_status()
    litestream.ControlSocket(settings.litestream_socket).sync(settings.global_db, wait=True)
    assert up.stop() == 0

    # The Mac died: a new one has an empty data dir and the same replica.
    import shutil

    shutil.rmtree(settings.data_dir)
    shutil.rmtree(settings.state_dir)
    up = start_supervisor(s3_home, log_name="up2.log")
    try:
        log = up.output()
        assert "restore: 4 database(s)" in log
        assert log.index("restore: alpha: ok") < log.index("starting portal")
        for slug, ids in expected.items():
            got = [e["id"] for e in httpx.get(f"{url}/properties/{slug}/events").json()["events"]]
            assert got == ids
        assert httpx.get(f"{url}/study/users/u1").json()["email"] == "a@b.c"
        # and the restored databases go on replicating
        new_id = httpx.post(f"{url}/properties/alpha/events", json={"kind": "after"}).json()["id"]
        sync_db(settings, layout.property_db(settings, "alpha"))
        assert _restored_ids(s3_home, "alpha", tmp_path) == expected["alpha"] + [new_id]
    finally:
        assert up.stop() == 0


def test_a_crash_looping_portal_is_failed_while_litestream_keeps_replicating(kit_home, tmp_path):
    (kit_home.path / "edgehost.toml").write_text(
        "[portal]\ncommand = ['sh', '-c', 'echo portal broke; exit 3']\n"
        "[restart]\ninitial_backoff = 0.05\nmax_backoff = 0.5\ncrash_loop_failures = 4\ncrash_loop_window = 30\n"
    )
    settings = kit_home.settings()
    up = start_supervisor(kit_home, wait=False)
    try:
        wait_until(lambda: service(settings, "portal")["state"] == "failed", 30, what="the portal to be marked failed")
        assert "portal FAILED: 4 exits within 30s" in up.output()
        assert service(settings, "litestream")["state"] == "running" and up.alive()
        # retried at the maximum backoff, never given up on
        wait_until(lambda: up.output().count("[portal] portal broke") >= 6, 30, what="retries of the failed portal")
        # replication goes on: a property written beside the broken portal reaches the replica
        assert edgehost(kit_home, "property", "add", "acme").returncode == 0
        ref = layout.property_db(settings, "acme")
        sync_db(settings, ref)
        assert _restored_ids(kit_home, "acme", tmp_path) == []
    finally:
        assert up.stop() == 0, up.output()[-2000:]


def test_a_world_readable_env_file_is_refused(kit_home):
    env_file = kit_home.path / "edgehost.env"
    env_file.write_text("AWS_SECRET_ACCESS_KEY=do-not-leak-me\n")
    env_file.chmod(0o644)
    up = Proc(edgehost_argv("up"), kit_home.environ(), kit_home.path / "up.log")
    assert up.popen.wait(30) == 2
    out = up.output()
    assert "chmod 600" in out and "do-not-leak-me" not in out
    assert len(out.strip().splitlines()) == 1


def test_secrets_never_reach_argv_or_logs(s3_home):
    settings = s3_home.settings()
    up = start_supervisor(s3_home)
    try:
        secret = s3_home.env["AWS_SECRET_ACCESS_KEY"]
        for svc in supervisor_status(settings)["services"]:
            with open(f"/proc/{svc['pid']}/cmdline", "rb") as f:
                assert secret.encode() not in f.read()
    finally:
        up.stop()
    for log in settings.log_dir.glob("*.log"):
        assert secret not in log.read_text()
    assert secret not in up.output()


def test_killing_the_supervisor_takes_its_children_down(kit_home):
    settings = kit_home.settings()
    up = start_supervisor(kit_home)
    pids = [s["pid"] for s in supervisor_status(settings)["services"]]
    os.kill(up.pid, signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(p) for p in pids), 60, what="children to exit after the supervisor died")
    up.stop()
    # and the next `edgehost up` starts cleanly over the stale pid file and sockets
    again = start_supervisor(kit_home, log_name="up2.log")
    assert again.stop() == 0


def test_metrics_show_per_db_lag_and_sighup_reopens_logs(kit_home):
    settings = kit_home.settings()
    up = start_supervisor(kit_home)
    try:
        httpx.post(f"{settings.portal_url}/properties", json={"slug": "acme"}).raise_for_status()
        metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"

        def scraped():
            text = httpx.get(metrics_url).text
            return text if 'edgehost_replication_lag_seconds{db="acme"}' in text else None

        text = wait_until(scraped, 30, interval=0.5, what="the lag gauge for acme")
        assert re.search(r'edgehost_replication_lag_seconds\{db="global"\} \d', text)
        assert 'edgehost_service_up{service="portal"} 1.0' in text
        assert re.search(r'edgehost_lease_held\{machine_id="[0-9a-f]+"\} 1.0', text)
        assert "# TYPE edgehost_alerts_total counter" in text and "# TYPE edgehost_service_restarts_total counter" in text

        # newsyslog moves the file away and sends SIGHUP: new lines must land in a new file
        log = settings.log_dir / "portal.log"
        rotated = settings.log_dir / "portal.log.0"
        log.rename(rotated)
        up.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: log files reopened" in (settings.log_dir / "edgehost.log").read_text()
                   if (settings.log_dir / "edgehost.log").exists() else False, 10, what="reopen")
        portal = service(settings, "portal")
        os.kill(portal["pid"], signal.SIGKILL)  # make the portal say something
        wait_until(lambda: log.exists() and "Uvicorn running" in log.read_text(), 30, what="portal lines in the new file")
        assert "Uvicorn running" in rotated.read_text()
    finally:
        assert up.stop() == 0
