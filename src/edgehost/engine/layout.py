"""Where databases live: slug rules, per-property and global paths, discovery on disk."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgehost.errors import BadInput
from edgehost.settings import Settings

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
GLOBAL = "@global"  # the key of the global DB wherever slugs and the global DB mix
RESERVED_DIRS = frozenset({"_replaced"})


def check_slug(slug: str) -> str:
    """Return the slug if valid, else raise BadInput saying what a slug may be."""
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise BadInput(
            f"invalid property slug {slug!r}: use 1-63 lowercase letters, digits and hyphens, not starting with a hyphen"
        )
    return slug


def is_slug(name: str) -> bool:
    return bool(SLUG_RE.fullmatch(name))


@dataclass(frozen=True)
class DatabaseRef:
    """One database the kit protects: the global one or a property's."""

    key: str  # a slug, or GLOBAL
    path: Path
    relpath: str  # path under the data dir and under the replica root

    @property
    def is_global(self) -> bool:
        return self.key == GLOBAL

    @property
    def label(self) -> str:
        return "global" if self.is_global else self.key


def property_db(settings: Settings, slug: str) -> DatabaseRef:
    check_slug(slug)
    rel = f"{slug}/{settings.property_db_name}"
    return DatabaseRef(slug, settings.data_dir / rel, rel)


def global_db(settings: Settings) -> DatabaseRef:
    return DatabaseRef(GLOBAL, settings.global_db, settings.global_db_name)


def ref_for(settings: Settings, key: str) -> DatabaseRef:
    return global_db(settings) if key == GLOBAL else property_db(settings, key)


def local_slugs(settings: Settings) -> list[str]:
    """Slugs whose property DB exists on disk, sorted."""
    if not settings.data_dir.is_dir():
        return []
    return sorted(
        p.parent.name
        for p in settings.data_dir.glob(f"*/{settings.property_db_name}")
        if is_slug(p.parent.name) and p.is_file()
    )


def local_databases(settings: Settings) -> list[DatabaseRef]:
    """Every database on disk: the global one first (when present), then properties by slug."""
    refs = [global_db(settings)] if settings.global_db.exists() else []
    return refs + [property_db(settings, s) for s in local_slugs(settings)]
