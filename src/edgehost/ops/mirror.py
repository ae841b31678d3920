"""`edgehost mirror`: a second, local copy of the replica that `restore --from DIR` restores from.

The mirror is a file replica: every LTX file of every database under `DIR/<db>/ltx/<level>/`,
with its mtime set to the LTX timestamp, as Litestream's own file replica keeps them, so
`litestream restore file://DIR/<db>` and `edgehost restore --from DIR` work with no network
(3-2-1: the Mac's disk, the bucket, a USB disk or NAS). A round lists the replica root once,
GETs only the files the mirror lacks (checked against the listed size and ETag) and deletes a file
the bucket no longer lists only after it has been missing for `grace` seconds, so a bucket emptied
by mistake or malice does not empty the mirror with it.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from edgehost.engine import litestream
from edgehost.engine.bucket import Fetcher, Listing, ListingCancelled, list_root
from edgehost.engine.replica import ReplicaStore
from edgehost.errors import BadInput, EdgehostError
from edgehost.files import write_atomic
from edgehost.ops.recovery import GLOBAL_ROOT_DIR, mirror_roots
from edgehost.settings import Settings

STATE_FILE = ".edgehost-mirror.json"


@dataclass
class MirrorReport:
    to: str
    source: str
    listed: int = 0  # LTX files the replica lists
    fetched: int = 0
    fetched_bytes: int = 0
    deleted: int = 0
    pending_delete: int = 0  # gone from the bucket, kept until the grace period ends
    list_pages: int = 0
    seconds: float = 0.0
    databases: int = 0
    errors: list[str] = field(default_factory=list)
    cancelled: bool = False  # `cancel` stopped a listing: the round saw part of the replica
    # What the round missed, as (local root, database under it or "" for the root's listing, message).
    missed: list[tuple[Path, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_target(settings: Settings, to: Path) -> Path:
    """Refuse a mirror directory that would mix with live data or with the replica itself."""
    to = Path(to).resolve()
    data = settings.data_dir.resolve()
    if to == data or data in to.parents or to in data.parents:
        raise BadInput(f"--to {to}: the mirror must be outside the data dir {data}")
    if settings.replica_url.startswith("file://"):
        replica = Path(settings.replica_url.removeprefix("file://")).resolve()
        if to == replica or replica in to.parents or to in replica.parents:
            raise BadInput(f"--to {to}: that is the replica itself ({replica}); give another disk's directory")
    if to.exists() and not to.is_dir():
        raise BadInput(f"--to {to}: not a directory")
    return to


def _load_state(to: Path, source: str) -> dict:
    path = to / STATE_FILE
    if not path.exists():
        if to.exists() and any(p.name != STATE_FILE for p in to.iterdir()):
            raise BadInput(f"--to {to}: not empty and not an edgehost mirror; give an empty directory or an existing mirror")
        return {"source": source, "gone": {}}
    try:
        state = json.loads(path.read_text())
    except ValueError as exc:
        raise BadInput(f"{path}: unreadable ({exc}); move it away to start the mirror again") from None
    if state.get("source") != source:
        raise BadInput(f"--to {to} mirrors {state.get('source')}, not {source}: give another directory")
    state.setdefault("gone", {})
    return state


def _save_state(to: Path, state: dict) -> None:
    write_atomic(to / STATE_FILE, json.dumps(state, indent=1, sort_keys=True))  # two rounds may overlap (a promotion's)


def _local_files(root: Path) -> dict[str, int]:
    """Every LTX file in a mirror directory: its path relative to `root` -> size."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != GLOBAL_ROOT_DIR or Path(dirpath) != root]  # another root's mirror
        for name in files:
            if name.endswith(".ltx") and not name.startswith("."):
                p = Path(dirpath) / name
                out[str(p.relative_to(root))] = p.stat().st_size
    return out


FETCH_DBS = 8  # databases whose new files are fetched at once (their GETs share the `parallel` pool)


