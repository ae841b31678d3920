"""The kit's own small settings: one typed model, every key with its type, range, default and env name.

Sources, lowest to highest priority: built-in defaults, ``edgehost.toml`` in the kit's home (or
EDGEHOST_SETTINGS), the env file (mode 0600, secrets live there), the process environment.  Facts
Litestream already knows (which databases, where they replicate) stay in ``litestream.yml``.

`load_settings` is the one entry point.  The model is pydantic-settings' `BaseSettings`; its sources
are the three layers above, each turned into the model's nested shape through the env names declared
on the fields (`env("EDGEHOST_PORTAL_PORT")`).  A bad value is one line naming where it came from.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import stat
import sys
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Iterator, Mapping

from dotenv import dotenv_values
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, StrictBool, StrictStr,
                      ValidationError, field_validator, model_validator)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edgehost.errors import BadInput

SETTINGS_FILE = "edgehost.toml"
DEFAULT_ENV_FILE = "edgehost.env"
R2_ENDPOINT = "https://{account}.r2.cloudflarestorage.com"
MiB = 1 << 20

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
        # Alert channels: a topic URL, a webhook URL or a ping URL is as good as a key to whoever holds it.
        "EDGEHOST_NTFY_URL",
        "EDGEHOST_NTFY_TOKEN",
        "EDGEHOST_WEBHOOK_URL",
        "EDGEHOST_HEALTHCHECKS_URL",
    }
)

# Where each source's values are named in messages and in `config check`.
DEFAULT, TOML, ENV_FILE, ENVIRONMENT = "default", "edgehost.toml", "env file", "environment"


def env(name: str) -> dict[str, Any]:
    """Field metadata: the environment variable (process env or env file) that sets this key."""
    return {"env": name}


def _words(value: Any) -> Any:
    """A command given as one string is split as a shell would (quotes keep spaces)."""
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ValueError(f"cannot split into words: {exc}") from None
    return value


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return value


def _number(value: Any) -> Any:
    # TOML's true would otherwise pass as 1: a boolean is never a number or a duration here.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    if isinstance(value, float) and not math.isfinite(value) or \
            isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise ValueError("must be a finite number")
    return value


def _path(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return value


Seconds = Annotated[float, BeforeValidator(_number), Field(gt=0, allow_inf_nan=False)]
LEASE_MAX_SECONDS = 86400.0
LeaseSeconds = Annotated[float, BeforeValidator(_number), Field(gt=0, le=LEASE_MAX_SECONDS, allow_inf_nan=False)]
Port = Annotated[int, BeforeValidator(_number), Field(ge=1, le=65535)]
Count = Annotated[int, BeforeValidator(_number), Field(ge=1)]
PathSetting = Annotated[Path, BeforeValidator(_path)]
Command = Annotated[tuple[StrictStr, ...], BeforeValidator(_words)]
Words = Annotated[tuple[StrictStr, ...], BeforeValidator(_csv)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class RestartPolicy(_Section):
    """How the supervisor restarts a crashed service."""

    initial_backoff: Seconds = 1.0
    max_backoff: Seconds = 60.0
    healthy_after: Seconds = 30.0  # running this long resets the backoff
    crash_loop_failures: Count = 5
    crash_loop_window: Seconds = 60.0
    exit_on_failure: StrictBool = True  # a crash-looping litestream stops the supervisor (non-zero exit)


class PortalSettings(_Section):
    command: Command = Field((), json_schema_extra=env("EDGEHOST_PORTAL_COMMAND"))  # empty: the reference portal
    host: StrictStr = Field("127.0.0.1", json_schema_extra=env("EDGEHOST_PORTAL_HOST"))
    port: Port = Field(8080, json_schema_extra=env("EDGEHOST_PORTAL_PORT"))
    stop_timeout: Seconds = 10.0
    max_body_bytes: Annotated[int, BeforeValidator(_number), Field(ge=1024)] = Field(MiB, json_schema_extra=env("EDGEHOST_PORTAL_MAX_BODY_BYTES"))


class TunnelSettings(_Section):
    enabled: StrictBool = Field(False, json_schema_extra=env("EDGEHOST_TUNNEL_ENABLED"))
    config: PathSetting = Field(Path("cloudflared/config.yml"), json_schema_extra=env("EDGEHOST_TUNNEL_CONFIG"))
    binary: StrictStr = Field("cloudflared", json_schema_extra=env("EDGEHOST_TUNNEL_BINARY"))
    metrics_port: Port = Field(20241, json_schema_extra=env("EDGEHOST_TUNNEL_METRICS_PORT"))


class AlertSettings(_Section):
    """Where alerts go and when they fire (docs/alerts.md). The channel URLs and the token are secrets:
    set them in the env file (0600) or the environment."""

    ntfy_url: StrictStr = Field("", json_schema_extra=env("EDGEHOST_NTFY_URL"))  # https://ntfy.sh/<topic>
    ntfy_token: StrictStr = Field("", json_schema_extra=env("EDGEHOST_NTFY_TOKEN"))
    webhook_url: StrictStr = Field("", json_schema_extra=env("EDGEHOST_WEBHOOK_URL"))  # JSON POST per notice
    healthchecks_url: StrictStr = Field("", json_schema_extra=env("EDGEHOST_HEALTHCHECKS_URL"))  # dead-man's switch
    healthchecks_every: Seconds = 60.0  # a ping (or /fail) this often
    cooldown_seconds: Annotated[float, BeforeValidator(_number), Field(ge=0, allow_inf_nan=False)] = 600.0
    check_every: Seconds = 60.0  # disk, drill and verify checks
    drill_overdue_days: Seconds = 35.0
    disk_free_min_mb: Annotated[int, BeforeValidator(_number), Field(ge=0)] = 1024  # on the data volume; 0: off
    pitr_check_every: Seconds = 3600.0  # one listing of the replica each time
    attempts: Count = 3  # tries per notice and channel
    retry_backoff_seconds: Seconds = 2.0  # doubled after each failed try

    @field_validator("ntfy_url", "webhook_url", "healthchecks_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")  # never echo the value: it is a secret
        return value


class DurableSettings(_Section):
    """Durable acknowledgements (docs/durable.md): the portal answers a write only once Litestream
    reports it in the replica; past the timeout it answers 503 (stored on this machine, not yet off it)."""

    property_dbs: StrictBool = Field(True, json_schema_extra=env("EDGEHOST_DURABLE_PROPERTY_DBS"))  # compliance_events
    global_db: StrictBool = Field(False, json_schema_extra=env("EDGEHOST_DURABLE_GLOBAL_DB"))  # study users and progress
    timeout_seconds: Seconds = Field(10.0, json_schema_extra=env("EDGEHOST_DURABLE_TIMEOUT_SECONDS"))
    batch_ms: Annotated[float, BeforeValidator(_number), Field(ge=0, le=1000, allow_inf_nan=False)] = Field(
        8.0, json_schema_extra=env("EDGEHOST_DURABLE_BATCH_MS"))  # most a sync waits for the writers the last one answered


SECRET_KEYS = frozenset({"alerts.ntfy_url", "alerts.ntfy_token", "alerts.webhook_url", "alerts.healthchecks_url"})


class AccessSettings(_Section):
    """Cloudflare Access at the origin: both team and aud, or neither (then the portal is unguarded)."""

    team: StrictStr = Field("", json_schema_extra=env("EDGEHOST_ACCESS_TEAM"))
    aud: Words = Field((), json_schema_extra=env("EDGEHOST_ACCESS_AUD"))  # comma-separated in the environment
    jwks_url: StrictStr = Field("", json_schema_extra=env("EDGEHOST_ACCESS_JWKS_URL"))  # tests, staging

    @property
    def enabled(self) -> bool:
        return bool(self.team or self.aud)


def _portal_package_migrations() -> Path:
    # A path, not an import: the kit never imports the app it supervises.
    return Path(__file__).resolve().parent / "portal" / "migrations"


class AppContract(_Section):
    """What the kit needs to know of the app it supervises (DESIGN.md, "The app contract")."""

    health_path: StrictStr = "/healthz"
    migrations_dir: Path = Field(default_factory=_portal_package_migrations)  # one folder per kind: property/, global/
    append_only: dict[StrictStr, StrictStr] = {"compliance_events": "created_at"}  # table -> column dating each row
    overwrite: dict[StrictStr, tuple[StrictStr, StrictStr]] = {  # table -> (key column, column dating the last write)
        "study_users": ("user_id", "updated_at"),
        "study_progress": ("user_id", "updated_at"),
    }
    smoke: list[StrictStr] = ["/study/users", "/study/progress", "/properties/{slug}/events"]  # GETs on the restored portal

    def migrations(self, kind: str) -> Path:
        """The numbered SQL files of a database kind ("property" or "global")."""
        return self.migrations_dir / kind

    @field_validator("health_path", "smoke")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        for path in [value] if isinstance(value, str) else value:
            if not path.startswith("/"):
                raise ValueError(f"{path!r} must start with /")
        return value


_DB_NAME_RE = re.compile(r"^[^/\x00-\x1f.][^/\x00-\x1f]*$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_layers: ContextVar["_Layers"] = ContextVar("edgehost_settings_layers")


class Settings(BaseSettings):
    """Everything the kit needs to know, resolved to absolute paths."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, validate_default=True)

    home: Path
    data_dir: PathSetting = Field(Path("data"), json_schema_extra=env("EDGEHOST_DATA_DIR"))
    state_dir: PathSetting = Field(Path("state"), json_schema_extra=env("EDGEHOST_STATE_DIR"))
    log_dir: PathSetting | None = Field(None, json_schema_extra=env("EDGEHOST_LOG_DIR"))  # default: state_dir/logs
    litestream_config: PathSetting = Field(Path("litestream.yml"), json_schema_extra=env("EDGEHOST_LITESTREAM_CONFIG"))
    env_file: Path | None = Field(None, json_schema_extra=env("EDGEHOST_ENV_FILE"))  # default: home/edgehost.env if present
    replica_url: StrictStr = Field("", json_schema_extra=env("EDGEHOST_REPLICA_URL"))  # default: file replica beside data
    s3_endpoint: StrictStr = Field("", json_schema_extra=env("EDGEHOST_S3_ENDPOINT"))
    s3_region: StrictStr = Field("", json_schema_extra=env("EDGEHOST_S3_REGION"))
    global_db_name: StrictStr = Field("honestcam-study.db", json_schema_extra=env("EDGEHOST_GLOBAL_DB_NAME"))
    property_db_name: StrictStr = Field("honestcam.db", json_schema_extra=env("EDGEHOST_PROPERTY_DB_NAME"))
    lag_alert_seconds: Seconds = Field(60.0, json_schema_extra=env("EDGEHOST_LAG_ALERT_SECONDS"))
    metrics_port: Annotated[int, BeforeValidator(_number), Field(ge=0, le=65535)] = Field(9464, json_schema_extra=env("EDGEHOST_METRICS_PORT"))  # 0: off
    # Litestream's own Prometheus metrics (`addr:` in litestream.yml), on 127.0.0.1 only; `edgehost cost`
    # reads its replica operation counters there. 0: off. A port already taken only costs the metrics:
    # litestream logs the failed listen and replicates on.
    litestream_metrics_port: Annotated[int, BeforeValidator(_number), Field(ge=0, le=65535)] = Field(9465, json_schema_extra=env("EDGEHOST_LITESTREAM_METRICS_PORT"))  # 0: off
    litestream_stop_timeout: Seconds = Field(45.0, json_schema_extra=env("EDGEHOST_LITESTREAM_STOP_TIMEOUT"))
    # At most a day (LEASE_MAX_SECONDS): a take-over waits on the holder's values, read from the lease.
    lease_renew_seconds: LeaseSeconds = Field(300.0, json_schema_extra=env("EDGEHOST_LEASE_RENEW_SECONDS"))  # one PUT each
    lease_ttl_seconds: LeaseSeconds = Field(900.0, json_schema_extra=env("EDGEHOST_LEASE_TTL_SECONDS"))  # then it may be taken
    drill_keep_reports: Count = Field(12, json_schema_extra=env("EDGEHOST_DRILL_KEEP_REPORTS"))
    portal: PortalSettings = PortalSettings()
    tunnel: TunnelSettings = TunnelSettings()
    restart: RestartPolicy = RestartPolicy()
    access: AccessSettings = AccessSettings()
    alerts: AlertSettings = AlertSettings()
    durable: DurableSettings = DurableSettings()
    app: AppContract = AppContract()

    # The merged environment for children (process env over the env file) and where each value came
    # from; set by load_settings. The environment holds secrets: never printed.
    _environ: dict[str, str] = PrivateAttr(default_factory=dict)
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        # Highest priority first: what the caller passes, the environment, the env file, edgehost.toml.
        return (init_settings, _LayerSource(settings_cls, ENVIRONMENT), _LayerSource(settings_cls, ENV_FILE),
                _LayerSource(settings_cls, TOML))

    @field_validator("global_db_name", "property_db_name")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if not _DB_NAME_RE.match(value):
            raise ValueError("must be a plain file name")
        return value

    @model_validator(mode="after")
    def _resolve(self) -> "Settings":
        if self.global_db_name == self.property_db_name:
            raise ValueError("global_db_name and property_db_name must differ")
        if self.lease_renew_seconds >= self.lease_ttl_seconds:
            raise ValueError(f"lease_renew_seconds ({self.lease_renew_seconds:g}) must be below lease_ttl_seconds "
                             f"({self.lease_ttl_seconds:g})")
        home = self.home.resolve()
        setters = {"home": home}
        for name in ("data_dir", "state_dir", "litestream_config"):
            setters[name] = _under(home, getattr(self, name))
        setters["log_dir"] = _under(home, self.log_dir) if self.log_dir else setters["state_dir"] / "logs"
        if self.env_file is not None:
            setters["env_file"] = _under(home, self.env_file)
        setters["tunnel"] = self.tunnel.model_copy(update={"config": _under(home, self.tunnel.config)})
        setters["app"] = self.app.model_copy(update={"migrations_dir": _under(home, self.app.migrations_dir)})
        setters.update(_replica(self, setters["data_dir"], home))
        for key, value in setters.items():
            object.__setattr__(self, key, value)
        return self

    # --- derived, read everywhere ---------------------------------------------------------------

    @property
    def environ(self) -> Mapping[str, str]:
        return self._environ

    @property
    def sources(self) -> Mapping[str, str]:
        """Which source set each dotted key (absent: the default)."""
        return self._sources

    def source_of(self, key: str) -> str:
        return self._sources.get(key, DEFAULT)

    @property
    def global_db(self) -> Path:
        return self.data_dir / self.global_db_name

    @property
    def litestream_socket(self) -> Path:
        return self.state_dir / "litestream.sock"

    @property
    def litestream_metrics_addr(self) -> str:
        """Where litestream serves its metrics (`addr:`), loopback only; empty when off."""
        return f"127.0.0.1:{self.litestream_metrics_port}" if self.litestream_metrics_port else ""

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
            "EDGEHOST_LITESTREAM_METRICS_ADDR": self.litestream_metrics_addr,
        }

    def with_changes(self, **changes: Any) -> "Settings":
        """A copy with some keys changed (dotted names for sections: portal.port=9000), checked again."""
        data = self.model_dump()
        for key, value in changes.items():
            section, _, leaf = key.replace("__", ".").rpartition(".")
            (data[section] if section else data)[leaf] = value
        copy = _validate(lambda: Settings.model_validate(data), self._sources)
        copy._environ, copy._sources = self._environ, self._sources
        return copy


