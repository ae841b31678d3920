"""The writer lease: one machine writes to a replica, on a moto S3 server and on a file replica alike."""

from __future__ import annotations

import json
import re
import stat
import threading
import time
import uuid
from typing import Callable

import pytest

from edgehost.errors import ExitStatus
from edgehost.engine.replica import ReplicaStore
from edgehost.supervisor.lease import LeaseHeld, LeaseLost, WriterLease, machine_id

TTL = 30.0


@pytest.fixture(params=["s3", "file"])
def store(request: pytest.FixtureRequest) -> ReplicaStore:
    """A fresh replica: a bucket on the moto server, or a directory."""
    home = request.getfixturevalue("s3_home" if request.param == "s3" else "kit_home")
    return ReplicaStore.from_settings(home.settings())


@pytest.fixture
def machines(store: ReplicaStore) -> Callable[..., WriterLease]:
    """machines(n) is host mini-n with its own machine id; the same n is the same machine."""
    ids: dict[int, str] = {}

    def make(n: int, pid: int = 1000, ttl: float = TTL) -> WriterLease:
        mid = ids.setdefault(n, uuid.uuid4().hex)
        # The machines share one S3 client only to keep the test fast (a client costs ~0.3 s); the
        # lease keeps its state in WriterLease, and the store is a stateless door to the bucket.
        return WriterLease(store, mid, f"mini-{n}", pid + n, ttl)

    return make


def test_second_machine_is_refused_naming_the_holder(machines):
    first, second = machines(1), machines(2)
    assert first.acquire() is None and first.held

    with pytest.raises(LeaseHeld) as refused:
        second.acquire()

    assert refused.value.status == ExitStatus.LEASE_HELD
    assert re.search(r"held by host mini-1 \(machine [0-9a-f]{8}, pid 1001\), renewed \d+s ago", str(refused.value))
    assert "--take-over" in str(refused.value)
    assert not second.held
    assert second.read().host == "mini-1"


def test_same_machine_reacquires_after_a_restart(machines):
    before = machines(1, pid=1000)
    before.acquire()

    after = machines(1, pid=2000)
    assert after.acquire() is None
    assert after.read().pid == 2001
    after.renew()


def test_take_over_returns_the_previous_holder_and_fences_it(machines):
    old, new = machines(1), machines(2)
    old.acquire()

    previous = new.acquire(take_over=True)

    assert previous is not None and previous.host == "mini-1" and not previous.released
    with pytest.raises(LeaseLost) as lost:
        old.renew()
    assert "mini-2" in str(lost.value) and lost.value.holder.host == "mini-2"
    assert lost.value.status == ExitStatus.LEASE_HELD
    assert not old.held
    new.renew()
    assert new.read().host == "mini-2"


def test_a_take_over_knows_how_long_the_holder_may_still_write_by_its_own_settings(machines, store):
    # The holder renews every 60 s with a 600 s ttl; the one taking over runs with 1 s / 30 s.
    holder = WriterLease(store, uuid.uuid4().hex, "mini-1", 1001, 600.0, 60.0)
    holder.acquire()
    previous = machines(2).acquire(take_over=True)
    assert (previous.renew_seconds, previous.ttl_seconds) == (60.0, 600.0)
    # Online it stops at its next renewal; cut off, halfway between that and its ttl: 330 s, + 5.
    assert previous.quiet_after(1.0, 30.0) == 335.0
    # A lease written before the settings were recorded (or garbled ones): the reader's own.
    legacy = store.get_versioned(WriterLease.KEY)
    record = {**json.loads(legacy[0]), "renew_seconds": "soon", "ttl_seconds": -1}
    del record["renew_seconds"]
    store.put_if_match(WriterLease.KEY, json.dumps(record).encode(), legacy[1])
    assert machines(3).read().quiet_after(1.0, 30.0) == 20.5
    # A record claiming a ttl beyond what settings allow (a day) is read as a day: never live for ever.
    current = store.get_versioned(WriterLease.KEY)
    store.put_if_match(WriterLease.KEY, json.dumps({**json.loads(current[0]), "ttl_seconds": 1e10,
                                                    "renew_seconds": 1e10}).encode(), current[1])
    found = machines(3).read()
    assert (found.ttl_seconds, found.renew_seconds) == (86400.0, 86400.0)


def test_a_lease_is_stale_only_by_the_longer_of_the_two_ttls(machines, store):
    # A primary on the defaults (ttl 900) is live for 900 s, whatever a standby set to 0.2 s thinks.
    holder = WriterLease(store, uuid.uuid4().hex, "mini-1", 1001, 900.0, 300.0)
    holder.acquire()
    time.sleep(1.1 if store.scheme == "s3" else 0.3)
    with pytest.raises(LeaseHeld):
        machines(2, ttl=0.2).acquire()
    holder.renew()


