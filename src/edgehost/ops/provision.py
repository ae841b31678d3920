"""Databases come from the replica first: restore what it holds and the disk lacks, create only what it lacks.

An empty database created on a new machine beside a replica that has the real one becomes the
newest state the moment Litestream replicates it. So every path that can create a database (`up`,
`migrate`, `property add`, the portal's start) asks the replica first.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from edgehost.engine import layout, litestream
from edgehost.errors import BadInput, EdgehostError, EnvironmentProblem
from edgehost.engine.replica import replica_keys
from edgehost.engine.schema import ensure_data_dir, ensure_global
from edgehost.ops.restore import RestoreResult
from edgehost.settings import Settings

Log = Callable[[str], None]


class HeldByReplica(BadInput):
    """The database a command would create already exists in the replica."""


def missing_databases(settings: Settings, repl: litestream.Replication) -> list[layout.DatabaseRef]:
    """Every database the replica holds that the disk lacks: the global one and every listed tenant."""
    keys = replica_keys(settings, repl.tenants_root, repl.global_entry.replica_url)
    refs = [layout.ref_for(settings, key) for key in keys]
    return [r for r in refs if not r.path.exists()]


def restore_missing(settings: Settings, ls: litestream.Litestream, log: Log,
                    parallel: int = 8) -> list[RestoreResult]:
    """Restore every database the replica holds and the disk lacks; raise if any restore fails."""
    repl = ls.replication
    refs = missing_databases(settings, repl)
    if not refs:
        log("restore: every database in the replica is on disk")
        return []
    log(f"restore: {len(refs)} database(s) in the replica are missing on disk: {', '.join(r.label for r in refs)}")
    from edgehost.ops.recovery import RestoreEngine

    with RestoreEngine(settings, ls) as engine:  # one listing of the replica for all of them
        def one(ref: layout.DatabaseRef) -> RestoreResult:
            result = engine.restore(ref.key, ref.path)
            log(f"restore: {ref.label}: " + (f"ok txid {result.txid} in {result.seconds:.2f}s" if result.ok
                                             else f"FAILED: {result.error}"))
            return result

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            results = list(pool.map(one, refs))
        stats = engine.refresh_stats()
    if stats.gets:
        log(f"restore: fetched {stats.bytes / 1e6:.1f} MB in {stats.gets} GETs after {stats.list_pages} LIST page(s)")
    failed = [r.name for r in results if not r.ok]
    if failed:
        # Going on would let something create empty databases over a replica that has data.
        raise EnvironmentProblem(f"restore of {', '.join(failed)} failed; nothing was created (see above)")
    return results


def restore_then_create(settings: Settings, ls: litestream.Litestream, log: Log) -> list[RestoreResult]:
    """Restore what the replica holds and the disk lacks; then, the listing having shown the replica
    holds no global DB if it is still missing, create it. Raises as restore_missing does."""
    results = restore_missing(settings, ls, log)
    if not settings.global_db.exists():
        log(f"the replica holds no global database: creating {settings.global_db}")
        ensure_global(settings)
    return results


def prepare_data_dir(settings: Settings, log: Log) -> list[RestoreResult]:
    """Before migrating: restore what the replica holds, then create the global DB only if it holds none.

    When the replica cannot be listed, nothing is created: an existing data dir is migrated as it is,
    a missing global DB is refused with the reason.
    """
    ensure_data_dir(settings)
    ls = litestream.Litestream.from_settings(settings)
    ls.replication  # a bad litestream.yml stops here; a missing binary or replica is handled below
    try:
        return restore_then_create(settings, ls, log)
    except EnvironmentProblem as exc:
        if not settings.global_db.exists():
            raise EnvironmentProblem(
                f"cannot check the replica ({exc}); not creating {settings.global_db}: the replica may hold it. "
                f"Fix the replica settings (edgehost doctor) and run this again") from None
        log(f"warning: cannot check the replica ({exc}); migrating the databases on disk only")
        return []


def check_new_property(settings: Settings, slug: str) -> None:
    """Refuse to create a property whose database the replica already holds (or when it cannot be asked)."""
    layout.check_slug(slug)
    repl = litestream.Litestream.from_settings(settings).replication
    try:
        held = slug in replica_keys(settings, repl.tenants_root, repl.global_entry.replica_url)
    except EdgehostError as exc:
        raise EnvironmentProblem(f"cannot check the replica before creating {slug!r} ({exc}); "
                                 f"a property the replica holds must be restored, not created") from None
    if held:
        raise HeldByReplica(f"property {slug!r} already exists in the replica ({settings.replica_url}); "
                            f"bring it back with: edgehost restore {slug} --to {settings.data_dir}")


REPLICA_MARKER = "replica-url"


def forget_state_of_old_replica(settings: Settings, log: Log) -> list[Path]:
    """After the replica changed (file -> S3, another bucket or endpoint), move each database's
    Litestream state aside before litestream starts; returns where each one went.

    Litestream 0.5.17 keeps, beside each database, the LTX files it has uploaded to *its* replica.
    Against a new replica that state makes it look for early LTX files it already pruned
    ("LTX file is missing ... litestream reset") and stop replicating that database while it still
    says "replicating". Without the state it takes a fresh snapshot into the new replica. The old
    replica keeps the old history; the moved state is kept under `_replaced/`, never deleted.
    """
    from datetime import datetime, timezone

    from edgehost.ops.restore import litestream_meta_dir

    marker = settings.state_dir / REPLICA_MARKER
    current = f"{settings.replica_url} {settings.s3_endpoint}".strip()
    previous = marker.read_text().strip() if marker.exists() else ""
    moved: list[Path] = []
    if previous and previous != current:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        keep = settings.data_dir / "_replaced" / f"{stamp}-replica-switch"
        for ref in layout.local_databases(settings):
            meta = litestream_meta_dir(ref.path)
            if meta.exists():
                target = keep / ref.relpath
                target.parent.mkdir(parents=True, exist_ok=True)
                meta.rename(target.parent / meta.name)
                moved.append(target.parent / meta.name)
        log(f"the replica changed ({previous.split()[0]} -> {settings.replica_url}): litestream's local state of "
            f"{len(moved)} database(s) moved to {keep}; each starts with a fresh snapshot in the new replica")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(current + "\n")
    return moved