def _under(home: Path, p: Path) -> Path:
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else home / p


def _replica(s: Settings, data_dir: Path, home: Path) -> dict[str, str]:
    """The replica URL and S3 endpoint: explicit, else from R2_* variables, else a file replica beside data/."""
    url, endpoint, region = s.replica_url, s.s3_endpoint, s.s3_region
    environ = _layers.get(None).merged if _layers.get(None) else {}
    if not url and environ.get("R2_BUCKET"):
        account = environ.get("R2_ACCOUNT_ID", "")
        if not account:
            raise ValueError("R2_BUCKET is set but R2_ACCOUNT_ID is not: both are needed for an R2 replica")
        prefix = environ.get("R2_PREFIX", "edgehost").strip("/")
        url = f"s3://{environ['R2_BUCKET'].strip()}/{prefix}" if prefix else f"s3://{environ['R2_BUCKET'].strip()}"
        endpoint = endpoint or R2_ENDPOINT.format(account=account)
        region = region or "auto"
    if not url:
        url = (data_dir.parent / "replica").as_uri()
    scheme = url.split("://", 1)[0] if "://" in url else ""
    url = url.rstrip("/")
    if scheme == "s3":
        url = url if url.startswith("s3://") else "s3://"
        bucket = url[len("s3://"):].split("/", 1)[0]
        if len(bucket) < 3:
            raise ValueError(f"replica URL {url!r}: S3 bucket names need at least 3 characters")
        if not _BUCKET_RE.match(bucket):
            raise ValueError(f"replica URL {url!r}: bucket {bucket!r} is not a valid S3 bucket name "
                             "(lowercase letters, digits, dots and hyphens)")
        region = region or "us-east-1"
    elif scheme == "file":
        if len(url) <= len("file://"):
            raise ValueError(f"replica URL {url!r}: a file:// URL needs a path")
    elif not scheme:
        url = _under(home, Path(url)).as_uri()
    else:
        raise ValueError(f"replica URL {url!r}: only file:// and s3:// (R2 and any S3 endpoint) are supported")
    return {"replica_url": url, "s3_endpoint": endpoint, "s3_region": region}


