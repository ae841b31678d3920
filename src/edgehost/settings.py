"""The kit's own small settings: where things live, how the portal runs, the restart policy.

Sources, lowest to highest priority: built-in defaults, ``edgehost.toml`` in the kit's home,
the env file (mode 0600, secrets live there), the process environment.  Facts Litestream
already knows (which databases, where they replicate) stay in ``litestream.yml``.
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from dotenv import dotenv_values

from edgehost.errors import BadInput

SETTINGS_FILE = "edgehost.toml"
DEFAULT_ENV_FILE = "edgehost.env"
R2_ENDPOINT = "https://{account}.r2.cloudflarestorage.com"

# Names of secrets: never printed, never put in argv or generated files.
SECRET_NAMES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "LITESTREAM_ACCESS_KEY_ID",
        "LITESTREAM_SECRET_ACCESS_KEY",
        "TUNNEL_TOKEN",
        "CLOUDFLARE_API_TOKEN",
    }
)


@dataclass(frozen=True)
class RestartPolicy:
    """How the supervisor restarts a crashed service."""

    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    healthy_after: float = 30.0  # running this long resets the backoff
    crash_loop_failures: int = 5
    crash_loop_window: float = 60.0
    exit_on_failure: bool = True  # a crash-looping service stops the supervisor (non-zero exit)


@dataclass(frozen=True)
class PortalSettings:
    command: tuple[str, ...] = ()  # empty: the reference portal (`edgehost portal`)
    host: str = "127.0.0.1"
    port: int = 8080
    stop_timeout: float = 10.0


@dataclass(frozen=True)
class TunnelSettings:
    enabled: bool = False
    config: Path = Path("cloudflared/config.yml")
    binary: str = "cloudflared"
    metrics_port: int = 20241


@dataclass(frozen=True)
class Settings:
    """Everything the kit needs to know, resolved to absolute paths."""

    home: Path
    data_dir: Path
    state_dir: Path
    log_dir: Path
    litestream_config: Path
    replica_url: str
    s3_endpoint: str = ""
    s3_region: str = ""
    global_db_name: str = "honestcam-study.db"
    property_db_name: str = "honestcam.db"
    env_file: Path | None = None
    lag_alert_seconds: float = 60.0
    metrics_port: int = 9464
    litestream_stop_timeout: float = 45.0
    lease_renew_seconds: float = 300.0  # the writer lease is rewritten this often (one PUT)
    lease_ttl_seconds: float = 900.0  # a lease not renewed for this long may be taken by another machine
    portal: PortalSettings = field(default_factory=PortalSettings)
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    # The merged environment for children: process env over the env file. Holds secrets.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def global_db(self) -> Path:
        return self.data_dir / self.global_db_name

    @property
    def litestream_socket(self) -> Path:
        return self.state_dir / "litestream.sock"

    @property
    def supervisor_socket(self) -> Path:
        return self.state_dir / "supervisor.sock"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "edgehost.pid"

    @property
    def kit_db(self) -> Path:
        return self.state_dir / "edgehost-state.db"

    @property
    def portal_url(self) -> str:
        return f"http://{self.portal.host}:{self.portal.port}"

    @property
    def is_s3(self) -> bool:
        return self.replica_url.startswith("s3://")

    def portal_argv(self) -> list[str]:
        if self.portal.command:
            return list(self.portal.command)
        return [sys.executable, "-m", "edgehost.portal"]

    def litestream_env(self) -> dict[str, str]:
        """The variables litestream.yml refers to, as the kit resolved them."""
        return {
            "EDGEHOST_DATA_DIR": str(self.data_dir),
            "EDGEHOST_GLOBAL_DB_NAME": self.global_db_name,
            "EDGEHOST_PROPERTY_DB_NAME": self.property_db_name,
            "EDGEHOST_REPLICA_URL": self.replica_url,
            "EDGEHOST_S3_ENDPOINT": self.s3_endpoint,
            "EDGEHOST_S3_REGION": self.s3_region,
            "EDGEHOST_S3_FORCE_PATH_STYLE": "true" if self.s3_endpoint else "",
            "EDGEHOST_LITESTREAM_SOCKET": str(self.litestream_socket),
        }


_TOP_KEYS = {
    "data_dir",
    "state_dir",
    "log_dir",
    "litestream_config",
    "env_file",
    "replica_url",
    "s3_endpoint",
    "s3_region",
    "global_db_name",
    "property_db_name",
    "lag_alert_seconds",
    "metrics_port",
    "litestream_stop_timeout",
    "lease_renew_seconds",
    "lease_ttl_seconds",
    "portal",
    "tunnel",
    "restart",
}


def read_env_file(path: Path) -> dict[str, str]:
    """Read a KEY=VALUE env file, refusing one that others can read (it holds secrets)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadInput(f"{path}: env file not found") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInput(
            f"{path}: env file is mode {stat.S_IMODE(st.st_mode):04o}; it holds secrets, "
            f"run: chmod 600 {path}"
        )
    try:
        values = dotenv_values(path)
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return {k: v for k, v in values.items() if v is not None}


