"""One writer per replica: a lease object in the bucket, taken and renewed with conditional writes.

The lease is `_edgehost/lease.json` under the replica root. A machine takes it with If-None-Match
(no lease yet) or If-Match on the version it read (a released, stale or own lease, or --take-over),
so of machines racing for it exactly one wins. Staleness is judged on one clock only: the server's
for S3 (its `Date` minus the object's LastModified), the local one for a file replica; the two
machines' clocks never have to agree.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from edgehost.errors import EdgehostError, EnvironmentProblem, ExitStatus
from edgehost.engine.replica import PreconditionFailed, ReplicaStore
from edgehost.settings import LEASE_MAX_SECONDS, Settings

MACHINE_ID_FILE = "machine-id"
VERSION = 1
# Each lost race means another acquirer wrote in between; re-reading then almost always ends in a
# clear answer (ours, or LeaseHeld). The bound only stops a pathological ping-pong of take-overs.
ACQUIRE_TRIES = 8


class LeaseHeld(EdgehostError):
    """Another machine holds a live writer lease."""

    status = ExitStatus.LEASE_HELD

    def __init__(self, message: str, holder: LeaseInfo | None = None):
        super().__init__(message)
        self.holder = holder


class LeaseLost(EdgehostError):
    """Another machine took the writer lease from this one: stop writing."""

    status = ExitStatus.LEASE_HELD

    def __init__(self, message: str, holder: LeaseInfo | None = None):
        super().__init__(message)
        self.holder = holder  # None only when the lease object vanished


@dataclass(frozen=True)
class LeaseInfo:
    """One version of the lease object, as read from the replica."""

    host: str
    machine_id: str
    pid: int
    started_at: str  # ISO-8601 UTC, the holder's clock (shown, never compared)
    renewed_at: str
    released: bool
    etag: str
    age_seconds: float | None  # since the last write, on the server's clock; None when unknown
    renew_seconds: float | None = None  # the holder's settings (None: a lease written before they were recorded)
    ttl_seconds: float | None = None

    def quiet_after(self, renew: float, ttl: float) -> float:
        """Seconds after this lease's last renewal by which its holder has stopped writing to the
        replica once another machine holds the lease: online, it finds the lease lost at its next
        renewal; cut off from the bucket, it stops litestream halfway between that renewal and its ttl
        (the supervisor's `_may_replicate`). Its own settings when recorded, else `renew`/`ttl`; 5 s
        to spare."""
        r, t = self.renew_seconds or renew, self.ttl_seconds or ttl
        return max(r, write_window(r, t)) + 5

    def describe(self) -> str:
        """One line naming the holder and how fresh it is."""
        who = f"host {self.host} (machine {self.machine_id[:8]}, pid {self.pid})"
        verb = "released" if self.released else "renewed"
        when = f"{_ago(self.age_seconds)} ago" if self.age_seconds is not None else f"at {self.renewed_at}"
        return f"{who}, {verb} {when}"


def write_window(renew: float, ttl: float) -> float:
    """Seconds after the newest renewal that landed during which the holder's litestream may write
    (the supervisor's `_may_replicate`): halfway between the next renewal due and the ttl, so a
    holder cut off from the bucket has stopped before anyone can find its lease stale. A take-over
    waits this long by the holder's settings (`LeaseInfo.quiet_after`): the two must agree."""
    return (renew + ttl) / 2


def lease_clock() -> float:
    """Seconds on a clock that goes on counting while the machine sleeps: the lease ages on the
    server meanwhile. time.monotonic() stops during sleep on macOS (and CLOCK_MONOTONIC during
    suspend on Linux), so a Mac waking from an hour's sleep would think its lease fresh."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))  # macOS: counts sleep


def machine_id(state_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """This machine's id: EDGEHOST_MACHINE_ID, else a uuid4 hex kept in state_dir/machine-id (mode 0600)."""
    env = os.environ if environ is None else environ
    if env.get("EDGEHOST_MACHINE_ID"):
        return env["EDGEHOST_MACHINE_ID"]
    path = Path(state_dir) / MACHINE_ID_FILE
    existing = _read_machine_id(path)
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    new = uuid.uuid4().hex
    tmp = path.with_name(f".{MACHINE_ID_FILE}.{new}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new + "\n")
        try:
            # link() refuses to overwrite: of two first starts, one id wins and both use it.
            os.link(tmp, path)
        except FileExistsError:
            if not _read_machine_id(path):  # an empty or garbled file left by a crash: replace it
                os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return _read_machine_id(path) or new


def _read_machine_id(path: Path) -> str | None:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EnvironmentProblem(f"{path}: cannot read the machine id: {exc.strerror}") from None
    return value if re.fullmatch(r"[0-9a-f]{32}", value) else None


class WriterLease:
    """This machine's claim to be the replica's only writer."""

    KEY = "_edgehost/lease.json"  # relative to the replica root; "_edgehost" can never be a property slug

    def __init__(self, store: ReplicaStore, machine_id: str, host: str, pid: int, ttl: float,
                 renew: float | None = None):
        self.store = store
        self.machine_id = machine_id
        self.host = host
        self.pid = pid
        self.ttl = ttl
        self.renew_seconds = renew  # recorded in the lease, so a machine taking it over knows how long to wait
        self._etag: str | None = None
        self._record: dict | None = None
        self.found: LeaseInfo | None = None  # the lease as the last `acquire` read it
        # lease_clock() when the newest write of our lease that landed was sent. The server stamps it
        # later, so no other machine can find the lease stale before confirmed_at + ttl.
        self.confirmed_at: float | None = None

    @classmethod
    def of_this_machine(cls, store: ReplicaStore, settings: Settings) -> WriterLease:
        """This machine's lease on `store`: its id, host and pid, and its ttl and renew settings."""
        s = settings
        return cls(store, machine_id(s.state_dir, s.environ), socket.gethostname(), os.getpid(),
                   s.lease_ttl_seconds, s.lease_renew_seconds)

    @property
    def held(self) -> bool:
        return self._etag is not None

    def read(self) -> LeaseInfo | None:
        """The lease as it stands in the replica, or None when there is none."""
        found = self.store.get_versioned(self.KEY)
        return _parse(*found) if found else None

    def acquire(self, take_over: bool = False) -> LeaseInfo | None:
        """Take the lease; the previous holder when it was another machine's live lease taken over, else None.

        Raises LeaseHeld when another machine's lease is live and `take_over` is not set.
        """
        current: LeaseInfo | None = None
        for _ in range(ACQUIRE_TRIES):
            current = self.found = self.read()
            now = _now()
            record = {"host": self.host, "machine_id": self.machine_id, "pid": self.pid, "started_at": now,
                      "renewed_at": now, "released": False, "version": VERSION, "ttl_seconds": self.ttl}
            if self.renew_seconds is not None:
                record["renew_seconds"] = self.renew_seconds
            data = _encode(record)
            previous = None
            sent = lease_clock()
            try:
                if current is None:
                    self._etag = self.store.put_if_absent(self.KEY, data)
                else:
                    if not (current.released or current.machine_id == self.machine_id or self._stale(current)):
                        if not take_over:
                            raise LeaseHeld(
                                f"writer lease held by {current.describe()}; this machine does not write while it "
                                f"is live (stale after {self.ttl:g}s without renewal); start with --take-over "
                                f"only if that machine is gone", current)
                        previous = current
                    self._etag = self.store.put_if_match(self.KEY, data, current.etag)
            except PreconditionFailed:
                continue  # someone wrote between our read and our write: judge the new version
            self._record, self.confirmed_at = record, sent
            return previous
        last = current.describe() if current else "nobody (it kept appearing and vanishing)"
        raise LeaseHeld(f"writer lease kept changing hands while this machine tried to take it; last held by {last}",
                        current)

    def renew(self) -> None:
        """Rewrite our lease with a new renewed_at; LeaseLost when another machine took it."""
        if self._etag is None or self._record is None:
            raise LeaseLost("writer lease not held by this machine")
        record = {**self._record, "renewed_at": _now()}
        data = _encode(record)
        sent = lease_clock()
        try:
            self._etag = self.store.put_if_match(self.KEY, data, self._etag)
        except PreconditionFailed:
            found = self.store.get_versioned(self.KEY)
            # A retried PUT whose first try landed reports a lost condition, yet the object is ours.
            if found and found[0] == data:
                self._etag, self._record, self.confirmed_at = found[1], record, sent
                return
            self._etag, self.confirmed_at = None, None
            holder = _parse(*found) if found else None
            if holder is None:
                raise LeaseLost("writer lease vanished from the replica: this machine must stop writing") from None
            raise LeaseLost(f"writer lease taken by {holder.describe()}: this machine must stop writing",
                            holder) from None
        self._record, self.confirmed_at = record, sent

    def release(self) -> None:
        """Mark our lease released so another machine can take it at once; quiet when it is no longer ours."""
        if self._etag is None or self._record is None:
            return
        record = {**self._record, "renewed_at": _now(), "released": True}
        try:
            self.store.put_if_match(self.KEY, _encode(record), self._etag)
        except PreconditionFailed:
            pass  # someone took it over already: nothing of ours to release
        self._etag, self.confirmed_at = None, None

    def _stale(self, info: LeaseInfo) -> bool:
        # Unknown age (a server without a Date header) counts as live: never steal on a guess.
        # The holder's own ttl when longer: it keeps writing until halfway to that one.
        return info.age_seconds is not None and info.age_seconds > max(self.ttl, info.ttl_seconds or 0.0)


def _parse(data: bytes, etag: str, age: float | None) -> LeaseInfo:
    # A garbled lease still has an etag and an age, so it can go stale or be taken over like any other.
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raw = {}
    except ValueError:
        raw = {}
    try:
        pid = int(raw.get("pid", 0))
    except (TypeError, ValueError):
        pid = 0
    return LeaseInfo(host=str(raw.get("host", "?")), machine_id=str(raw.get("machine_id", "?")), pid=pid,
                     started_at=str(raw.get("started_at", "?")), renewed_at=str(raw.get("renewed_at", "?")),
                     released=raw.get("released") is True, etag=etag, age_seconds=age,
                     renew_seconds=_seconds(raw.get("renew_seconds")), ttl_seconds=_seconds(raw.get("ttl_seconds")))


def _seconds(value: object) -> float | None:
    """Seconds from the lease's JSON: None when absent or not a positive number; at most a day, as
    settings allow (a record claiming more cannot make a lease live, or a take-over wait, for ever)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return min(float(value), LEASE_MAX_SECONDS)


def _encode(record: dict) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode()


def _now() -> str:
    # Microseconds keep every write's bytes (and so its etag) distinct, even two within one second.
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