# --- the sources ------------------------------------------------------------------------------


def env_names(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[tuple[str, str, FieldInfo]]:
    """(env name, dotted key, field) for every key that an environment variable sets."""
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if "env" in extra:
            yield str(extra["env"]), prefix + name, info
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from env_names(annotation, f"{prefix}{name}.")


def keys(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted key, field) for every key of the model, sections walked."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from keys(annotation, f"{prefix}{name}.")
        elif name != "home":
            yield prefix + name, info


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _is_bool(info: FieldInfo) -> bool:
    return info.annotation is bool


class _Layers:
    """The three sources of one load, each already in the model's nested shape."""

    def __init__(self, toml: dict[str, Any], toml_path: Path, file_env: dict[str, str], env_file: Path | None,
                 process_env: dict[str, str]):
        self.toml, self.toml_path, self.env_file = toml, toml_path, env_file
        self.merged = {**file_env, **process_env}
        self.file_env = self._from_env(file_env, f"{env_file}")
        self.process_env = self._from_env(process_env, "the environment")
        if process_env.get("EDGEHOST_TUNNEL_CONFIG") or file_env.get("EDGEHOST_TUNNEL_CONFIG"):
            # Naming a tunnel config in the environment turns the tunnel on unless told otherwise.
            layer = self.process_env if process_env.get("EDGEHOST_TUNNEL_CONFIG") else self.file_env
            if "enabled" not in self.toml.get("tunnel", {}) and not self.merged.get("EDGEHOST_TUNNEL_ENABLED"):
                layer.setdefault("tunnel", {})["enabled"] = True

    @staticmethod
    def _from_env(values: Mapping[str, str], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, key, info in env_names():
            value = values.get(name)
            if not value:  # an empty variable means "not set", as before
                continue
            if _is_bool(info):
                word = value.strip().lower()
                if word not in _BOOL_WORDS:
                    raise BadInput(f"{where}: {name}={value!r}: must be true or false")
                value = _BOOL_WORDS[word]
            section, _, leaf = key.rpartition(".")
            (out.setdefault(section, {}) if section else out)[leaf] = value
        return out

    def layer(self, name: str) -> dict[str, Any]:
        return {TOML: self.toml, ENV_FILE: self.file_env, ENVIRONMENT: self.process_env}[name]

    def where(self, name: str) -> str:
        return {TOML: str(self.toml_path), ENV_FILE: str(self.env_file), ENVIRONMENT: "the environment"}[name]

    def winner(self, key: str) -> str | None:
        for name in (ENVIRONMENT, ENV_FILE, TOML):
            node: Any = self.layer(name)
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    break
                node = node[part]
            else:
                return name
        return None

    def sources(self) -> dict[str, str]:
        return {key: won for key, _ in keys() if (won := self.winner(key))}


class _LayerSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], name: str):
        super().__init__(settings_cls)
        self.name = name

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ hands over the whole layer

    def __call__(self) -> dict[str, Any]:
        layers = _layers.get(None)
        return layers.layer(self.name) if layers else {}


