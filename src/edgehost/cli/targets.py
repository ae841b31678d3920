"""Which databases a command names: slugs, --global or --all, checked against the replica."""

from __future__ import annotations

from edgehost.engine import layout, litestream
from edgehost.engine.replica import replica_keys
from edgehost.errors import BadInput
from edgehost.settings import Settings


def select_keys(settings: Settings, repl: litestream.Replication, slugs: list[str], global_db: bool,
                all_dbs: bool, available: list[str] | None = None, where: str = "") -> list[str]:
    """The databases a command names, checked against what the replica holds (`available`, when
    already listed; `where` names the replica or mirror in errors)."""
    for slug in slugs:
        layout.check_slug(slug)
    if all_dbs and (slugs or global_db):
        raise BadInput("--all already means every database: drop the slugs and --global")
    if not (slugs or global_db or all_dbs):
        raise BadInput("say which databases: one or more slugs, --global, or --all")
    if available is None:
        available = replica_keys(settings, repl.tenants_root, repl.global_entry.replica_url)
    where = where or f"the replica at {settings.replica_url}"
    if all_dbs:
        if not available:
            raise BadInput(f"{where} holds no databases")
        return available
    wanted = ([layout.GLOBAL] if global_db else []) + list(dict.fromkeys(slugs))
    missing = [k for k in wanted if k not in available]
    if missing:
        names = ", ".join("the global DB" if k == layout.GLOBAL else repr(k) for k in missing)
        raise BadInput(f"unknown in {where}: {names}")
    return wanted
