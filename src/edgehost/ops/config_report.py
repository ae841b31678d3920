"""What `edgehost config check` reports: the settings and litestream.yml, resolved and cross-checked."""

from __future__ import annotations

from dataclasses import dataclass, field

import re

from edgehost.engine import layout, litestream
from edgehost.settings import DEFAULT, SECRET_KEYS, SECRET_NAMES, Settings, keys, load_settings

# Values left from an example file or a placeholder: the replica would fail at the first upload.
EXAMPLE_VALUES = {"0123456789abcdef0123456789abcdef", "my-portal-backups", "changeme", "change-me", "xxx", "todo"}
_PLACEHOLDER_RE = re.compile(r"^<.*>$|^your[-_ ]|^example|\.\.\.", re.I)
R2_KEYS = ("R2_ACCOUNT_ID", "R2_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass
class SettingLine:
    key: str
    value: str  # secrets never appear: only whether they are set
    source: str  # default, edgehost.toml, env file, environment (or R2_* for a replica URL built from them)


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
    settings: list[SettingLine] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def config_report(settings: Settings | None = None) -> ConfigReport:
    """Load everything the kit reads and say which databases exist and where each replicates."""
    settings = settings or load_settings()
    repl = litestream.Litestream.from_settings(settings).replication
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
    report.settings = setting_lines(settings)
    report.warnings = replica_warnings(settings)
    refs = [layout.global_db(settings)] + [layout.property_db(settings, s) for s in layout.local_slugs(settings)]
    for ref in refs:
        report.databases.append(DatabaseLine(ref.label, str(ref.path), repl.replica_url(ref), ref.path.exists()))
    return report


def setting_lines(settings: Settings) -> list[SettingLine]:
    """Every key's resolved value and the source that won it."""
    lines = []
    for key, _ in keys():
        value: object = settings
        for part in key.split("."):
            value = getattr(value, part)
        source = settings.source_of(key)
        if key in ("replica_url", "s3_endpoint", "s3_region") and source == DEFAULT and settings.environ.get("R2_BUCKET"):
            source = "R2_* variables"
        text = " ".join(value) if isinstance(value, tuple) and key == "portal.command" else str(value if value is not None else "")
        if key in SECRET_KEYS and text:
            text = "(a secret)"
        lines.append(SettingLine(key, text, source))
    return lines


def replica_warnings(settings: Settings) -> list[str]:
    """R2/S3 settings that are empty or still an example value: the first upload would fail."""
    env = settings.environ
    out = []
    if settings.is_s3:
        for name in R2_KEYS if env.get("R2_BUCKET") else R2_KEYS[2:]:
            value = env.get(name, "").strip()
            if not value:
                out.append(f"{name} is empty: the replica {settings.replica_url} cannot be reached without it")
            elif value.lower() in EXAMPLE_VALUES or _PLACEHOLDER_RE.search(value):
                shown = "(a secret)" if name in SECRET_NAMES else repr(value)
                out.append(f"{name} looks like a placeholder {shown}: fill in the real value")
        out.append(f"the bucket must already exist: the kit never creates it (`edgehost doctor` checks it)")
    return out