# --- loading ----------------------------------------------------------------------------------


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


def settings_file(home: Path, environ: Mapping[str, str]) -> Path:
    return Path(environ.get("EDGEHOST_SETTINGS") or home / SETTINGS_FILE)


def read_settings_file(path: Path, named: bool = False) -> dict[str, Any]:
    """edgehost.toml as a dict ({} when absent, unless EDGEHOST_SETTINGS named it)."""
    if not path.exists():
        if named:
            raise BadInput(f"{path}: settings file not found (from EDGEHOST_SETTINGS)")
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: invalid TOML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start})") from None


def env_file_path(home: Path, environ: Mapping[str, str], toml: Mapping[str, Any] | None = None) -> Path | None:
    """The env file the kit reads: EDGEHOST_ENV_FILE, else edgehost.toml's env_file, else home/edgehost.env if present."""
    if toml is None:
        toml = read_settings_file(settings_file(home, environ), "EDGEHOST_SETTINGS" in environ)
    value = environ.get("EDGEHOST_ENV_FILE") or toml.get("env_file")
    if value:
        if not isinstance(value, str):
            raise BadInput(f"{settings_file(home, environ)}: env_file must be a string (got {value!r})")
        return _under(home, Path(value))
    default = home / DEFAULT_ENV_FILE
    return default if default.exists() else None


