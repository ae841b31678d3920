"""One engine for every restore: one listing of the replica, then each database's files fetched in
parallel and applied by `litestream restore` from a local copy.

`restore --all`, `restore` of one database, `up`'s restore of missing databases, `migrate` on a new
machine and `drill` go through `RestoreEngine`:

1. The replica root is listed once (paginated; the global DB's root too when it is elsewhere). Each
   database's restorable points and its restore plan for latest / --txid / --at come from that
   listing (engine/bucket.py), so no database is LISTed again.
2. For an S3 (R2) replica the plan's objects are downloaded in parallel, each checked against its
   listed size and ETag, into a fetch cache laid out as a file replica; `litestream restore -txid`
   then applies them from `file://`. Litestream still decides what is applied; the kit only fetches.
   A file replica, or a local mirror (`restore --from DIR`), is restored from in place.
3. A file compaction removed between the listing and the GET makes the engine list that database
   again and choose its point afresh; a plan that cannot be made from the listing (a chain with a
   gap) falls back to `litestream restore` of the remote URL, and the result says so.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from edgehost.engine import layout, litestream
from edgehost.engine.bucket import (SNAPSHOT_LEVEL, Fetcher, Listing, ObjectGone, list_root, ltx_order, ltx_timestamp,
                                    plan_files)
from edgehost.engine.replica import ReplicaStore
from edgehost.errors import EdgehostError
from edgehost.ops.restore import PointIndex, RestorePoint, RestoreResult, parse_rfc3339, restore_db
from edgehost.settings import Settings

GLOBAL_ROOT_DIR = "_global"  # in a mirror: the global DB's root, when it is not the tenants' root


def mirror_roots(repl: litestream.Replication, mirror: Path) -> dict[str, Path]:
    """Each replica root and its directory in a local mirror: the tenants' root is the mirror itself;
    the global DB's root, when it is elsewhere, is `_global/` in it."""
    tenants = repl.tenants_root.rstrip("/")
    glob = repl.global_entry.replica_url.rstrip("/").rpartition("/")[0]
    return {tenants: mirror, **({} if glob == tenants else {glob: mirror / GLOBAL_ROOT_DIR})}


def _cli_ref(key: str) -> str:
    return "--global" if key == layout.GLOBAL else key


@dataclass
class EngineStats:
    """What one engine asked of the replica."""

    list_pages: int = 0
    listings: int = 0
    relists: int = 0
    gets: int = 0
    bytes: int = 0
    fallbacks: int = 0


