"""Restores, done by the real litestream binary: one database to a new file, never over an existing one."""

from __future__ import annotations

import bisect
import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Mapping

from edgehost.engine import layout, litestream
from edgehost.engine.bucket import SNAPSHOT_LEVEL, LtxFile, list_root
from edgehost.engine.sqlite import integrity
from edgehost.errors import BadInput, EdgehostError
from edgehost.settings import Settings


@dataclass
class RestoreResult:
    """What happened to one database."""

    name: str
    target: str
    ok: bool
    txid: str = ""  # the point restored: 16 hex digits, as Litestream prints it
    seconds: float = 0.0
    size: int = 0
    error: str = ""
    synced_at: str = ""  # when Litestream synced that txid (its LTX timestamp), RFC 3339 UTC
    seconds_before_at: float | None = None  # with --at T: how long before T that was
    levels: list[int] = field(default_factory=list)  # the LTX levels the point is on (9: a snapshot)
    newest: bool = False  # it was the replica's latest point: nothing later had been replicated
    note: str = ""


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return integrity(conn)
    finally:
        conn.close()


def _ensure_wal(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


def restore_db(
    binary: Path,
    env: Mapping[str, str],
    url: str,
    out: Path,
    *,
    name: str = "",
    txid: int | None = None,
    timestamp: datetime | None = None,
    timeout: float = 600,
) -> RestoreResult:
    """Restore `url` (at `txid` or `timestamp`, else the latest) to `out`, which must not exist.

    The restore lands in a temporary file beside `out`, passes `PRAGMA integrity_check`, and is
    then linked into place, so `out` either appears whole or not at all.
    """
    out = Path(out)
    result = RestoreResult(name=name or out.name, target=str(out), ok=False)
    if out.exists():
        result.error = f"{out} already exists"
        return result
    # The temporary name must not match the property DB pattern Litestream watches.
    tmp = out.parent / f".restoring-{secrets.token_hex(6)}.tmp"
    args = ["restore", "-json", "-o", str(tmp)]
    if txid is not None:
        args += ["-txid", f"{txid:016x}"]
    if timestamp is not None:
        args += ["-timestamp", timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")]
    started = time.monotonic()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = litestream.run(binary, [*args, url], env, timeout=timeout)
        if proc.returncode != 0:
            result.error = _explain(litestream.last_line(proc.stderr) or "restore failed")
            return result
        try:
            summary = json.loads(proc.stdout)
            result.txid = str(summary.get("txid", ""))
        except ValueError:
            pass
        check = _integrity(tmp)
        if check != "ok":
            result.error = f"integrity_check: {check}"
            return result
        _ensure_wal(tmp)
        for suffix in ("-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        try:
            _place(tmp, out)
        except FileExistsError:
            result.error = f"{out} appeared during the restore; left untouched"
            return result
        result.ok = True
        result.size = out.stat().st_size
    except EdgehostError as exc:
        result.error = str(exc)
    except sqlite3.DatabaseError as exc:
        result.error = f"restored file is not a usable database: {exc}"
    except OSError as exc:
        result.error = f"{exc.filename or out}: {exc.strerror or exc}"
    finally:
        result.seconds = round(time.monotonic() - started, 3)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    return result


def _place(tmp: Path, out: Path) -> None:
    """Put the restored file at `out` without ever overwriting: a hard link, or an exclusive copy
    where the filesystem has no hard links (exFAT, some network shares)."""
    try:
        os.link(tmp, out)
        return
    except FileExistsError:
        raise
    except OSError:
        pass
    with open(tmp, "rb") as src, open(out, "xb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
        dst.flush()
        os.fsync(dst.fileno())


def _explain(message: str) -> str:
    message = message.removeprefix("Error: ")
    if "no matching backup files" in message:
        return f"{message} (nothing replicated at that point, or no such database in the replica)"
    if "timestamp does not exist" in message:
        return f"{message} (the time is outside the replica's point-in-time window)"
    return message


def parse_txid(text: str) -> int:
    """A txid as Litestream prints it (16 hex digits) or shorter hex."""
    try:
        value = int(text.strip().lower().removeprefix("0x"), 16)
    except (ValueError, AttributeError, TypeError):
        raise BadInput(f"invalid txid {text!r}: give the hex id Litestream prints, e.g. 000000000000002a") from None
    if value <= 0 or value >= 2**64:
        raise BadInput(f"invalid txid {text!r}: out of range")
    return value


# --- time, windows, plans -------------------------------------------------------------------

_RELATIVE_RE = re.compile(r"^-(\d+(?:\.\d+)?)([smhdw])$")
_RELATIVE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")


def parse_duration(text: str, option: str = "duration") -> float:
    """Seconds from '90', '30s', '5m', '1h', '2d' or '1w'."""
    m = _DURATION_RE.match((text or "").strip())
    if not m:
        raise BadInput(f"{option} {text!r}: give a duration like 30s, 5m, 1h or 2d")
    return float(m.group(1)) * _RELATIVE_UNITS[m.group(2) or "s"]


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """RFC 3339 ('2026-11-21T14:03:00Z') or relative to now ('-15m', '-2h', '-1d'); never in the future."""
    now = now or datetime.now(timezone.utc)
    s = (text or "").strip()
    m = _RELATIVE_RE.match(s)
    try:
        if m:
            when = now - timedelta(seconds=float(m.group(1)) * _RELATIVE_UNITS[m.group(2)])
        else:
            try:
                when = datetime.fromisoformat(s.replace("z", "Z").replace("Z", "+00:00"))
            except ValueError:
                raise BadInput(f"invalid time {text!r}: use RFC 3339 (2026-11-21T14:03:00Z) or relative (-15m, -2h, -1d)") from None
            if when.tzinfo is None:
                raise BadInput(f"invalid time {text!r}: give a timezone (Z or +01:00)")
            when = when.astimezone(timezone.utc)
    except (OverflowError, ValueError) as exc:
        if isinstance(exc, BadInput):
            raise
        raise BadInput(f"time {text!r} is out of range") from None
    if when > now + timedelta(seconds=1):
        raise BadInput(f"time {when.isoformat()} is in the future")
    return when


@dataclass
class RestoreWindow:
    """The restorable range of one database, read from its LTX files."""

    name: str
    earliest_time: str = ""
    earliest_txid: str = ""
    latest_time: str = ""
    latest_txid: str = ""
    files: int = 0
    bytes: int = 0



def restore_window(binary: Path, env: Mapping[str, str], url: str, name: str) -> RestoreWindow:
    """Earliest and latest restorable time and txid: from the oldest snapshot to the newest LTX file."""
    files = litestream.ltx_files(binary, url, env, level="all")
    window = RestoreWindow(name, files=len(files), bytes=sum(int(f.get("size", 0)) for f in files))
    if not files:
        return window
    # A restore starts from a snapshot (level 9) or from a chain beginning at txid 1.
    starts = [f for f in files if f.get("level") == 9 or int(f["min_txid"], 16) == 1] or files
    first = min(starts, key=lambda f: (int(f["max_txid"], 16), f["timestamp"]))
    last = max(files, key=lambda f: (int(f["max_txid"], 16), f["timestamp"]))
    window.earliest_time, window.earliest_txid = first["timestamp"], first["max_txid"]
    window.latest_time, window.latest_txid = last["timestamp"], last["max_txid"]
    return window


# --- restorable points ----------------------------------------------------------------------
#
# What Litestream 0.5 can restore, read from its source (replica.go CalcRestorePlan, compactor.go,
# db.go retention) and checked against the real binary (tests/test_points_e2e.py):
#
# - A restore starts from the newest snapshot (level 9) at or below the target (none: from txid 1)
#   and chains LTX files of any level whose ranges touch; it can only stop at the end of a file.
#   So the restorable points are the max txids of files reachable that way, nothing in between.
# - Each sync writes one L0 file stamped with the time of the sync (ms). A compacted file carries
#   the stamp of its newest input (ltx v0.5.2), so a point has the same time on every level.
# - `-timestamp T` takes files stamped strictly before T: it lands on the newest point synced
#   before T. Commits in the last second before T are in no such file yet.
# - L0 files are deleted once compacted into L1 and older than l0-retention; L1..Ln files stay
#   until snapshot retention removes the snapshot below them. Points older than the oldest kept
#   snapshot are gone even where compacted files remain (no chain starts there).

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TIMESTAMP_META = "litestream-timestamp"  # S3 metadata Litestream writes with every LTX file


def format_time(when: datetime) -> str:
    """RFC 3339 in UTC with milliseconds (LTX timestamps are milliseconds): 2026-11-21T14:02:58.971Z."""
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


parse_rfc3339 = litestream.parse_go_time  # the one parser of litestream's times


def _to_ms(when: datetime) -> datetime:
    ms = round((when - _EPOCH).total_seconds() * 1000)
    return _EPOCH + timedelta(milliseconds=ms)


def human_duration(seconds: float) -> str:
    """'0.97 s', '42 s', '4 min 12 s', '3 h 05 min', '7 d 2 h'."""
    s = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if s < 10:
        return f"{sign}{s:.2f} s"
    if s < 60:
        return f"{sign}{s:.0f} s"
    if s < 3600:
        return f"{sign}{int(s // 60)} min {int(s % 60):02d} s"
    if s < 86400:
        return f"{sign}{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
    return f"{sign}{int(s // 86400)} d {int(s % 86400 // 3600)} h"


@dataclass
class RestorePoint:
    """A txid a restore can land on exactly, and when Litestream synced it."""

    txid: str  # 16 hex digits
    synced_at: str  # RFC 3339 UTC, milliseconds
    levels: list[int]  # the levels holding a file that ends here: 0 = one sync, 1.. = compactions, 9 = snapshot
    seconds_before: float | None = None  # relative to a time asked about: T - synced_at (negative: after T)
    newest: bool = False  # the latest point the replica held when listed


@dataclass
class PointTier:
    """Restorable points grouped by the finest level that still holds them."""

    level: int
    what: str
    points: int
    from_txid: str
    from_time: str
    to_txid: str
    to_time: str


class PointUnavailable(BadInput):
    """The asked-for point cannot be restored; the message names the nearest ones."""


@dataclass
class _Point:
    txid: int
    files: list[LtxFile]  # files ending here that a restore can use, finest level first


def replica_store_for(url: str, env: Mapping[str, str]):
    """The ReplicaStore of one database's replica, from the URL handed to litestream (S3 settings in its query)."""
    from urllib.parse import parse_qs, urlsplit

    from edgehost.engine.replica import ReplicaStore

    base, _, query = url.partition("?")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    return ReplicaStore(base, params.get("endpoint", ""), params.get("region", ""), dict(env))


def list_ltx_files(store) -> list[LtxFile]:
    """Every LTX file of one database whose replica URL the store has (one paginated LIST on S3)."""
    return list_root(store).files("")


class PointIndex:
    """The restorable points of one database, from one listing of its LTX files.

    The chain rule is Litestream's (see the notes above); each point's time is its LTX timestamp:
    the file's mtime on a file replica, its `litestream-timestamp` metadata on S3 (one HEAD, fetched
    only for the points a question needs), which are what Litestream itself compares.
    """

    def __init__(self, files: list[LtxFile], store=None, name: str = "", cli_ref: str = "", prefix: str = ""):
        self.name = name
        self.prefix = prefix  # the database's path under the store's root, when the store is a whole replica root
        self.cli_ref = cli_ref  # how `edgehost points` names it: a slug or --global
        self.store = store
        self.files = files
        self.bytes = sum(f.size for f in files)
        self._times: dict[str, datetime] = {}
        self.points: list[_Point] = _restorable_points(files)
        self._txids = [p.txid for p in self.points]

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str], name: str = "", cli_ref: str = "") -> "PointIndex":
        store = replica_store_for(url, env)
        return cls(list_ltx_files(store), store, name, cli_ref)

    def __len__(self) -> int:
        return len(self.points)

    # times

    def _file_time(self, f: LtxFile) -> datetime:
        if f.key not in self._times:
            when = f.listed_at
            if self.store is not None and self.store.scheme == "s3":
                when = _s3_ltx_timestamp(self.store, f"{self.prefix}/{f.key}" if self.prefix else f.key) or when
            self._times[f.key] = _to_ms(when)
        return self._times[f.key]

    def time(self, i: int) -> datetime:
        """When point `i` was synced: the stamp of the finest file ending there."""
        return self._file_time(self.points[i].files[0])

    def learn_time(self, txid: int, when: datetime, key: str) -> None:
        """The LTX timestamp of file `key`, read from its downloaded header: spares a HEAD when it is
        the file that dates point `txid` (the finest ending there); another level's file may be
        stamped differently, so it teaches nothing."""
        i = self.index_of(txid)
        if i is not None and self.points[i].files[0].key == key:
            self._times.setdefault(key, _to_ms(when))

    def point(self, i: int, relative_to: datetime | None = None) -> RestorePoint:
        p = self.points[i]
        when = self.time(i)
        before = None if relative_to is None else round((relative_to - when).total_seconds(), 3)
        return RestorePoint(f"{p.txid:016x}", format_time(when), sorted({f.level for f in p.files}), before,
                            i == len(self.points) - 1)

    # questions

    def index_of(self, txid: int) -> int | None:
        i = bisect.bisect_left(self._txids, txid)
        return i if i < len(self._txids) and self._txids[i] == txid else None

    def before(self, when: datetime) -> int | None:
        """The newest point synced strictly before `when` (where `litestream restore -timestamp` lands)."""
        if not self.points:
            return None
        lo, hi = 0, len(self.points)  # times rise with txids: find the first point synced at or after `when`
        while lo < hi:
            mid = (lo + hi) // 2
            if self.time(mid) < when:
                lo = mid + 1
            else:
                hi = mid
        # A snapshot's stamp is a moment later than the sync of its txid; look at the neighbours too.
        near = [j for j in range(max(0, lo - 3), min(len(self.points), lo + 3)) if self.time(j) < when]
        return max(near) if near else None

    def around(self, when: datetime, count: int = 5) -> list[int]:
        """Up to `count` points synced before `when` (the newest of them last) and `count` after."""
        j = self.before(when)
        start = 0 if j is None else max(0, j - count + 1)
        stop = min(len(self.points), (-1 if j is None else j) + 1 + count)
        return list(range(start, stop))

    def tiers(self) -> list[PointTier]:
        """The points by the finest level holding them: every sync (L0), compaction boundaries, snapshots."""
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(self.points):
            groups.setdefault(p.files[0].level, []).append(i)
        out = []
        for level in sorted(groups):
            idx = groups[level]
            what = ("every sync (L0)" if level == 0 else "snapshots only" if level == SNAPSHOT_LEVEL
                    else f"L{level} compaction boundaries")
            first, last = self.point(idx[0]), self.point(idx[-1])
            out.append(PointTier(level, what, len(idx), first.txid, first.synced_at, last.txid, last.synced_at))
        return out

    def resolve(self, *, at: datetime | None = None, txid: int | None = None) -> RestorePoint:
        """The point a restore will land on: `txid` itself, the newest point synced before `at`, or the latest.

        Raises PointUnavailable, naming the nearest points, when there is none.
        """
        label = self.name or "this database"
        if not self.points:
            raise PointUnavailable(
                f"{label}: no restorable point: the replica holds "
                + (f"{len(self.files)} LTX files but no chain from a snapshot" if self.files else "no LTX files for it"))
        if txid is not None:
            i = self.index_of(txid)
            if i is not None:
                return self.point(i)
            k = bisect.bisect_left(self._txids, txid)
            near = [self.point(j) for j in (k - 1, k) if 0 <= j < len(self.points)]
            names = " and ".join(f"{p.txid} (synced {p.synced_at}, {_levels_text(p.levels)})" for p in near)
            why = ("is newer than the latest point" if k == len(self.points) else
                   "is older than the earliest point (outside the point-in-time window)" if k == 0 else
                   "is not a restorable point (once its L0 file expires only compaction boundaries remain)")
            hint = f"; see `edgehost points {self.cli_ref} --around {near[0].synced_at}`" if self.cli_ref and near else ""
            raise PointUnavailable(f"{label}: txid {txid:016x} {why}: the nearest are {names}{hint}")
        if at is not None:
            i = self.before(at)
            if i is None:
                first = self.point(0, at)
                raise PointUnavailable(
                    f"{label}: nothing restorable before {format_time(at)}: the time is outside the replica's "
                    f"point-in-time window (the earliest point is txid {first.txid}, synced {first.synced_at})")
            return self.point(i, at)
        return self.point(len(self.points) - 1)


def _levels_text(levels: list[int]) -> str:
    return " ".join("snapshot" if lv == SNAPSHOT_LEVEL else f"L{lv}" for lv in levels)


def _restorable_points(files: list[LtxFile]) -> list[_Point]:
    """The txids a restore can land on exactly, mirroring Litestream's CalcRestorePlan.

    For a target p the plan starts at the newest snapshot at or below p (else at txid 0) and extends
    with any file whose range begins at most one past what it has; it reaches p exactly when a
    chain of files ends there.
    """
    snapshots = sorted({f.max_txid for f in files if f.level == SNAPSHOT_LEVEL})
    ending: dict[int, list[LtxFile]] = {}
    for f in files:
        ending.setdefault(f.max_txid, []).append(f)
    reach: dict[int, int] = {}  # per starting snapshot: the highest point reached so far
    points = []
    for txid in sorted(ending):
        k = bisect.bisect_right(snapshots, txid)
        base = snapshots[k - 1] if k else 0
        reached = reach.get(base, base)
        usable = [f for f in ending[txid] if f.level != SNAPSHOT_LEVEL and f.min_txid <= reached + 1]
        if txid == base:
            usable += [f for f in ending[txid] if f.level == SNAPSHOT_LEVEL]
        if usable:
            usable.sort(key=lambda f: (f.level, f.min_txid))
            points.append(_Point(txid, usable))
            reach[base] = txid
    return points


def _s3_ltx_timestamp(store, key: str) -> datetime | None:
    """The LTX timestamp Litestream stored in the object's metadata (what its -timestamp restore reads)."""
    head = store.head(key)
    meta = head.get("metadata", {})
    try:
        return parse_rfc3339(meta[_TIMESTAMP_META]) if _TIMESTAMP_META in meta else head.get("last_modified")
    except ValueError:
        return head.get("last_modified")


@dataclass
class PointsReport:
    """`edgehost points`: the restore window of one database and the restorable points near a time."""

    name: str
    replica: str
    earliest_time: str = ""
    earliest_txid: str = ""
    latest_time: str = ""
    latest_txid: str = ""
    files: int = 0
    bytes: int = 0
    restorable_points: int = 0
    window_seconds: float | None = None
    tiers: list[PointTier] = field(default_factory=list)
    around: str = ""
    lands: RestorePoint | None = None  # where `restore --at AROUND` lands
    points: list[RestorePoint] = field(default_factory=list)
    # Not empty when the replica holds more than one history for this database (after a reset or a
    # replica switch): then no point list can be trusted, and the latest restore may mix both.
    histories: list[str] = field(default_factory=list)


def restore_points(url: str, env: Mapping[str, str], name: str, *, replica: str = "",
                   around: datetime | None = None, count: int = 5) -> PointsReport:
    """The restorable range of one database, its precision tiers, and the points nearest `around`
    (else the newest `count`), from one listing of its replica."""
    index = PointIndex.from_url(url, env, name)
    report = PointsReport(name, replica or url.split("?")[0], files=len(index.files), bytes=index.bytes,
                          restorable_points=len(index))
    if around is not None:
        report.around = format_time(around)
    from edgehost.engine.history import history

    report.histories = [split.detail for split in history(index.files)]
    if not len(index):
        return report
    first, last = index.point(0), index.point(len(index) - 1)
    report.earliest_time, report.earliest_txid = first.synced_at, first.txid
    report.latest_time, report.latest_txid = last.synced_at, last.txid
    report.window_seconds = round((index.time(len(index) - 1) - index.time(0)).total_seconds(), 3)
    report.tiers = index.tiers()
    if around is None:
        report.points = [index.point(i) for i in range(max(0, len(index) - count), len(index))]
        return report
    landing = index.before(around)
    report.lands = None if landing is None else index.point(landing, around)
    report.points = [index.point(i, around) for i in index.around(around, count)]
    return report


@dataclass
class RestoreTarget:
    key: str  # slug or layout.GLOBAL
    name: str
    url: str = field(repr=False)  # carries the S3 endpoint; no secrets
    out: str = ""
    point: RestorePoint | None = None  # for --at / --txid: the point it will land on (resolve_plan)


@dataclass
class RestorePlan:
    mode: str  # scratch | to | in-place
    root: str  # the data dir the restore writes (scratch, --to, or the live one)
    point: str  # "latest", a time or a txid
    targets: list[RestoreTarget] = field(default_factory=list)
    parallel: int = 8
    at: datetime | None = None
    txid: int | None = None


@dataclass
class RestoreReport:
    plan: RestorePlan
    results: list[RestoreResult] = field(default_factory=list)
    seconds: float = 0.0
    replaced_dir: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)


def restore_plan(settings: Settings, repl: litestream.Replication, keys: list[str], *, to: Path | None = None,
                 in_place: bool = False, at: datetime | None = None, txid: int | None = None,
                 parallel: int = 8, scratch_root: Path | None = None) -> RestorePlan:
    """Decide what goes where; refuses existing targets before anything is written."""
    if at is not None and txid is not None:
        raise BadInput("--at and --txid exclude each other: give one")
    if txid is not None and len(keys) != 1:
        raise BadInput("--txid names a point in one database's history: restore one database with it")
    if in_place and to is not None:
        raise BadInput("--in-place and --to exclude each other")
    if not keys:
        raise BadInput("nothing to restore: name slugs, or use --global or --all")
    if parallel < 1 or parallel > 64:
        raise BadInput("--parallel must be between 1 and 64")
    if in_place:
        mode, root = "in-place", settings.data_dir
    elif to is not None:
        mode, root = "to", Path(to).resolve()
    else:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        mode, root = "scratch", (scratch_root or settings.state_dir / "restores") / f"restore-{stamp}-{secrets.token_hex(2)}"
    point = "latest" if at is None and txid is None else (at.isoformat() if at else f"txid {txid:016x}")
    plan = RestorePlan(mode, str(root), point, parallel=parallel, at=at, txid=txid)
    for key in keys:
        ref = layout.ref_for(settings, key)
        out = root / ref.relpath
        if mode == "to" and out.exists():
            raise BadInput(f"{out} already exists: --to never overwrites; choose an empty directory")
        plan.targets.append(RestoreTarget(key, ref.label, repl.restore_url(ref), str(out)))
    return plan


def resolve_plan(plan: RestorePlan, engine) -> None:
    """Find the point each target of an --at or --txid plan lands on (from the engine's one listing);
    raise PointUnavailable, before anything is written, when one has none."""
    if plan.at is None and plan.txid is None:
        return
    for target in plan.targets:
        target.point = engine.resolve(target.key, at=plan.at, txid=plan.txid)


def _restore_all(plan: RestorePlan, engine, out_for: Callable[[RestoreTarget], Path],
                 on_result: Callable[[RestoreResult], None] | None) -> list[RestoreResult]:
    def one(target: RestoreTarget) -> RestoreResult:
        result = engine.restore(target.key, out_for(target), at=plan.at, txid=plan.txid, point=target.point)
        if on_result:
            on_result(result)
        return result

    with ThreadPoolExecutor(max_workers=plan.parallel) as pool:
        return list(pool.map(one, plan.targets))


def execute_plan(plan: RestorePlan, engine, on_result: Callable[[RestoreResult], None] | None = None) -> RestoreReport:
    """Restore every target of a scratch or --to plan in parallel (ops.recovery.RestoreEngine); one
    failure does not stop the rest. Each result names the exact point restored."""
    report = RestoreReport(plan)
    started = time.monotonic()
    report.results = _restore_all(plan, engine, lambda t: Path(t.out), on_result)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def litestream_meta_dir(db: Path) -> Path:
    """Where litestream keeps its local state for a database (`.<name>-litestream` beside it)."""
    return db.parent / f".{db.name}-litestream"


def execute_in_place(settings: Settings, plan: RestorePlan, engine, supervisor,
                     on_result: Callable[[RestoreResult], None] | None = None) -> RestoreReport:
    """Swap restored copies into the live data dir while the supervisor holds the portal and litestream.

    The current file, its -wal/-shm and Litestream's local state move to
    `<data_dir>/_replaced/<timestamp>/` (never deleted). With its local state gone, Litestream sees
    on start that the database is behind the replica and snapshots it as the new latest state, so
    replication carries on from the restored content.
    """
    report = RestoreReport(plan)
    started = time.monotonic()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    replaced = settings.data_dir / "_replaced" / stamp
    staged = {t.key: Path(t.out).parent / f".edgehost-restored-{secrets.token_hex(6)}.db" for t in plan.targets}
    supervisor.hold("portal")  # raises, before anything is written, if no supervisor runs
    try:
        report.results = _restore_all(plan, engine, lambda t: staged[t.key], None)
        for target, result in zip(plan.targets, report.results):
            result.target = target.out
            if not result.ok:
                staged.pop(target.key)
        if staged:
            supervisor.hold("litestream")  # its final sync puts the current state in the replica too
            try:
                for target in plan.targets:
                    if target.key in staged:
                        _swap(Path(target.out), staged.pop(target.key), replaced / Path(target.out).relative_to(settings.data_dir))
                report.replaced_dir = str(replaced)
            finally:
                supervisor.release("litestream")
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        supervisor.release("portal")
    for result in report.results:
        if on_result:
            on_result(result)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _swap(live: Path, restored: Path, keep: Path) -> None:
    # The kept copy's name must not match the pattern litestream watches in the data dir.
    keep.parent.mkdir(parents=True, exist_ok=True)
    kept = keep.with_name(keep.name + ".replaced")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{live}{suffix}")
        if src.exists():
            os.rename(src, f"{kept}{suffix}")
    meta = litestream_meta_dir(live)
    if meta.exists():
        os.rename(meta, keep.parent / meta.name)
    os.rename(restored, live)