_PHRASES = {  # pydantic's error types in the words the rest of the kit uses
    "float_parsing": "must be a number", "float_type": "must be a number", "int_parsing": "must be a whole number",
    "int_type": "must be a whole number", "int_from_float": "must be a whole number", "finite_number": "must be a finite number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false", "string_type": "must be a string",
    "greater_than": "must be above {gt}", "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}", "less_than": "must be below {lt}", "path_type": "must be a path (a string)",
    "model_type": "must be a table", "dict_type": "must be a table", "list_type": "must be a list",
    "tuple_type": "must be a list", "missing": "is required",
}


def _message(err: dict[str, Any], layers: _Layers) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    phrase = _PHRASES.get(err["type"])  # only our own phrases are templates: a message may quote "{HOME}"
    text = phrase.format(**err.get("ctx") or {}) if phrase else err["msg"].removeprefix("Value error, ")
    if not loc:  # a model-level check
        return " ".join(text.split())
    won = layers.winner(".".join(str(p) for p in err["loc"][:2] if isinstance(p, str)))
    where = layers.where(won) if won else "settings"
    env_name = next((n for n, k, _ in env_names() if k == loc), None)
    name = env_name if won in (ENV_FILE, ENVIRONMENT) and env_name else loc
    if err["type"] == "extra_forbidden":
        section = loc.rpartition(".")[0]
        model = Settings if not section else Settings.model_fields[section].annotation
        known = ", ".join(sorted(model.model_fields) if model is not Settings else
                          sorted(k for k in Settings.model_fields if k != "home"))
        return f"{where}: unknown key '{loc}' (known: {known})"
    got = "" if loc in SECRET_KEYS else f" (got {err.get('input')!r})"  # a secret is never echoed
    return " ".join(f"{where}: {name}: {text}{got}".split())