class RestoreEngine:
    """Restores planned from one listing of the replica (or of a local mirror, `source`)."""

    def __init__(self, settings: Settings, ls: litestream.Litestream, *, source: Path | None = None,
                 fetch_parallel: int = 16, on_bytes: Callable[[int], None] | None = None):
        self.settings = settings
        self.binary, self.env, self.repl = ls.binary, ls.env, ls.replication
        self.source = Path(source).resolve() if source is not None else None
        self.on_bytes = on_bytes
        self.stats = EngineStats()
        self._lock = threading.RLock()
        self._stores: dict[str, ReplicaStore] = {}
        self._listings: dict[str, Listing] = {}
        self._fetchers: dict[str, Fetcher] = {}
        self._indexes: dict[str, PointIndex] = {}
        self._pool = ThreadPoolExecutor(max_workers=fetch_parallel, thread_name_prefix="fetch")
        self._cache = settings.state_dir / "fetch" / f"{secrets.token_hex(4)}"

    # where things are

    def locate(self, key: str) -> tuple[str, str]:
        """(the URL of the replica root holding the database, its path under that root)."""
        ref = layout.ref_for(self.settings, key)
        tenants = self.repl.tenants_root.rstrip("/")
        if not ref.is_global:
            return self._root(tenants), ref.relpath
        parent, _, leaf = self.repl.global_entry.replica_url.rstrip("/").rpartition("/")
        return self._root(parent), leaf

    def _root(self, remote: str) -> str:
        return remote if self.source is None else mirror_roots(self.repl, self.source)[remote].as_uri()

    def store(self, root: str) -> ReplicaStore:
        with self._lock:
            if root not in self._stores:
                self._stores[root] = ReplicaStore.from_settings(self.settings, root)
            return self._stores[root]

    def listing(self, root: str) -> Listing:
        """The root's one listing, taken on first use."""
        with self._lock:
            if root in self._listings and self._listings[root].whole:
                return self._listings[root]
        store = self.store(root)
        listing = list_root(store)
        with self._lock:
            self.stats.listings += 1
            if not self._listings.get(root, listing).whole:
                self._listings[root] = listing  # only some databases were listed so far
                self._indexes.clear()
            return self._listings.setdefault(root, listing)

    def relist(self, key: str) -> None:
        """List one database (again): after a file it needed was compacted away, or after a sync
        (verify), without listing the whole root."""
        root, rel = self.locate(key)
        fresh = list_root(self.store(root), rel)
        with self._lock:
            listing = self._listings.setdefault(root, Listing(root, whole=False))
            self.stats.relists += 1
            listing.dbs[rel] = fresh.files(rel)
            listing.etags.update(fresh.etags)
            self._indexes.pop(key, None)

    def extend(self, key: str, files: list) -> None:
        """Add files the replica holds since the listing was taken (verify: the L0 files its sync
        just uploaded, named from litestream's local copies), so their database needs no LIST."""
        root, rel = self.locate(key)
        with self._lock:
            listing = self._listings.setdefault(root, Listing(root, whole=False))
            have = {ltx_order(f) for f in listing.files(rel)}
            new = [f for f in files if ltx_order(f) not in have]
            if new:
                listing.dbs[rel] = sorted(listing.files(rel) + new, key=ltx_order)
                self._indexes.pop(key, None)

    def scheme(self, key: str) -> str:
        """How the replica holding `key` lays out its files: "file" or "s3"."""
        return self.store(self.locate(key)[0]).scheme

    def reaches(self, key: str, txid: int) -> bool:
        """Whether the files known for `key` chain up to exactly `txid`."""
        return plan_files(self.files(key), txid) is not None

    def keys(self) -> list[str]:
        """Every database the replica holds: the global DB first, then tenant slugs. A database
        directory with no LTX files counts too (its restore then fails, saying so)."""
        groot, grel = self.locate(layout.GLOBAL)
        troot = self._root(self.repl.tenants_root.rstrip("/"))
        suffix = "/" + self.settings.property_db_name
        dirs = {root: self.store(root).list_dirs() for root in {troot, groot}}
        dbs = set(self.listing(troot).dbs) | {f"{d}{suffix}" for d in dirs[troot]}
        held = bool(self.listing(groot).files(grel)) or grel in dirs[groot]
        out = [layout.GLOBAL] if held else []
        for db in sorted(dbs):
            slug = db.removesuffix(suffix)
            if db.endswith(suffix) and "/" not in slug and layout.is_slug(slug) and slug != self.settings.global_db_name:
                out.append(slug)
        return out

    def index(self, key: str) -> PointIndex:
        """The database's restorable points from the listing (one per engine: its HEADs are cached)."""
        with self._lock:
            if key in self._indexes:
                return self._indexes[key]
        root, rel = self.locate(key)
        ref = layout.ref_for(self.settings, key)
        index = PointIndex(self.listing(root).files(rel), self.store(root), ref.label, _cli_ref(key), prefix=rel)
        with self._lock:
            return self._indexes.setdefault(key, index)

    def files(self, key: str) -> list:
        """The database's LTX files in the listing."""
        root, rel = self.locate(key)
        return self.listing(root).files(rel)

    def latest_txid(self, key: str) -> int | None:
        """The newest restorable txid in the listing, without asking the bucket for its time."""
        index = self.index(key)
        return index.points[-1].txid if len(index) else None

    def resolve(self, key: str, *, at: datetime | None = None, txid: int | None = None) -> RestorePoint:
        """The point a restore of `key` lands on; raises PointUnavailable naming the nearest ones."""
        return self.index(key).resolve(at=at, txid=txid)

    def planned_bytes(self, key: str, point: RestorePoint | None = None) -> int:
        """What a restore of `key` at `point` (else the latest) downloads: 0 from a file replica or mirror."""
        root, rel = self.locate(key)
        txid = int(point.txid, 16) if point is not None else self.latest_txid(key)
        if self.store(root).scheme == "file" or txid is None:
            return 0
        plan = plan_files(self.listing(root).files(rel), txid)
        return sum(f.size for f in plan or [])

    # restoring

    def restore(self, key: str, out: Path, *, at: datetime | None = None, txid: int | None = None,
                point: RestorePoint | None = None) -> RestoreResult:
        """Restore one database to `out` (which must not exist) at `point`, or the point `at`/`txid`
        names, or the latest; the result names the exact point restored."""
        ref = layout.ref_for(self.settings, key)
        out = Path(out)
        first = point
        result = RestoreResult(name=ref.label, target=str(out), ok=False)
        note = ""
        for attempt in range(2):
            try:
                index = self.index(key)
                # The latest point or a txid the listing holds: its time comes from the downloaded
                # file's header afterwards, not from a HEAD now.
                known = point is None and at is None and len(index) > 0 and (txid is None or index.index_of(txid) is not None)
                if known:
                    target = txid if txid is not None else index.points[-1].txid
                else:
                    point = point or index.resolve(at=at, txid=txid)
                    target = int(point.txid, 16)
                result, note, stamp = self._restore_at(key, out, target)
                if known:
                    if stamp is not None:
                        index.learn_time(target, *stamp)
                    point = index.point(index.index_of(target)) if result.ok else None
                break
            except ObjectGone:
                if attempt:
                    result.error = "the replica's files changed twice during the restore (compaction); run it again"
                    return result
                self.relist(key)  # compaction removed a file between the listing and the GET
                point = None
            except EdgehostError as exc:
                result.error = str(exc)
                return result
        if result.ok:
            _describe(result, point, first, at, note)
        return result

    def _restore_at(self, key: str, out: Path, txid: int) -> tuple[RestoreResult, str, tuple[datetime, str] | None]:
        """Restore exactly `txid`: (the result, a note, the LTX timestamp and key of the downloaded
        file ending at txid)."""
        root, rel = self.locate(key)
        ref = layout.ref_for(self.settings, key)
        store = self.store(root)
        if store.scheme == "file":
            return restore_db(self.binary, self.env, f"{root}/{rel}", out, name=ref.label, txid=txid), "", None
        listing = self.listing(root)
        plan = plan_files(listing.files(rel), txid)
        if plan is None:
            with self._lock:
                self.stats.fallbacks += 1
            result = restore_db(self.binary, self.env, self.repl.restore_url(ref), out, name=ref.label, txid=txid)
            return result, "restored straight from the bucket: the listing held no contiguous chain to that point", None
        work = self._cache / secrets.token_hex(4)
        try:
            self._fetcher(root).fetch(rel, plan, work / rel, listing)
            with open(work / rel / plan[-1].file_key, "rb") as f:  # the file ending at txid: its stamp
                when = ltx_timestamp(f.read(100))
            stamp = (when, plan[-1].key) if when is not None else None
            return restore_db(self.binary, self.env, (work / rel).as_uri(), out, name=ref.label, txid=txid), "", stamp
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _fetcher(self, root: str) -> Fetcher:
        with self._lock:
            if root not in self._fetchers:
                self._fetchers[root] = Fetcher(self.store(root), self._pool, durable=False,
                                               on_bytes=lambda n: self.on_bytes and self.on_bytes(n))
            return self._fetchers[root]

    def refresh_stats(self) -> EngineStats:
        """The counters, summed from the stores (LIST pages) and the fetchers (GETs, bytes)."""
        with self._lock:
            self.stats.list_pages = sum(getattr(s, "list_pages", 0) for s in self._stores.values())
            self.stats.gets = sum(f.stats.gets for f in self._fetchers.values())
            self.stats.bytes = sum(f.stats.bytes for f in self._fetchers.values())
            return self.stats

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        shutil.rmtree(self._cache, ignore_errors=True)
        try:
            self._cache.parent.rmdir()
        except OSError:
            pass

    def __enter__(self) -> "RestoreEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _describe(result: RestoreResult, point: RestorePoint, first: RestorePoint | None, at: datetime | None,
              note: str = "") -> None:
    """Name the exact point restored in the result, and how it relates to what was asked."""
    result.txid, result.synced_at, result.levels, result.newest = point.txid, point.synced_at, point.levels, point.newest
    notes = [note] if note else []
    if at is not None:
        result.seconds_before_at = round((at - parse_rfc3339(point.synced_at)).total_seconds(), 3)
        if point.newest:
            notes.append("the newest point in the replica: nothing later was replicated")
    if first is not None and first.txid != point.txid:
        notes.append(f"txid {first.txid} was compacted away before the restore ran; restored {point.txid}")
    result.note = "; ".join(notes)


def oldest_point(files: list) -> datetime | None:
    """When the oldest restorable point of a database was written: its oldest snapshot, or a file
    that starts the chain at txid 1 (before the first snapshot). None when the replica holds neither."""
    starts = [f.listed_at for f in files if f.level == SNAPSHOT_LEVEL or f.min_txid == 1]
    return min(starts) if starts else None


def pitr_windows(settings: Settings, ls: litestream.Litestream, refs: list, now: datetime) -> dict[str, float | None]:
    """Each database's point-in-time window in seconds (how far back `restore --at` reaches), from
    one listing of each replica root."""
    out: dict[str, float | None] = {}
    with RestoreEngine(settings, ls, fetch_parallel=1) as engine:
        for ref in refs:
            oldest = oldest_point(engine.files(ref.key))
            out[ref.label] = None if oldest is None else max(0.0, (now - oldest).total_seconds())
    return out
