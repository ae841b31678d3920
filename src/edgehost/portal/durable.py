"""Durable acknowledgements: a write is answered only once Litestream reports it in the replica.

Group commit, one coordinator thread per database: a request registers after its commit, and the
coordinator asks Litestream's control socket for one `sync -wait` (WAL to LTX, then wait for the
upload of everything up to that point) for every waiter gathered meanwhile, lingering up to
`batch_ms` for the writers the previous sync answered (`_Coordinator`). A sync that
started after a waiter's commit covers it, so when it comes back with replicated txid >= txid every
waiter taken into that batch is released; otherwise the batch stays and the next sync tries again,
until each waiter's own deadline answers it 503. Waiting holds no database lock: other writers keep
committing meanwhile, and join the next batch.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgehost.engine.litestream import ControlSocket
from edgehost.errors import EnvironmentProblem

LATENCY_SAMPLES = 4096  # per database: the recent acknowledgements p50/p99 are taken over
RETRY_PAUSE = 0.2  # after a sync that failed, before the next (Litestream retries its uploads meanwhile)


class NotReplicated(Exception):
    """The write is committed on this machine but Litestream did not report it in the replica in time."""


@dataclass
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    deadline: float

    def release(self) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():  # it may have timed out meanwhile
        future.set_result(None)


@dataclass
class DbStats:
    acked: int = 0
    timeouts: int = 0
    syncs: int = 0
    failed_syncs: int = 0
    last_error: str = ""
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    sync_seconds: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))  # each `sync -wait`

    def as_dict(self) -> dict[str, Any]:
        return {"acked": self.acked, "timeouts": self.timeouts, "syncs": self.syncs, "failed_syncs": self.failed_syncs,
                "p50_ms": _ms(self.latencies, 0.50), "p99_ms": _ms(self.latencies, 0.99), "samples": len(self.latencies),
                "sync_p50_ms": _ms(self.sync_seconds, 0.50), "sync_p99_ms": _ms(self.sync_seconds, 0.99),
                "last_error": self.last_error}


def _ms(samples: deque, q: float) -> float | None:
    ordered = sorted(samples)
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000, 2)


class _Coordinator:
    """One database's batches, one `sync -wait` at a time: every waiter that joined before a sync
    started rides along with it, and the waiters arriving meanwhile form the next batch.

    Before a sync the coordinator lingers, at most `batch_ms`, until as many writers wait as the
    previous sync had in hand (those it answered and those already waiting for the next). A writer
    just answered usually commits its next event within a few milliseconds: riding this sync instead
    of the next saves it a whole upload, and the writers stay in one batch instead of splitting into
    groups that take turns. A lone writer, or fewer writers than before, costs at most one linger.
    """

    def __init__(self, acks: "DurableAcks", path: Path, stats: DbStats):
        self.acks, self.path, self.stats = acks, path, stats
        self._cond = threading.Condition()
        self._waiting: list[_Waiter] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"durable:{path.parent.name}/{path.name}", daemon=True)
        self._thread.start()

    def join(self, waiter: _Waiter) -> None:
        with self._cond:
            self._waiting.append(waiter)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        expect = 0  # writers the previous sync had in hand
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                until = time.monotonic() + self.acks.batch_seconds
                while len(self._waiting) < expect and not self._closed:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed:
                    return
                batch = [w for w in self._waiting if not w.future.done()]
                self._waiting = []
            if not batch:
                continue
            try:
                outcome = self._sync(max(w.deadline for w in batch) - time.monotonic())
            except Exception as exc:  # never let the thread die: its database's writes would wait in vain
                self.stats.failed_syncs += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                outcome = "error"
            if outcome == "replicated":
                with self._cond:
                    expect = len(batch) + len(self._waiting)
                for w in batch:
                    w.release()
                continue
            if outcome == "error":
                time.sleep(RETRY_PAUSE)  # litestream down or failing: do not hammer it
            self.join_all(batch)  # not off the machine yet: these ride the next sync

    def join_all(self, batch: list[_Waiter]) -> None:
        with self._cond:
            self._waiting[:0] = [w for w in batch if not w.future.done()]
            self._cond.notify()

    def _sync(self, left: float) -> str:
        """"replicated", "behind" (answered, the replica not there yet) or "error"."""
        self.stats.syncs += 1
        began = time.monotonic()
        try:
            reply = self.acks.socket.sync(self.path, wait=True, timeout=max(1, math.ceil(left)),
                                          http_timeout=max(1.0, left + 1.0))
            self.stats.sync_seconds.append(time.monotonic() - began)
            txid, replicated = int(reply["txid"]), int(reply["replicated_txid"])
            if txid > 0 and replicated >= txid:
                return "replicated"
            self.stats.failed_syncs += 1
            self.stats.last_error = f"replica at txid {replicated:x}, local {txid:x}"
            return "behind"
        except (EnvironmentProblem, KeyError, ValueError, TypeError) as exc:
            self.acks.socket_missing_for(time.monotonic())  # each retry of a waiting write is a look
            self.stats.failed_syncs += 1
            self.stats.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return "error"


class DurableAcks:
    """The portal's group-commit coordinator over Litestream's control socket, with per-database stats."""

    def __init__(self, socket_path: Path, timeout: float, batch_ms: float):
        self.socket = ControlSocket(socket_path, timeout=timeout + 5)
        self.timeout = timeout
        self.batch_seconds = batch_ms / 1000.0
        self._lock = threading.Lock()
        self._coordinators: dict[Path, _Coordinator] = {}
        self._stats: dict[str, DbStats] = {}
        self._no_socket_since: float | None = None  # since when writes find litestream's socket missing
        self._no_socket_seen = 0.0  # when a write last found it missing

    def _coordinator(self, label: str, path: Path) -> _Coordinator:
        with self._lock:
            coord = self._coordinators.get(path)
            if coord is None:
                stats = self._stats.setdefault(label, DbStats())
                coord = self._coordinators[path] = _Coordinator(self, path, stats)
            return coord

    def socket_missing_for(self, now: float) -> float:
        """How long litestream's control socket has been missing, as writes and their syncs saw it
        (0 when it is there). An absence last seen more than a timeout ago is over: a new one starts."""
        if self.socket.path.exists():
            self._no_socket_since = None
            return 0.0
        since = self._no_socket_since  # one read: another thread may reset it meanwhile
        if since is None or now - self._no_socket_seen > self.timeout:
            since = now
        self._no_socket_since, self._no_socket_seen = since, now
        return now - since

    async def confirm(self, label: str, path: Path) -> float:
        """Wait until a write already committed to `path` is in the replica; the seconds it took.

        Raises NotReplicated with the reason when Litestream is not running or the timeout passes.
        """
        start = time.monotonic()
        coord = self._coordinator(label, path)
        # A restart, or the supervisor holding litestream for a moment, leaves no socket for a second
        # or two: wait for it like for any failing sync. Gone longer than a timeout (a portal without
        # litestream, one fenced or waiting for the lease): answer at once.
        if self.socket_missing_for(start) > self.timeout:
            coord.stats.timeouts += 1
            raise NotReplicated(f"litestream is not running (no control socket at {self.socket.path})")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop, loop.create_future(), start + self.timeout)
        coord.join(waiter)
        try:
            await asyncio.wait_for(waiter.future, self.timeout)  # cancels it on timeout
        except asyncio.TimeoutError:
            coord.stats.timeouts += 1
            why = f": {coord.stats.last_error}" if coord.stats.last_error else ""
            raise NotReplicated(f"the replica did not confirm it within {self.timeout:g}s{why}") from None
        took = time.monotonic() - start
        coord.stats.acked += 1
        coord.stats.latencies.append(took)
        coord.stats.last_error = ""
        return took

    def stats(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {label: s.as_dict() for label, s in sorted(self._stats.items())}

    def close(self) -> None:
        with self._lock:
            coords, self._coordinators = list(self._coordinators.values()), {}
        for coord in coords:
            coord.close()
        self.socket.close()