def _section(raw: dict[str, Any], name: str, cls: type, source: Path) -> dict[str, Any]:
    section = raw.get(name, {})
    if not isinstance(section, dict):
        raise BadInput(f"{source}: [{name}] must be a table")
    known = {f.name for f in fields(cls)}
    for key in section:
        if key not in known:
            raise BadInput(f"{source}: unknown key '{name}.{key}' (known: {', '.join(sorted(known))})")
    return dict(section)


def _number(value: Any, key: str, source: str, kind: type = float) -> Any:
    try:
        result = kind(value)
    except (TypeError, ValueError):
        raise BadInput(f"{source}: '{key}' must be a number, got {value!r}") from None
    if result < 0:
        raise BadInput(f"{source}: '{key}' must not be negative, got {value!r}")
    return result


def load_settings(home: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve the kit's settings from defaults, edgehost.toml, the env file and the environment."""
    process_env = dict(os.environ if environ is None else environ)
    home = Path(home or process_env.get("EDGEHOST_HOME") or Path.cwd()).resolve()

    settings_path = Path(process_env.get("EDGEHOST_SETTINGS") or home / SETTINGS_FILE)
    raw: dict[str, Any] = {}
    if settings_path.exists():
        try:
            raw = tomllib.loads(settings_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise BadInput(f"{settings_path}: invalid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise BadInput(f"{settings_path}: not UTF-8 text (byte {exc.start})") from None
        for key in raw:
            if key not in _TOP_KEYS:
                raise BadInput(f"{settings_path}: unknown key '{key}'")
    elif "EDGEHOST_SETTINGS" in process_env:
        raise BadInput(f"{settings_path}: settings file not found (from EDGEHOST_SETTINGS)")

    def resolve(p: str | Path) -> Path:
        p = Path(os.path.expanduser(str(p)))
        return p if p.is_absolute() else home / p

    # The env file may carry settings too; the real environment wins over it.
    env_file_value = process_env.get("EDGEHOST_ENV_FILE") or raw.get("env_file")
    env_file: Path | None = resolve(env_file_value) if env_file_value else None
    if env_file is None and (home / DEFAULT_ENV_FILE).exists():
        env_file = home / DEFAULT_ENV_FILE
    file_env = read_env_file(env_file) if env_file else {}
    env = {**file_env, **process_env}

    def pick(env_name: str, key: str, default: Any = None) -> Any:
        if env.get(env_name):
            return env[env_name]
        return raw.get(key, default)

    data_dir = resolve(pick("EDGEHOST_DATA_DIR", "data_dir", "data"))
    state_dir = resolve(pick("EDGEHOST_STATE_DIR", "state_dir", "state"))
    log_dir = resolve(pick("EDGEHOST_LOG_DIR", "log_dir", state_dir / "logs"))
    litestream_config = resolve(pick("EDGEHOST_LITESTREAM_CONFIG", "litestream_config", "litestream.yml"))

    replica_url = pick("EDGEHOST_REPLICA_URL", "replica_url", "")
    s3_endpoint = pick("EDGEHOST_S3_ENDPOINT", "s3_endpoint", "")
    s3_region = pick("EDGEHOST_S3_REGION", "s3_region", "")
    if not replica_url and env.get("R2_BUCKET"):
        account = env.get("R2_ACCOUNT_ID", "")
        if not account:
            raise BadInput("R2_BUCKET is set but R2_ACCOUNT_ID is not: both are needed for an R2 replica")
        prefix = env.get("R2_PREFIX", "edgehost").strip("/")
        replica_url = f"s3://{env['R2_BUCKET']}/{prefix}" if prefix else f"s3://{env['R2_BUCKET']}"
        s3_endpoint = s3_endpoint or R2_ENDPOINT.format(account=account)
        s3_region = s3_region or "auto"
    if not replica_url:
        replica_url = (data_dir.parent / "replica").as_uri()
    replica_url = replica_url.rstrip("/")
    if replica_url.startswith("s3://"):
        bucket = replica_url[len("s3://") :].split("/", 1)[0]
        if len(bucket) < 3:
            raise BadInput(f"replica URL {replica_url}: S3 bucket names need at least 3 characters")
        s3_region = s3_region or "us-east-1"
    elif replica_url.startswith("file://"):
        pass
    elif "://" not in replica_url:
        replica_url = resolve(replica_url).as_uri()
    else:
        raise BadInput(f"replica URL {replica_url}: only file:// and s3:// (R2 and any S3 endpoint) are supported")

    for name_key in ("global_db_name", "property_db_name"):
        value = str(pick(f"EDGEHOST_{name_key.upper()}", name_key, Settings.__dataclass_fields__[name_key].default))
        if not value or "/" in value or value.startswith("."):
            raise BadInput(f"{name_key} {value!r}: must be a plain file name")
        raw[name_key] = value
    if raw["global_db_name"] == raw["property_db_name"]:
        raise BadInput("global_db_name and property_db_name must differ")

    portal_raw = _section(raw, "portal", PortalSettings, settings_path)
    if env.get("EDGEHOST_PORTAL_PORT"):
        portal_raw["port"] = env["EDGEHOST_PORTAL_PORT"]
    if env.get("EDGEHOST_PORTAL_HOST"):
        portal_raw["host"] = env["EDGEHOST_PORTAL_HOST"]
    if env.get("EDGEHOST_PORTAL_COMMAND"):
        portal_raw["command"] = env["EDGEHOST_PORTAL_COMMAND"].split()
    if "port" in portal_raw:
        portal_raw["port"] = _number(portal_raw["port"], "portal.port", str(settings_path), int)
        if not 0 < portal_raw["port"] < 65536:
            raise BadInput(f"portal.port {portal_raw['port']}: must be between 1 and 65535")
    if "command" in portal_raw:
        cmd = portal_raw["command"]
        if isinstance(cmd, str):
            cmd = cmd.split()
        if not isinstance(cmd, list) or not all(isinstance(c, str) for c in cmd):
            raise BadInput(f"{settings_path}: portal.command must be a list of strings")
        portal_raw["command"] = tuple(cmd)
    portal = PortalSettings(**portal_raw)

    tunnel_raw = _section(raw, "tunnel", TunnelSettings, settings_path)
    if env.get("EDGEHOST_TUNNEL_CONFIG"):
        tunnel_raw["config"] = env["EDGEHOST_TUNNEL_CONFIG"]
        tunnel_raw.setdefault("enabled", True)
    if "config" in tunnel_raw:
        tunnel_raw["config"] = resolve(tunnel_raw["config"])
    else:
        tunnel_raw["config"] = resolve(TunnelSettings.config)
    tunnel = TunnelSettings(**tunnel_raw)

    restart_raw = _section(raw, "restart", RestartPolicy, settings_path)
    for key, value in list(restart_raw.items()):
        if key == "exit_on_failure":
            restart_raw[key] = bool(value)
        else:
            kind = int if key == "crash_loop_failures" else float
            restart_raw[key] = _number(value, f"restart.{key}", str(settings_path), kind)
    restart = RestartPolicy(**restart_raw)

    lease_renew = _number(pick("EDGEHOST_LEASE_RENEW_SECONDS", "lease_renew_seconds", 300.0), "lease_renew_seconds", str(settings_path))
    lease_ttl = _number(pick("EDGEHOST_LEASE_TTL_SECONDS", "lease_ttl_seconds", 900.0), "lease_ttl_seconds", str(settings_path))
    if not (0 < lease_renew < lease_ttl) or lease_ttl != lease_ttl or lease_ttl == float("inf"):
        raise BadInput(f"{settings_path}: lease_renew_seconds ({lease_renew}) must be above 0 and below "
                       f"lease_ttl_seconds ({lease_ttl})")

    return Settings(
        home=home,
        data_dir=data_dir,
        state_dir=state_dir,
        log_dir=log_dir,
        litestream_config=litestream_config,
        replica_url=replica_url,
        s3_endpoint=s3_endpoint,
        s3_region=s3_region,
        global_db_name=raw["global_db_name"],
        property_db_name=raw["property_db_name"],
        env_file=env_file,
        lag_alert_seconds=_number(pick("EDGEHOST_LAG_ALERT_SECONDS", "lag_alert_seconds", 60.0), "lag_alert_seconds", str(settings_path)),
        metrics_port=_number(pick("EDGEHOST_METRICS_PORT", "metrics_port", 9464), "metrics_port", str(settings_path), int),
        litestream_stop_timeout=_number(raw.get("litestream_stop_timeout", 45.0), "litestream_stop_timeout", str(settings_path)),
        lease_renew_seconds=lease_renew,
        lease_ttl_seconds=lease_ttl,
        portal=portal,
        tunnel=tunnel,
        restart=restart,
        environ=env,
    )
