"""Replication status per database, from Litestream's control socket: txids, last sync, lag, WAL size,
and the errors Litestream hit."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from edgehost.engine import layout, litestream
from edgehost.errors import EnvironmentProblem
from edgehost.engine.litestream import ControlSocket
from edgehost.settings import Settings

# Litestream's replica monitor syncs every second and records each success, even when idle: a
# database behind its replica whose last successful sync is older than this is stalled, not busy.
STALLED_AFTER_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 3

# Errors that mean Litestream's local state (`.<db>-litestream/ltx`) and the replica disagree. They
# never clear by themselves: litestream 0.5.17 retries with backoff forever, `/list` still says
# "replicating" and `/debug/sync-status` stays clean (it only covers the WAL-to-LTX step). Errors
# it does recover from (an unreachable endpoint) are left to the lag alert.
# litestream's LTXError reads "<op> ltx file <path>: <cause>"; "write ltx file: <cause>" is an upload
# failure (the endpoint), which is not one of them.
_STUCK_RE = re.compile(r"\b\w+ ltx file /[^:]*: |ltx file (?:missing|corrupted)|checksum mismatch|nonsequential|"
                       r"non-contiguous", re.IGNORECASE)


@dataclass
class DatabaseStatus:
    name: str
    path: str
    state: str  # replicating | not replicated | error
    local_txid: int | None = None
    replicated_txid: int | None = None
    last_sync_at: str | None = None
    lag_seconds: float | None = None
    wal_bytes: int = 0
    error: str = ""
    caught_up: bool = False  # the replica holds the local database's latest txid

    def as_json(self) -> dict:
        """The JSON `status --json` prints: txids as 16 hex digits, as Litestream and the other
        commands print them (the numbers stay integers here and in the Prometheus metrics)."""
        out = asdict(self)
        for key in ("local_txid", "replicated_txid"):
            out[key] = hex_txid(out[key])
        return out


def hex_txid(value: int | None) -> str | None:
    """A txid as Litestream prints it: 16 hex digits."""
    return None if value is None else f"{value:016x}"


def _parse_time(text: str | None) -> float | None:
    return litestream.parse_go_time(text).timestamp() if text else None


def lag_seconds(local_txid: int, replicated_txid: int, last_sync: float | None, now: float, since: float) -> float:
    """How long the replica has been behind: 0 when caught up, else the time since the last upload."""
    if replicated_txid >= local_txid:
        return 0.0
    return max(0.0, now - (last_sync if last_sync is not None else since))


def _sync_diagnostics(sock: ControlSocket) -> tuple[dict[str, str], dict[str, int]]:
    """Each database's last WAL-to-LTX sync or checkpoint error and its local txid, from one
    `/debug/sync-status` call."""
    try:
        diagnostics = sock.sync_status()
    except EnvironmentProblem:
        return {}, {}  # an older litestream without the endpoint: the other checks still run
    errors = {d["path"]: f"{d.get('operation') or 'sync'}: {d['error']}" for d in diagnostics
              if d.get("path") and d.get("error")}
    txids = {d["path"]: int(d["txid"]) for d in diagnostics if d.get("path") and isinstance(d.get("txid"), int)}
    return errors, txids


class PositionCache:
    """What the supervisor's status poll learned per database, so an idle database costs no call.

    A database's local and replicated txids are read with one control-socket call each. Once the
    replica has caught up, they are reused while litestream's `/debug/sync-status` (one call for
    all databases) shows the same local txid, for at most `refresh` seconds: a write changes that
    txid within a second (litestream's sync interval) and brings the per-database call back.
    """

    def __init__(self, refresh: float = 60.0):
        self.refresh = refresh
        self._known: dict[str, tuple[int, int, float]] = {}

    def reuse(self, path: str, txid: int | None, now: float) -> tuple[int, int] | None:
        known = self._known.get(path)
        if known is None or txid is None or not (known[0] == known[1] == txid) or now - known[2] >= self.refresh:
            return None
        return known[0], known[1]

    def remember(self, path: str, local: int, replicated: int, now: float) -> None:
        self._known[path] = (local, replicated, now)

    def forget(self, path: str) -> None:
        self._known.pop(path, None)

    def export(self) -> dict[str, list]:
        """What the supervisor hands `edgehost status`: path -> [local txid, replicated txid, read at (epoch s)]."""
        return {path: list(known) for path, known in dict(self._known).items()}

    @classmethod
    def load(cls, data: dict, refresh: float = 60.0) -> "PositionCache":
        cache = cls(refresh)
        for path, known in (data or {}).items():
            try:
                cache._known[str(path)] = (int(known[0]), int(known[1]), float(known[2]))
            except (TypeError, ValueError, IndexError):
                continue
        return cache


def _socket_error(exc: EnvironmentProblem) -> str:
    return re.sub(r"^litestream /\S+: ", "", str(exc))


def _set_positions(st: DatabaseStatus, local: int, replicated: int, now: float, started: float) -> None:
    st.local_txid, st.replicated_txid = local, replicated
    st.caught_up = local == replicated
    st.lag_seconds = round(lag_seconds(local, replicated, _parse_time(st.last_sync_at), now, started), 1)


def _set_state(st: DatabaseStatus, entry: dict, sync_errors: dict[str, str]) -> None:
    st.state = "replicating" if entry.get("status") == "replicating" else entry.get("status", "?")
    if sync_errors.get(st.path):
        st.state, st.error = "error", sync_errors[st.path]


def _stalled(st: DatabaseStatus, now: float) -> bool:
    if st.error or st.local_txid is None or st.replicated_txid is None or st.replicated_txid >= st.local_txid:
        return False
    last = _parse_time(st.last_sync_at)
    return last is None or now - last > STALLED_AFTER_SECONDS


def _probe(sock: ControlSocket, st: DatabaseStatus, now: float, started: float) -> None:
    """Ask for a full sync of a stalled database: the error comes back only from a waited sync."""
    try:
        result = sock.sync(Path(st.path), wait=True, timeout=PROBE_TIMEOUT_SECONDS)
    except EnvironmentProblem as exc:
        message = _socket_error(exc)
        if _STUCK_RE.search(message):
            st.state, st.error = "error", message
        return
    _set_positions(st, int(result["txid"]), int(result["replicated_txid"]), now, started)


def aged(settings: Settings, dbs: list[DatabaseStatus], now: float, since: float) -> list[DatabaseStatus]:
    """What can be known without litestream, when its control socket does not answer (it hangs while
    uploads to an unreachable replica retry): every database on disk, with the last answer's positions,
    behind when it was behind or its WAL changed after its last known upload (`since`, litestream's
    start, when none is known), by the time since that upload."""
    known = {st.path: st for st in dbs}
    out = []
    for ref in layout.local_databases(settings):
        st = replace(known[str(ref.path)]) if str(ref.path) in known else DatabaseStatus(ref.label, str(ref.path), "?")
        last = _parse_time(st.last_sync_at) or since
        try:
            wal = Path(f"{ref.path}-wal").stat()
            st.wal_bytes, written = wal.st_size, wal.st_mtime
        except OSError:
            written = None
        if (st.lag_seconds or (written is not None and written > last + 1.0)) and not st.error:
            st.lag_seconds = round(max(st.lag_seconds or 0.0, now - last), 1)
            st.caught_up = False
        out.append(st)
    return out


def replication_status(settings: Settings, sock: ControlSocket | None = None, now: float | None = None,
                       probe: bool = True, cache: PositionCache | None = None) -> list[DatabaseStatus]:
    """Ask the running litestream about every database on disk.

    With `probe`, a database that is behind and has not synced for a few seconds gets one waited
    sync, the only call that returns the replica's error. With `cache` (the supervisor's poll), an
    idle database that had caught up costs no call of its own.
    """
    sock = sock or ControlSocket(settings.litestream_socket)
    fixed_now = now is not None
    now = time.time() if now is None else now
    info = sock.info()
    started = _parse_time(info.get("started_at")) or now
    listed = {d["path"]: d for d in sock.list()}
    sync_errors, synced_txids = _sync_diagnostics(sock)  # before our own syncs below reset litestream's record
    out: list[DatabaseStatus] = []
    asks: list[tuple[DatabaseStatus, dict]] = []
    for ref in layout.local_databases(settings):
        wal = Path(f"{ref.path}-wal")
        st = DatabaseStatus(ref.label, str(ref.path), "not replicated", wal_bytes=wal.stat().st_size if wal.exists() else 0)
        out.append(st)
        entry = listed.get(str(ref.path))
        if entry is None:
            continue
        st.last_sync_at = entry.get("last_sync_at")
        known = cache.reuse(st.path, synced_txids.get(st.path), now) if cache and not sync_errors.get(st.path) else None
        if known is None:
            asks.append((st, entry))
        else:
            _set_positions(st, *known, now, started)
            _set_state(st, entry, sync_errors)

    def ask(item: tuple[DatabaseStatus, dict]) -> None:
        st, entry = item
        try:
            # A local-only sync: cheap, and it returns both the local and the replica position. It can
            # wait seconds when litestream is stuck uploading that database: the others are asked meanwhile.
            result = sock.sync(Path(st.path), wait=False, timeout=5)
            known = int(result["txid"]), int(result["replicated_txid"])
            if cache:
                cache.remember(st.path, *known, now)
            _set_positions(st, *known, now, started)
            _set_state(st, entry, sync_errors)
        except EnvironmentProblem as exc:
            st.state, st.error = "error", _socket_error(exc)
            if cache:
                cache.forget(st.path)

    if len(asks) > 1:
        with ThreadPoolExecutor(max_workers=min(8, len(asks))) as pool:
            list(pool.map(ask, asks))
    elif asks:
        ask(asks[0])
    stalled = [st for st in out if _stalled(st, now)] if probe else []
    if stalled:
        with ThreadPoolExecutor(max_workers=min(4, len(stalled))) as pool:
            list(pool.map(lambda st: _probe(sock, st, now, started), stalled))
    if not fixed_now:
        # A call can take seconds when the replica hangs (a sync waits on an upload): a lag is as of
        # the answer, not of the question.
        end = time.time()
        for st in out:
            if st.lag_seconds and st.local_txid is not None and st.replicated_txid is not None:
                st.lag_seconds = round(lag_seconds(st.local_txid, st.replicated_txid, _parse_time(st.last_sync_at),
                                                   end, started), 1)
    for st in out:
        if not st.error and st.local_txid is not None and (st.replicated_txid or 0) > st.local_txid:
            # Litestream uploads nothing until the local txid passes the replica's, then stacks this
            # history's changes on the replica's: its latest restore would be wrong.
            st.state = "error"
            st.error = (f"replica is ahead of the local database (replica txid {st.replicated_txid:016x}, "
                        f"local {st.local_txid:016x}): it holds another history")
    return out


def prometheus_text(dbs: list[DatabaseStatus], services: list[dict]) -> str:
    """The replication and service metrics alone (Prometheus text format 0.0.4)."""
    from edgehost.ops import metrics

    return metrics.render(metrics.families(dbs, services))
