"""What `edgehost config check` reports: the settings and litestream.yml, resolved and cross-checked."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgehost.engine import layout, litestream
from edgehost.settings import Settings, load_settings


@dataclass
class DatabaseLine:
    name: str
    path: str
    replica_url: str
    exists: bool


@dataclass
class ConfigReport:
    home: str
    settings_file: str | None
    env_file: str | None
    litestream_config: str
    data_dir: str
    replica_root: str
    replica_kind: str
    snapshot_retention_hours: float
    databases: list[DatabaseLine] = field(default_factory=list)
    properties_watch: str = ""


def config_report(settings: Settings | None = None) -> ConfigReport:
    """Load everything the kit reads and say which databases exist and where each replicates."""
    settings = settings or load_settings()
    repl = litestream.replication(settings)
    settings_file = settings.home / "edgehost.toml"
    report = ConfigReport(
        home=str(settings.home),
        settings_file=str(settings_file) if settings_file.exists() else None,
        env_file=str(settings.env_file) if settings.env_file else None,
        litestream_config=str(repl.config.source),
        data_dir=str(settings.data_dir),
        replica_root=settings.replica_url,
        replica_kind="s3" if settings.is_s3 else "file",
        snapshot_retention_hours=repl.config.snapshot_retention.total_seconds() / 3600,
        properties_watch=f"{repl.property_entry.dir}/*/{repl.property_entry.pattern} -> {repl.tenants_root}/<slug>/{repl.property_entry.pattern}",
    )
    refs = [layout.global_db(settings)] + [layout.property_db(settings, s) for s in layout.local_slugs(settings)]
    for ref in refs:
        report.databases.append(DatabaseLine(ref.label, str(ref.path), repl.replica_url(ref), ref.path.exists()))
    return report
