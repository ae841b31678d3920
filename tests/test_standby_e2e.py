"""A warm standby: `edgehost follow` on a second home (a second machine) and `edgehost promote`, with the
real supervisor, litestream and moto over HTTP."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from edgehost.engine import layout
from edgehost.engine.sqlite import journal_mode
from edgehost.supervisor import SupervisorClient
from test_follow_strays import fake_follower, follow_args
from procs import machine, power_cut, twin, Proc, Writer, edgehost, edgehost_argv, rows, start_supervisor, supervisor_status, wait_until

pytestmark = pytest.mark.e2e

RPO = 3.0  # seconds: events acknowledged longer than this before the primary died must survive


class TimedWriter(Writer):
    """Records (id, when the portal acknowledged it)."""

    def _send(self, client, i):
        resp = client.post(f"{self.url}/properties/{self.slug}/events", json={"kind": "w", "payload": {"i": i}})
        return (resp.json()["id"], time.time()) if resp.status_code == 201 else None


class Reads:
    """GETs `url` back to back on a thread; what failed, and how many were served."""

    def __init__(self, url: str):
        self.url, self.failed, self.served = url, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Reads":
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    answer = client.get(self.url)
                    if answer.status_code == 200 and answer.json()["events"]:
                        self.served += 1
                    else:
                        self.failed.append(f"{answer.status_code} {answer.text[:100]}")
                except httpx.HTTPError as exc:
                    self.failed.append(repr(exc))
                time.sleep(0.02)

    def stop(self) -> tuple[list[str], int]:
        self._stop.set()
        self._thread.join(10)
        return self.failed, self.served


def _restores(home) -> list[str]:
    """This home's `litestream restore` processes, running or stopped: "pid command line" each."""
    listing = subprocess.run(["ps", "-A", "-ww", "-o", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in listing.splitlines() if " restore " in line and str(home.path) in line]


def _follower(settings) -> dict:
    return SupervisorClient(settings.supervisor_socket, timeout=5).status()


def test_failover_drill_promote_a_follower_after_the_primary_dies(s3_home, tmp_path_factory):
    a = machine(s3_home, "a")
    b = twin(a, tmp_path_factory, "b")
    sa, sb = a.settings(), b.settings()
    up_a = start_supervisor(a)
    follower = None
    try:
        for slug in ("acme", "beta"):
            httpx.post(f"{sa.portal_url}/properties", json={"slug": slug}).raise_for_status()
        writer = TimedWriter(sa.portal_url, "acme", pause=0.02).start()
        # A follower an earlier run left stopped (its `follow` killed mid-promotion) goes when follow starts.
        stray = fake_follower(*follow_args(f"{sb.data_dir}/acme/honestcam.db", "file:///nowhere"))
        stray.send_signal(signal.SIGSTOP)
        follower = Proc(edgehost_argv("follow", "--interval", "0.5s"), b.environ(), b.path / "follow.log")
        assert stray.wait(30) == -signal.SIGKILL

        def caught_up():
            st = _follower(sb)
            names = {d["name"]: d for d in st["databases"]}
            return (set(names) >= {"global", "acme", "beta"} and st["services"]
                    and st["services"][0]["state"] == "running" and all(d["running"] for d in names.values()))

        wait_until(caught_up, 90, interval=0.3, what="the follower to follow every database and serve")
        # New tenants appear on the standby.
        httpx.post(f"{sa.portal_url}/properties", json={"slug": "gamma"}).raise_for_status()
        httpx.post(f"{sa.portal_url}/properties/gamma/events", json={"kind": "g"}).raise_for_status()
        wait_until(lambda: httpx.get(f"{sb.portal_url}/properties/gamma/events").json().get("events"), 30,
                   interval=0.3, what="gamma's event on the standby")
        # Reads are served; writes are refused naming the primary.
        assert httpx.get(f"{sb.portal_url}/properties/acme/events").json()["events"]
        refused = httpx.post(f"{sb.portal_url}/properties/acme/events", json={"kind": "x"})
        assert refused.status_code == 503 and refused.json()["read_only"]
        assert "machine aaaaaaaa" in refused.json()["error"]
        lags = [d["lag_seconds"] for d in _follower(sb)["databases"]]
        assert all(lag < 30 for lag in lags), lags
        shown = edgehost(b, "status", "--json")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert json.loads(shown.stdout)["role"] == "follower"
        assert {d["name"] for d in json.loads(shown.stdout)["databases"]} >= {"global", "acme", "beta", "gamma"}

        time.sleep(2)
        power_cut(supervisor_status(sa)["services"], up_a.popen)
        killed_at = time.time()
        acked = writer.stop()
        assert len(acked) > 50

        # Reads go on through the whole promotion: the standby's portal is kept, not restarted.
        portal_pid = _follower(sb)["services"][0]["pid"]
        assert len(_restores(b)) >= 4  # global, acme, beta, gamma
        reads = Reads(f"{sb.portal_url}/properties/acme/events").start()
        promote = edgehost(b, "promote", "--json", "--no-wait", timeout=300)
        assert promote.returncode == 0, promote.stdout + promote.stderr
        time.sleep(1.0)  # and on into the first second as the primary (a promotion takes well under one)
        failed_reads, served = reads.stop()
        assert served > 10 and not failed_reads, failed_reads[:5]
        report = json.loads(promote.stdout)
        assert report["ok"] and set(report["steps"]) == {"lease", "catch_up", "stop_following", "primary_ready"}
        final = report["final_round"]  # what catch_up spent its time on: the listing, and who was behind
        assert final["listed"] >= 4 and final["seconds"] > 0 and 0 <= final["databases_behind"] <= 4, final
        assert "machine aaaaaaaa" in report["previous_primary"]

        # Every event acknowledged more than the RPO before the kill is on the new primary.
        have = {r[0] for r in rows(layout.property_db(sb, "acme").path, "SELECT id FROM compliance_events")}
        old = [i for i, at in acked if at < killed_at - RPO]
        assert old and not [i for i in old if i not in have]
        # With durable acknowledgements (the default for property databases) an acknowledged event was
        # in the bucket before its 201, so none is lost, not even those of the last moment before the kill.
        assert not [i for i, _ in acked if i not in have]
        # Writes resume on the new primary, and it replicates them.
        new = httpx.post(f"{sb.portal_url}/properties/acme/events", json={"kind": "after"})
        assert new.status_code == 201, new.text
        status = supervisor_status(sb)
        assert status["lease"]["held"] and all(s["state"] == "running" for s in status["services"])
        assert next(s["pid"] for s in status["services"] if s["name"] == "portal") == portal_pid
        # The promotion converts nothing itself: litestream and the portal put each copy in WAL mode as
        # they open it, and the `-txid` files of the killed `restore -f` processes go once they are reaped.
        wait_until(lambda: all(journal_mode(ref.path) == "wal" and not Path(f"{ref.path}-txid").exists()
                               for ref in layout.local_databases(sb)), 30, what="every copy in WAL mode, no -txid left")
        # The followers the promotion stopped are gone once the primary runs: none is left stopped.
        wait_until(lambda: not _restores(b), 30, what="no `litestream restore` of the standby left")
        again_promoted = edgehost(b, "promote", "--no-wait")
        assert again_promoted.returncode == 2 and "not following" in again_promoted.stderr, again_promoted.stderr

        # The old primary restarted is refused by the lease and writes nothing to the replica.
        again = Proc(edgehost_argv("up"), a.environ(), a.path / "again.log")
        assert again.popen.wait(60) == 6, again.output()
        assert "writer lease held by" in again.output() and "machine bbbbbbbb" in again.output()
        again.stop()
    finally:
        if follower is not None:
            code = follower.stop()
        up_a.stop()
    assert code == 0, follower.output()[-3000:]


def test_a_promotion_that_fails_leaves_a_standby_that_follows_and_promotes_later(s3_home, tmp_path_factory):
    """The role cannot be recorded (state/role is a directory): the promotion fails after it stopped the
    followers; they are killed and following resumes, new writes of the primary still arrive, and
    the next promotion succeeds."""
    a = machine(s3_home, "a")
    b = twin(a, tmp_path_factory, "b")
    sa, sb = a.settings(), b.settings()
    up_a = start_supervisor(a)
    follower = None
    try:
        httpx.post(f"{sa.portal_url}/properties", json={"slug": "acme"}).raise_for_status()
        httpx.post(f"{sa.portal_url}/properties/acme/events", json={"kind": "one"}).raise_for_status()
        follower = Proc(edgehost_argv("follow", "--interval", "0.5s"), b.environ(), b.path / "follow.log")

        def reads(kind: str) -> bool:
            got = httpx.get(f"{sb.portal_url}/properties/acme/events")
            return got.status_code == 200 and kind in {e["kind"] for e in got.json()["events"]}

        wait_until(lambda: reads("one"), 60, interval=0.3, what="the first event on the standby")
        before = set(_restores(b))
        role = sb.state_dir / "role"
        role.unlink()
        (role / "blocked").mkdir(parents=True)  # a rename onto a non-empty directory fails, even for root

        failed = edgehost(b, "promote", "--json", "--no-wait", timeout=120)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "cannot record the role" in json.loads(failed.stdout)["error"]
        # The take-over fenced the running primary; the failed promotion released the lease it took, so
        # the primary starts again without --take-over.
        wait_until(lambda: supervisor_status(sa)["lease"]["fenced"], 30, what="the primary to be fenced")
        assert up_a.stop() == 6
        up_a = start_supervisor(a, log_name="up-again.log")
        # Following resumes: a new event of the primary reaches the standby, through new `restore -f`
        # processes; none of the ones the promotion stopped is left.
        httpx.post(f"{sa.portal_url}/properties/acme/events", json={"kind": "two"}, timeout=15).raise_for_status()
        wait_until(lambda: reads("two"), 60, interval=0.3, what="the standby following again")
        assert _restores(b) and not before & set(_restores(b))
        refused = httpx.post(f"{sb.portal_url}/properties/acme/events", json={"kind": "x"})
        assert refused.status_code == 503 and refused.json()["read_only"]

        shutil.rmtree(role)
        power_cut(supervisor_status(sa)["services"], up_a.popen)
        promoted = edgehost(b, "promote", "--json", "--no-wait", timeout=120)
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert httpx.post(f"{sb.portal_url}/properties/acme/events", json={"kind": "three"}).status_code == 201
        assert reads("two")
    finally:
        if follower is not None:
            follower.stop()
        up_a.stop()


def test_a_property_new_in_the_final_listing_is_caught_up_by_the_promotion(s3_home, tmp_path_factory):
    """The standby lists every 30 s, so the property made just before the primary dies first appears
    in the promotion's own listing: the promotion starts its follower instead of waiting in vain."""
    a = machine(s3_home, "a")
    b = twin(a, tmp_path_factory, "b")
    sa, sb = a.settings(), b.settings()
    up_a = start_supervisor(a)
    follower = None
    try:
        httpx.post(f"{sa.portal_url}/properties", json={"slug": "acme"}).raise_for_status()
        follower = Proc(edgehost_argv("follow", "--interval", "30s"), b.environ(), b.path / "follow.log")
        wait_until(lambda: httpx.get(f"{sb.portal_url}/properties/acme/events").status_code == 200, 60,
                   interval=0.3, what="the standby to serve acme")
        httpx.post(f"{sa.portal_url}/properties", json={"slug": "late"}).raise_for_status()
        late = httpx.post(f"{sa.portal_url}/properties/late/events", json={"kind": "late"}).json()["id"]  # durable
        power_cut(supervisor_status(sa)["services"], up_a.popen)

        promoted = edgehost(b, "promote", "--json", "--no-wait", timeout=120)
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert json.loads(promoted.stdout)["steps"]["catch_up"] < 30
        assert late in [e["id"] for e in httpx.get(f"{sb.portal_url}/properties/late/events").json()["events"]]
    finally:
        if follower is not None:
            follower.stop()
        up_a.stop()


def test_a_machine_failed_back_from_follows_once_its_data_is_moved_aside(s3_home, tmp_path_factory):
    """B was promoted once (state/role says primary); A is the primary again. Installed as a standby
    (docs/standby.md, Failback), B follows A, instead of running `up` into A's lease for ever."""
    a = machine(s3_home, "a")
    b = twin(a, tmp_path_factory, "b")
    sa, sb = a.settings(), b.settings()
    up_a = start_supervisor(a)
    follower = None
    try:
        httpx.post(f"{sa.portal_url}/properties", json={"slug": "acme"}).raise_for_status()
        event = httpx.post(f"{sa.portal_url}/properties/acme/events", json={"kind": "a"}).json()["id"]
        sb.state_dir.mkdir(parents=True)
        (sb.state_dir / "role").write_text("primary\n")
        (sb.data_dir / "acme").mkdir(parents=True)  # its old data, not moved aside: refused, named
        shutil.copy(layout.property_db(sa, "acme").path, layout.property_db(sb, "acme").path)
        refused = edgehost(b, "follow", timeout=60)
        assert refused.returncode == 2 and "holds the writer lease now" in refused.stderr, refused.stderr
        assert "move" in refused.stderr and (sb.state_dir / "role").read_text() == "primary\n"

        shutil.move(sb.data_dir, b.path / "data.old")
        follower = Proc(edgehost_argv("follow", "--interval", "0.5s"), b.environ(), b.path / "follow.log")
        wait_until(lambda: event in [e["id"] for e in httpx.get(f"{sb.portal_url}/properties/acme/events").json()["events"]],
                   60, interval=0.3, what="the old primary to follow the new one")
        assert (sb.state_dir / "role").read_text() == "follower\n"
        assert supervisor_status(sa)["lease"]["held"] and not supervisor_status(sa)["lease"]["fenced"]
    finally:
        if follower is not None:
            follower.stop()
        up_a.stop()