def mirror_once(settings: Settings, ls: litestream.Litestream, to: Path, *, grace: float = 3600,
                parallel: int = 16, now: float | None = None,
                on_listing: Callable[[Path, Listing], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> MirrorReport:
    """One round: list the replica once per root, fetch what is new, delete what is long gone.

    `on_listing(local root, listing)` is called once a root's new files are in the mirror. `cancel()`
    true stops the listing once the page in flight arrives (no further page is asked for; a root
    not begun is not listed); the round is then `cancelled` and, as for a replica that does not
    answer, deletes nothing under that root."""
    started = time.monotonic()
    now = time.time() if now is None else now
    to = check_target(settings, to)
    report = MirrorReport(str(to), settings.replica_url)
    to.mkdir(parents=True, exist_ok=True)
    state = _load_state(to, settings.replica_url)
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="mirror") as pool, \
            ThreadPoolExecutor(max_workers=FETCH_DBS, thread_name_prefix="mirror-db") as dbs:
        for remote, local in mirror_roots(ls.replication, to).items():
            store = ReplicaStore.from_settings(settings, remote)
            local_files = dbs.submit(_local_files, local)  # the mirror's own walk, beside the first page
            fetcher = Fetcher(store, pool)
            wanted: set[str] = set()
            fetches: list[tuple[str, Future]] = []
            listing = Listing(remote)  # filled by the walk; each fetch checks ETags against it

            def fetch_new(db: str, files: list) -> None:
                # Called by the walk below, within this root's iteration: this database's new files
                # are fetched beside the next pages and beside other databases' files.
                have = local_files.result()
                new = []
                for f in files:
                    rel = f"{db}/{f.file_key}"
                    if rel not in wanted:
                        wanted.add(rel)
                        if have.get(rel) != f.size:
                            new.append(f)
                if new:
                    fetches.append((db, dbs.submit(fetcher.fetch, db, new, local / db, listing)))

            try:
                walked = list_root(store, on_db=fetch_new, into=listing, cancel=cancel)
            except EdgehostError as exc:  # the replica did not answer: nothing is deleted, next round retries
                report.errors.append(str(exc))
                report.missed.append((local, "", str(exc)))
                report.cancelled = report.cancelled or isinstance(exc, ListingCancelled)
                for _, fut in fetches:
                    fut.cancel()
                continue
            finally:
                for db, fut in fetches:
                    try:
                        fut.result()
                    except Exception as exc:  # noqa: BLE001 - one database's failure is reported, the rest go on
                        if not fut.cancelled():
                            report.errors.append(f"{db}: {exc}")
                            report.missed.append((local, db, f"{db}: {exc}"))
            report.list_pages += getattr(store, "list_pages", 0)
            report.databases += len(walked.dbs)
            report.listed += walked.objects
            if on_listing is not None:
                on_listing(local, walked)
            report.fetched += fetcher.stats.gets
            report.fetched_bytes += fetcher.stats.bytes
            _expire(local, local_files.result(), wanted, state, grace, now, report, prefix=str(local.relative_to(to)))
    if not report.cancelled:
        state["last_round"] = datetime.fromtimestamp(now, timezone.utc).isoformat()
    _save_state(to, state)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _expire(local: Path, have: dict[str, int], wanted: set[str], state: dict, grace: float, now: float,
            report: MirrorReport, prefix: str) -> None:
    gone: dict[str, float] = state["gone"]
    tag = "" if prefix == "." else f"{prefix}/"
    for rel in list(gone):
        if rel.startswith(tag) and (rel[len(tag):] in wanted or rel[len(tag):] not in have):
            del gone[rel]  # back in the bucket, or no longer in the mirror
    for rel in have:
        if rel in wanted:
            continue
        since = gone.setdefault(f"{tag}{rel}", now)
        if now - since >= grace:
            (local / rel).unlink(missing_ok=True)
            del gone[f"{tag}{rel}"]
            report.deleted += 1
        else:
            report.pending_delete += 1