def _validate(build, sources) -> Settings:
    try:
        return build()
    except ValidationError as exc:
        layers = _layers.get(None) or _Layers({}, Path(SETTINGS_FILE), {}, None, {})
        raise BadInput(_message(exc.errors()[0], layers)) from None


def load_settings(home: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve the kit's settings from defaults, edgehost.toml, the env file and the environment."""
    process_env = dict(os.environ if environ is None else environ)
    home = Path(home or process_env.get("EDGEHOST_HOME") or Path.cwd()).resolve()
    toml_path = settings_file(home, process_env)
    toml = read_settings_file(toml_path, "EDGEHOST_SETTINGS" in process_env)
    env_file = env_file_path(home, process_env, toml)
    file_env = read_env_file(env_file) if env_file else {}
    layers = _Layers(toml, toml_path, file_env, env_file, process_env)
    token = _layers.set(layers)
    try:
        settings = _validate(lambda: Settings(home=home, env_file=env_file), None)
    finally:
        _layers.reset(token)
    settings._environ = layers.merged
    settings._sources = layers.sources()
    return settings


def _kind(annotation: Any) -> str:
    text = str(annotation)
    for needle, word in (("bool", "boolean"), ("dict", "table"), ("tuple", "list of strings"), ("list", "list of strings"),
                         ("Path", "path"), ("float", "number"), ("int", "integer"), ("str", "string")):
        if needle in text:
            return word
    return text


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(key, type and range, default, env name) for every key: docs/configuration.md is checked against it."""
    rows = []
    envs = {key: name for name, key, _ in env_names()}
    for key, info in keys():
        limits = [f"{op} {getattr(m, attr)}" for m in info.metadata
                  for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if getattr(m, attr, None) is not None]
        if any(getattr(m, "allow_inf_nan", None) is False for m in info.metadata):
            limits.append("finite")
        default = info.get_default(call_default_factory=True)
        if isinstance(default, Path) and default.is_absolute():
            default = "the reference portal's migrations"
        shown = "" if default in ("", (), None) else str(list(default) if isinstance(default, tuple) else default)
        rows.append((key, ", ".join([_kind(info.annotation), *limits]), shown, envs.get(key, "")))
    return rows


def reference_markdown() -> str:
    """The table of every key in docs/configuration.md."""
    lines = ["| key | type | default | environment |", "| --- | --- | --- | --- |"]
    for key, kind, default, env_name in reference_rows():
        cells = [f"`{key}`", kind, default.replace("|", "\\|"), f"`{env_name}`" if env_name else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
