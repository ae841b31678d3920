"""The replica's LTX files from one listing, the files a restore needs, and fetching them.

Litestream 0.5 keeps each database's history as LTX files named by level and txid range:
`<db>/<level as %04x>/<min>-<max>.ltx` in S3 and R2, `<db>/ltx/<level>/<min>-<max>.ltx` in a file
replica. A restore (replica.go CalcRestorePlan) takes the newest snapshot (level 9) at or below the
target, then, from the highest compaction level down to L0, the files past what it has, up to the
target. `litestream restore` finds those by LISTing every level of the one database (~20-40 LISTs)
and then GETs them one after another.

Here one paginated listing of the replica root serves every database: `plan_files` picks the same
files from it, `Fetcher` downloads just those in parallel (sizes and MD5 ETags checked) into a
directory laid out as a file replica, and `litestream restore file://...` applies them there, so
Litestream still decides what is applied. `LtxFile.file_key` is a file's place in that layout, which
is also what `edgehost mirror` keeps on a USB disk or NAS.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from edgehost.errors import EnvironmentProblem
from edgehost.files import write_atomic

SNAPSHOT_LEVEL = 9
_FILE_LTX_KEY = re.compile(r"^(?:(.+)/)?ltx/(\d+)/([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
_S3_LTX_KEY = re.compile(r"^(?:(.+)/)?([0-9a-f]{4})/([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
_LTX_MAGIC = b"LTX1"
_HEADER = struct.Struct(">4sIIIQQq")  # magic, flags, page size, commit, min txid, max txid, timestamp (ms)


@dataclass(frozen=True)
class LtxFile:
    """One LTX file of a database's replica."""

    level: int
    min_txid: int
    max_txid: int
    size: int
    key: str  # relative to the database's replica root, in the store's own layout
    listed_at: datetime  # file replica: mtime, which Litestream sets to the LTX timestamp; S3: upload time

    @property
    def name(self) -> str:
        return f"{self.min_txid:016x}-{self.max_txid:016x}.ltx"

    @property
    def file_key(self) -> str:
        """Where the file sits in a file replica (and in a mirror or fetch cache): ltx/<level>/<name>."""
        return f"ltx/{self.level}/{self.name}"


def parse_key(key: str, scheme: str) -> tuple[str, LtxFile] | None:
    """(database path relative to the root, the file with its key relative to the database), or None."""
    m = (_FILE_LTX_KEY if scheme == "file" else _S3_LTX_KEY).match(key.replace(os.sep, "/"))
    if not m:
        return None
    db, level = m.group(1) or "", int(m.group(2), 10 if scheme == "file" else 16)
    rel = key[len(db) + 1:] if db else key
    return db, LtxFile(level, int(m.group(3), 16), int(m.group(4), 16), 0, rel, datetime.min.replace(tzinfo=timezone.utc))


@dataclass
class Listing:
    """Every LTX file under a replica root, by database (its path relative to the root)."""

    root: str
    dbs: dict[str, list[LtxFile]] = field(default_factory=dict)
    objects: int = 0
    bytes: int = 0
    etags: dict[str, str] = field(default_factory=dict)  # key relative to the root -> ETag (S3)
    whole: bool = True  # False: only some databases were listed (one at a time)

    def files(self, db: str) -> list[LtxFile]:
        return self.dbs.get(db, [])


def list_root(store, rel: str = "", on_db: Callable[[str, list[LtxFile]], None] | None = None,
              into: Listing | None = None, cancel: Callable[[], bool] | None = None) -> Listing:
    """One paginated walk of the root (or of one database under it, `rel`).

    `on_db(db, files)`: called as soon as the walk has passed a database's files (keys come in
    order, so a database's files are listed together), while later pages are still to come; a
    caller can start fetching them then. `into`: the (empty) Listing to fill, for a caller that
    reads it while the walk goes on. `cancel()` true: the walk does not begin, or stops at its next
    object (once the page in flight has arrived), asking for no further page, and raises
    ListingCancelled (the listing is incomplete)."""
    listing = into if into is not None else Listing(store.url)
    current = None

    def stop_if_cancelled() -> None:
        if cancel is not None and cancel():
            raise ListingCancelled(f"listing of {store.url} cancelled after {listing.objects} object(s)")

    stop_if_cancelled()  # before the first page is asked for
    for obj in store.walk(rel):
        stop_if_cancelled()
        parsed = parse_key(obj.key, store.scheme)
        if parsed is None:
            continue
        db, f = parsed
        if on_db is not None and current is not None and db != current:
            on_db(current, sorted(listing.dbs[current], key=ltx_order))
        current = db
        f = LtxFile(f.level, f.min_txid, f.max_txid, obj.size, f.key, obj.modified)
        listing.dbs.setdefault(db, []).append(f)
        listing.objects += 1
        listing.bytes += obj.size
        if getattr(obj, "etag", ""):
            listing.etags[obj.key] = obj.etag
    for files in listing.dbs.values():
        files.sort(key=ltx_order)
    if on_db is not None and current is not None:
        on_db(current, listing.dbs[current])
    return listing


def ltx_order(f: LtxFile) -> tuple[int, int, int]:
    """Files in plan order: by level, then txid range."""
    return (f.level, f.min_txid, f.max_txid)


