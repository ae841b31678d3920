"""Each alert event driven for real under `edgehost up` (real litestream, moto over HTTP, real files),
with a local HTTP receiver standing in for the webhook and healthchecks: exactly one alert and one
recovery per incident."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgehost.engine import layout, litestream
from edgehost.engine.replica import ReplicaStore
from procs import Proc, Receiver, Writer, edgehost, edgehost_argv, free_port, start_supervisor, wait_until

sys.path.insert(0, str(Path(__file__).parent / "chaos"))
from chaos_kit import SwitchableProxy  # noqa: E402

pytestmark = pytest.mark.e2e

ALERTS_TOML = """
[alerts]
check_every = 1
healthchecks_every = 1
cooldown_seconds = 600
retry_backoff_seconds = 0.2
"""


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _wire(home, receiver, toml: str = "", **env: str):
    (home.path / "edgehost.toml").write_text(ALERTS_TOML + toml)
    home.env.update({"EDGEHOST_WEBHOOK_URL": f"{receiver.url}/hook", "EDGEHOST_HEALTHCHECKS_URL": f"{receiver.url}/hc",
                     **env})


def _incidents(receiver, event: str, database: str | None = None) -> list[str]:
    return [n["kind"] for n in receiver.notices() if n["event"] == event and (database is None or n["database"] == database)]


def test_a_replica_outage_alerts_lag_once_recovers_once_and_fails_the_dead_mans_switch(s3_home, receiver):
    proxy = SwitchableProxy(s3_home.env["EDGEHOST_S3_ENDPOINT"])
    s3_home.env.update({"EDGEHOST_S3_ENDPOINT": proxy.endpoint, "EDGEHOST_LAG_ALERT_SECONDS": "3",
                        "EDGEHOST_DURABLE_PROPERTY_DBS": "false",  # writes go on through the outage
                        "EDGEHOST_LITESTREAM_STOP_TIMEOUT": "10"})
    _wire(s3_home, receiver)
    settings = s3_home.settings()
    up = start_supervisor(s3_home)
    try:
        httpx.post(f"{settings.portal_url}/properties", json={"slug": "acme"}).raise_for_status()
        writer = Writer(settings.portal_url, "acme", pause=0.2).start()
        wait_until(lambda: len(receiver.got("/hc")) >= 2, 30, what="healthchecks success pings")
        metrics = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        wait_until(lambda: 'edgehost_replication_lag_seconds{db="acme"}' in httpx.get(metrics).text, 30,
                   what="the supervisor's first status poll")
        assert not [r for r in receiver.requests if r["path"] == "/hc/fail"]

        proxy.set_mode("refuse")
        wait_until(lambda: _incidents(receiver, "lag", "acme") == ["alert"], 60, what=f"the lag alert {receiver.notices()}")
        wait_until(lambda: receiver.got("/hc/fail"), 30, what="the dead-man's switch to report /fail")
        time.sleep(5)  # the incident goes on: nothing more is sent for it
        assert _incidents(receiver, "lag", "acme") == ["alert"]
        proxy.set_mode("up")
        wait_until(lambda: _incidents(receiver, "lag", "acme") == ["alert", "recovery"], 120, what="the lag recovery")
        pings = len(receiver.got("/hc"))
        wait_until(lambda: len(receiver.got("/hc")) > pings, 30, what="success pings again")
        writer.stop()
        alert = next(n for n in receiver.notices() if n["event"] == "lag")
        assert alert["severity"] == "critical" and "behind" in alert["summary"] and alert["host"]

        # Stopping while the replica is away: the final sync cannot land, and that is sent before exit.
        proxy.set_mode("refuse")
        httpx.post(f"{settings.portal_url}/properties/acme/events", json={"kind": "last"}).raise_for_status()
        assert up.stop() == 5
        assert _incidents(receiver, "final_sync") == ["alert"]
    finally:
        up.stop()
    proxy.set_mode("up")
    again = start_supervisor(s3_home, log_name="again.log")
    try:
        wait_until(lambda: _incidents(receiver, "final_sync") == ["alert", "recovery"], 60,
                   what="the final-sync recovery once the databases are replicated")
    finally:
        assert again.stop() == 0
        proxy.close()
    assert _incidents(receiver, "lag", "acme") == ["alert", "recovery"]  # not repeated by the restart
    log = (s3_home.path / "up.log").read_text() + (s3_home.path / "again.log").read_text()
    assert receiver.url.split("//")[1] not in log  # the channel URLs never reach a log


def test_a_crash_looping_portal_alerts_once_and_recovers_once(kit_home, receiver):
    flag = kit_home.path / "portal-may-run"
    command = f"sh -c 'test -f {flag} && exec {sys.executable} -m edgehost.portal; exit 3'"
    _wire(kit_home, receiver, '\n[restart]\ninitial_backoff = 0.2\nmax_backoff = 2\ncrash_loop_failures = 3\n'
                              'crash_loop_window = 60\nhealthy_after = 2\nexit_on_failure = false\n',
          EDGEHOST_PORTAL_COMMAND=command)
    up = start_supervisor(kit_home, wait=False)
    try:
        wait_until(lambda: _incidents(receiver, "service_failed") == ["alert"], 60, what="the crash-loop alert")
        alert = receiver.notices()[0]
        assert "portal FAILED" in alert["summary"] and "exit code 3" in alert["summary"]
        flag.write_text("")
        wait_until(lambda: _incidents(receiver, "service_failed") == ["alert", "recovery"], 60, what="the recovery")
        assert "portal running again" in receiver.notices()[-1]["summary"]
        time.sleep(3)
        assert _incidents(receiver, "service_failed") == ["alert", "recovery"]
    finally:
        assert up.stop() == 0


def test_free_disk_below_the_threshold_on_a_small_tmpfs(kit_home, receiver):
    data = kit_home.path / "data"
    data.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(data)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        _wire(kit_home, receiver, "disk_free_min_mb = 12\n")
        up = start_supervisor(kit_home)
        try:
            assert not _incidents(receiver, "disk_low")
            ballast = data / "ballast"
            ballast.write_bytes(b"\0" * (16 << 20))  # 24 MB volume: about 7 MB left
            wait_until(lambda: _incidents(receiver, "disk_low") == ["alert"], 30, what="the disk alert")
            assert "below 12 MB" in receiver.notices()[-1]["summary"]
            ballast.unlink()
            wait_until(lambda: _incidents(receiver, "disk_low") == ["alert", "recovery"], 30, what="the recovery")
        finally:
            assert up.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def test_a_drill_failing_on_a_corrupted_replica_alerts_and_a_passing_one_recovers(kit_home, receiver):
    # drill_overdue_days of 20 s: a machine that has not drilled since it started is overdue at once.
    _wire(kit_home, receiver, f"drill_overdue_days = {20 / 86400}\n")
    settings = kit_home.settings()
    up = start_supervisor(kit_home)
    try:
        url = settings.portal_url
        httpx.post(f"{url}/properties", json={"slug": "beta"}).raise_for_status()
        for i in range(20):
            httpx.post(f"{url}/properties/beta/events", json={"kind": "k", "payload": {"i": i}}).raise_for_status()
        wait_until(lambda: _incidents(receiver, "drill_overdue") == ["alert"], 60, what="the overdue-drill alert")
        ref = layout.property_db(settings, "beta")
        litestream.ControlSocket(settings.litestream_socket).sync(ref.path, wait=True)
        store = ReplicaStore.from_settings(settings)
        originals: dict[str, bytes] = {}

        def corrupt() -> None:
            # Every LTX file, also a compaction litestream uploaded since (made from its clean local copies).
            for obj in store.walk("beta"):
                if obj.key.endswith(".ltx") and obj.key not in originals:
                    originals[obj.key] = data = store.read(obj.key)
                    flipped = bytearray(data)
                    mid = len(flipped) // 2
                    flipped[mid:mid + 8] = bytes(b ^ 0xFF for b in flipped[mid:mid + 8])
                    store.write(obj.key, bytes(flipped))

        corrupt()
        failed = edgehost(kit_home, "drill")
        assert failed.returncode == 1, failed.stderr[-2000:]
        wait_until(lambda: _incidents(receiver, "drill_failed") == ["alert"], 30, what="the failed-drill alert")
        corrupt()
        assert edgehost(kit_home, "verify", "beta").returncode == 1
        wait_until(lambda: _incidents(receiver, "verify_failed") == ["alert"], 30, what="the failed-verify alert")
        assert [r["path"] for r in receiver.requests if r["path"] in ("/hc/start", "/hc/fail")][:2] == ["/hc/start", "/hc/fail"]

        for key, data in originals.items():
            store.write(key, data)
        passed = edgehost(kit_home, "drill")
        assert passed.returncode == 0, passed.stderr[-3000:]
        wait_until(lambda: _incidents(receiver, "drill_failed") == ["alert", "recovery"], 30, what="the drill recovery")
        assert edgehost(kit_home, "verify", "beta").returncode == 0
        wait_until(lambda: _incidents(receiver, "verify_failed") == ["alert", "recovery"], 30, what="the verify recovery")
        wait_until(lambda: _incidents(receiver, "drill_overdue") == ["alert", "recovery"], 30, what="no longer overdue")
    finally:
        assert up.stop() == 0


def test_a_take_over_alerts_the_fenced_machine(kit_home, receiver, tmp_path_factory):
    kit_home.env.update({"EDGEHOST_MACHINE_ID": "e" * 8, "EDGEHOST_LEASE_RENEW_SECONDS": "1",
                         "EDGEHOST_LEASE_TTL_SECONDS": "30"})
    _wire(kit_home, receiver)
    b_path = tmp_path_factory.mktemp("m", numbered=True)
    shutil.copy(kit_home.path / "litestream.yml", b_path / "litestream.yml")
    b_env = {**kit_home.env, "EDGEHOST_HOME": str(b_path), "EDGEHOST_PORTAL_PORT": str(free_port()),
             "EDGEHOST_METRICS_PORT": str(free_port()), "EDGEHOST_MACHINE_ID": "f" * 8,
             "EDGEHOST_REPLICA_URL": kit_home.settings().replica_url, "EDGEHOST_WEBHOOK_URL": f"{receiver.url}/hook-b"}
    up_a = start_supervisor(kit_home)
    up_b = None
    try:
        import os

        up_b = Proc(edgehost_argv("up", "--take-over"), {**os.environ, **b_env}, b_path / "up-b.log")
        wait_until(lambda: _incidents(receiver, "lease") == ["alert"], 60, what="A's lease alert")
        notice = next(n for n in receiver.notices() if n["event"] == "lease")
        assert notice["severity"] == "critical" and "writer lease lost" in notice["summary"]
        assert "machine ffffffff" in notice["summary"]
    finally:
        if up_b is not None:
            assert up_b.stop() == 0  # a clean stop releases the lease
        up_a.stop()
    assert _incidents(receiver, "lease") == ["alert"]
    # A holds the lease again once B has let it go: the incident is over (kept across A's restart).
    again = start_supervisor(kit_home, log_name="again.log")
    try:
        wait_until(lambda: _incidents(receiver, "lease") == ["alert", "recovery"], 30, what="the lease recovery")
    finally:
        again.stop()


def test_a_pitr_window_cut_short_in_the_replica_alerts_and_recovers(kit_home, receiver):
    # Snapshots every 2 s kept 24 s: the window a user was promised. Then something outside the kit (a
    # bucket lifecycle rule, a hand) deletes the older history: restore --at can no longer reach back.
    yml = kit_home.path / "litestream.yml"
    yml.write_text(yml.read_text().replace("interval: 24h\n  retention: 168h", "interval: 2s\n  retention: 24s"))
    _wire(kit_home, receiver, "pitr_check_every = 1\n")
    settings = kit_home.settings()
    up = start_supervisor(kit_home)
    try:
        httpx.post(f"{settings.portal_url}/properties", json={"slug": "acme"}).raise_for_status()
        writer = Writer(settings.portal_url, "acme", pause=0.5).start()
        time.sleep(14)
        assert not _incidents(receiver, "pitr_window")
        root = Path(settings.replica_url.removeprefix("file://")) / "acme" / settings.property_db_name / "ltx"
        snapshots = sorted((root / "9").glob("*.ltx"))
        for f in snapshots[:-1] + [f for f in root.rglob("0000000000000001-*.ltx") if f.parent.name != "9"]:
            f.unlink(missing_ok=True)
        wait_until(lambda: _incidents(receiver, "pitr_window", "acme") == ["alert"], 30, what="the PITR alert")
        assert "shorter than snapshot.retention (24 s)" in receiver.notices()[-1]["summary"]
        wait_until(lambda: _incidents(receiver, "pitr_window", "acme") == ["alert", "recovery"], 60,
                   what="the window to grow back")
        writer.stop()
    finally:
        assert up.stop() == 0