def test_release_lets_another_machine_in_without_take_over(machines):
    first, second = machines(1), machines(2)
    first.acquire()
    first.release()
    assert first.read().released and not first.held

    assert second.acquire() is None
    # A second release by the machine that no longer holds it must not disturb the new holder.
    first.release()
    current = second.read()
    assert current.host == "mini-2" and not current.released


def test_release_after_being_taken_over_is_quiet(machines):
    old, new = machines(1), machines(2)
    old.acquire()
    new.acquire(take_over=True)

    old.release()

    current = new.read()
    assert current.host == "mini-2" and not current.released
    new.renew()


def test_stale_lease_is_taken_without_take_over(machines, store):
    crashed = machines(1, ttl=0.2)
    crashed.acquire()
    with pytest.raises(LeaseHeld):
        machines(2, ttl=TTL).acquire()

    # S3's Date and LastModified headers count whole seconds, so the lease must age past one.
    time.sleep(1.1 if store.scheme == "s3" else 0.3)
    successor = machines(2, ttl=0.2)

    assert successor.acquire() is None
    with pytest.raises(LeaseLost):
        crashed.renew()


def test_age_comes_from_the_replica_clock_not_the_holders(machines, store):
    """A holder whose clock is an hour behind still looks fresh: only the replica's clock judges age."""
    skewed = "2000-01-01T00:00:00.000000Z"
    record = {"host": "mini-9", "machine_id": uuid.uuid4().hex, "pid": 9, "started_at": skewed,
              "renewed_at": skewed, "released": False, "version": 1}
    store.put_if_absent(WriterLease.KEY, json.dumps(record).encode())

    with pytest.raises(LeaseHeld) as refused:
        machines(2).acquire()

    assert refused.value.holder.age_seconds < TTL
    assert "mini-9" in str(refused.value)


def test_of_eight_racing_machines_exactly_one_wins(machines):
    contenders = [machines(n) for n in range(1, 9)]
    start = threading.Barrier(len(contenders))
    results: dict[str, list] = {"won": [], "held": [], "other": []}

    def race(lease: WriterLease) -> None:
        start.wait()
        try:
            lease.acquire()
            results["won"].append(lease.host)
        except LeaseHeld:
            results["held"].append(lease.host)
        except Exception as exc:  # anything else is a failure the assertion below shows
            results["other"].append(repr(exc))

    threads = [threading.Thread(target=race, args=(lease,)) for lease in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert results["other"] == []
    assert len(results["won"]) == 1 and len(results["held"]) == 7
    assert contenders[0].read().host == results["won"][0]


def test_machine_id_is_made_once_and_kept_private(tmp_path):
    first = machine_id(tmp_path / "state", environ={})

    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert machine_id(tmp_path / "state", environ={}) == first
    assert stat.S_IMODE((tmp_path / "state" / "machine-id").stat().st_mode) == 0o600
    assert machine_id(tmp_path / "state", environ={"EDGEHOST_MACHINE_ID": "mini-2-test"}) == "mini-2-test"


def test_an_endpoint_without_conditional_writes_is_named_not_trusted(s3_home, moto_s3):
    """An S3-compatible store that refuses If-None-Match must stop `up` with a clear line, not be raced."""
    import http.client
    import http.server

    from edgehost.engine.replica import ConditionalWritesUnsupported
    from procs import edgehost, free_port

    target = moto_s3.endpoint.split("//")[1]

    class NoConditionals(http.server.BaseHTTPRequestHandler):
        """Forwards to moto, but answers 501 NotImplemented to any conditional PUT."""

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.command == "PUT" and ("If-None-Match" in self.headers or "If-Match" in self.headers):
                msg = b"<Error><Code>NotImplemented</Code><Message>conditional writes</Message></Error>"
                self.send_response(501)
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
                return
            conn = http.client.HTTPConnection(target, timeout=10)
            conn.request(self.command, self.path, body, dict(self.headers))
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

        def log_message(self, *args) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), NoConditionals)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        s3_home.env["EDGEHOST_S3_ENDPOINT"] = f"http://127.0.0.1:{port}"
        lease = WriterLease(ReplicaStore.from_settings(s3_home.settings()), "m1", "mini-1", 1, TTL)
        with pytest.raises(ConditionalWritesUnsupported):
            lease.acquire()
        proc = edgehost(s3_home, "up", timeout=60)
        assert proc.returncode == 3
        assert "conditional write" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    finally:
        server.shutdown()