def local_l0_files(meta_dir: Path, scheme: str, after: int, upto: int) -> list[LtxFile]:
    """The L0 files Litestream keeps beside a live database (`.<db>-litestream/ltx/0`) that end past
    txid `after` and at or before `upto`, keyed as the replica lays them out. Litestream uploads each
    local L0 file as it is, so once the replica reports `upto`, each of these is in the bucket under
    that key: a fetch from the bucket still proves it (a missing one raises ObjectGone)."""
    found = []
    try:
        entries = list(os.scandir(meta_dir / "ltx" / "0"))
    except OSError:
        return []
    for entry in entries:
        parsed = parse_key(f"ltx/0/{entry.name}" if scheme == "file" else f"0000/{entry.name}", scheme)
        if parsed is None or not after < parsed[1].max_txid <= upto:
            continue
        try:
            found.append(replace(parsed[1], size=entry.stat().st_size))
        except OSError:
            continue
    return sorted(found, key=lambda f: f.min_txid)


def plan_files(files: Iterable[LtxFile], txid: int) -> list[LtxFile] | None:
    """The files Litestream's restore plan uses to reach `txid` exactly, or None when no chain does.

    The newest snapshot at or below `txid`, then for each level from 8 down to 0 the files past
    what the plan already reaches and at or below `txid`, each beginning at most one past the last.
    """
    files = list(files)
    snapshots = [f for f in files if f.level == SNAPSHOT_LEVEL and f.max_txid <= txid]
    plan = [max(snapshots, key=lambda f: f.max_txid)] if snapshots else []
    reached = plan[0].max_txid if plan else 0
    for level in range(SNAPSHOT_LEVEL - 1, -1, -1):
        start = reached
        for f in sorted((f for f in files if f.level == level), key=lambda f: f.min_txid):
            if f.max_txid <= start or f.max_txid > txid:
                continue
            if f.min_txid > reached + 1:
                break  # a gap on this level: a finer level may still bridge it
            plan.append(f)
            reached = f.max_txid
    return plan if plan and reached == txid else None


def ltx_timestamp(head: bytes) -> datetime | None:
    """The LTX header's timestamp (when Litestream synced the file), or None if it is no LTX header."""
    if len(head) < _HEADER.size:
        return None
    magic, _, _, _, _, _, ms = _HEADER.unpack_from(head)
    if magic != _LTX_MAGIC:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


class ListingCancelled(EnvironmentProblem):
    """A walk stopped by its caller before the end: what it found is not the whole replica."""


class ObjectGone(EnvironmentProblem):
    """The object was listed but is gone now (compaction or retention removed it)."""


@dataclass
class FetchStats:
    gets: int = 0
    bytes: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.gets += 1
            self.bytes += nbytes


def check_object(f: LtxFile, data: bytes, etag: str = "") -> str:
    """Why the downloaded bytes are not the listed file, or ''."""
    if len(data) != f.size:
        return f"{len(data)} bytes, listed as {f.size}"
    tag = etag.strip('"')
    if re.fullmatch(r"[0-9a-f]{32}", tag) and hashlib.md5(data, usedforsecurity=False).hexdigest() != tag:
        return "content does not match its ETag"
    if data[:4] != _LTX_MAGIC:
        return "not an LTX file"
    _, _, _, _, lo, hi, _ = _HEADER.unpack_from(data)
    if (lo, hi) != (f.min_txid, f.max_txid):
        return f"header says txids {lo:016x}-{hi:016x}"
    return ""


def write_ltx(path: Path, data: bytes, durable: bool = True) -> None:
    """Write one LTX file whole (temp file, fsync unless `durable` is off, rename) with its mtime set
    to the LTX timestamp, which is what a file replica's reader takes as the file's time."""
    mtime_ns = _HEADER.unpack_from(data)[6] * 1_000_000 if data[:4] == _LTX_MAGIC else None
    write_atomic(path, data, fsync=durable, mtime_ns=mtime_ns)


class Fetcher:
    """Download LTX files of one store into a local directory in the file-replica layout.

    `fetch(db, files, into)` writes `into/ltx/<level>/<name>` for each file, GETs in parallel on a
    shared pool; each object is checked against its listed size and ETag and retried up to
    `attempts` times. A file that is gone raises ObjectGone (the caller lists again).
    """

    def __init__(self, store, pool, attempts: int = 3, on_bytes: Callable[[int], None] | None = None,
                 durable: bool = True):
        self.store = store
        self.pool = pool
        self.attempts = attempts
        self.on_bytes = on_bytes
        self.durable = durable  # a mirror keeps its files; a restore's fetch cache lives for seconds
        self.stats = FetchStats()

    def _one(self, key: str, f: LtxFile, into: Path, etag: str) -> None:
        problem = ""
        for _ in range(self.attempts):
            data = self.store.get(key)  # ObjectGone propagates: no retry brings it back
            self.stats.add(len(data))
            problem = check_object(f, data, etag)
            if not problem:
                write_ltx(into / f.file_key, data, self.durable)
                if self.on_bytes:
                    self.on_bytes(len(data))
                return
            with self.stats._lock:
                self.stats.retries += 1
        raise EnvironmentProblem(f"replica {self.store.url}: {key}: {problem} (after {self.attempts} attempts)")

    def fetch(self, db: str, files: list[LtxFile], into: Path, listing: Listing) -> None:
        """Download `files` of database `db`, checked against the ETags of `listing` (the one they come from)."""
        keys = [f"{db}/{f.key}" if db else f.key for f in files]  # relative to the store's root
        futures = [self.pool.submit(self._one, key, f, into, listing.etags.get(key, "")) for key, f in zip(keys, files)]
        errors = []
        for fut in futures:
            try:
                fut.result()
            except Exception as exc:  # noqa: BLE001 - every future is waited for, the first error raised
                errors.append(exc)
        if errors:
            gone = [e for e in errors if isinstance(e, ObjectGone)]
            raise (gone or errors)[0]
