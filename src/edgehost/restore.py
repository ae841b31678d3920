"""Restores, done by the real litestream binary: one database to a new file, never over an existing one."""

from __future__ import annotations

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

from . import layout, litestream
from .errors import BadInput, EdgehostError
from .settings import Settings


@dataclass
class RestoreResult:
    """What happened to one database."""

    name: str
    target: str
    ok: bool
    txid: str = ""
    seconds: float = 0.0
    size: int = 0
    error: str = ""


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        return "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:3])
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



def point_error(binary: Path, env: Mapping[str, str], url: str, *, txid: int | None = None,
                timestamp: datetime | None = None) -> str:
    """Ask litestream (restore -dry-run) whether a point can be restored; '' when it can."""
    args = ["restore", "-dry-run", "-o", os.devnull + ".edgehost-dry-run"]
    if txid is not None:
        args += ["-txid", f"{txid:016x}"]
    if timestamp is not None:
        args += ["-timestamp", timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")]
    proc = litestream.run(binary, [*args, url], env, timeout=120)
    return "" if proc.returncode == 0 else _explain(litestream.last_line(proc.stderr) or "not restorable")


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


@dataclass
class RestoreTarget:
    key: str  # slug or layout.GLOBAL
    name: str
    url: str = field(repr=False)  # carries the S3 endpoint; no secrets
    out: str = ""


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


def restore_latest_or_point(binary: Path, env: Mapping[str, str], url: str, out: Path, *, name: str,
                            txid: int | None, timestamp: datetime | None, latest: int | None) -> RestoreResult:
    """restore_db, handing litestream the latest txid when a listing found it (fewer LISTs);
    if that txid is gone by now (compaction), the plain latest restore runs instead."""
    if txid is None and timestamp is None and latest:
        result = restore_db(binary, env, url, out, name=name, txid=latest)
        if result.ok or "no matching backup files" not in result.error:
            return result
    return restore_db(binary, env, url, out, name=name, txid=txid, timestamp=timestamp)


def execute_plan(plan: RestorePlan, binary: Path, env: Mapping[str, str],
                 on_result: Callable[[RestoreResult], None] | None = None,
                 latest: Mapping[str, int] | None = None) -> RestoreReport:
    """Restore every target of a scratch or --to plan in parallel; one failure does not stop the rest.

    `latest` maps a target's key to its newest txid (see replica.latest_txids) for latest restores.
    """
    report = RestoreReport(plan)
    started = time.monotonic()

    def one(target: RestoreTarget) -> RestoreResult:
        result = restore_latest_or_point(binary, env, target.url, Path(target.out), name=target.name,
                                         txid=plan.txid, timestamp=plan.at, latest=(latest or {}).get(target.key))
        if on_result:
            on_result(result)
        return result

    with ThreadPoolExecutor(max_workers=plan.parallel) as pool:
        report.results = list(pool.map(one, plan.targets))
    report.seconds = round(time.monotonic() - started, 3)
    return report


def litestream_meta_dir(db: Path) -> Path:
    """Where litestream keeps its local state for a database (`.<name>-litestream` beside it)."""
    return db.parent / f".{db.name}-litestream"


def execute_in_place(settings: Settings, plan: RestorePlan, binary: Path, env: Mapping[str, str], supervisor,
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
    staged: dict[str, Path] = {}
    supervisor.hold("portal")  # raises, before anything is written, if no supervisor runs
    try:
        def one(target: RestoreTarget) -> RestoreResult:
            live = Path(target.out)
            tmp = live.parent / f".edgehost-restored-{secrets.token_hex(6)}.db"
            result = restore_db(binary, env, target.url, tmp, name=target.name, txid=plan.txid, timestamp=plan.at)
            result.target = str(live)
            if result.ok:
                staged[target.key] = tmp
            return result

        with ThreadPoolExecutor(max_workers=plan.parallel) as pool:
            report.results = list(pool.map(one, plan.targets))
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


def latest_by_key(settings: Settings, repl: litestream.Replication, keys: list[str]) -> dict[str, int]:
    """Each database's newest txid, from one listing per replica root; worth it for many databases."""
    from .replica import ReplicaStore, latest_txids

    wanted: dict[str, list[tuple[str, str]]] = {}
    for key in keys:
        ref = layout.ref_for(settings, key)
        root, _, rel = repl.replica_url(ref).rpartition("/") if ref.is_global else (repl.tenants_root, "", ref.relpath)
        wanted.setdefault(root, []).append((key, rel))
    out: dict[str, int] = {}
    for root, pairs in wanted.items():
        newest = latest_txids(ReplicaStore.from_settings(settings, root))
        out.update({key: newest[rel] for key, rel in pairs if rel in newest})
    return out
