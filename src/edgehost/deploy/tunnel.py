"""cloudflared's config.yml: render a locally-managed tunnel config, lint any config, run the tunnel.

The kit never hides cloudflared's own format: it writes a plain config.yml a person can read and
edit, and lints configs for the traps that leave a portal reachable without Cloudflare Access.
Secrets (the tunnel credentials, tokens) never go into the config, argv or a report; only the
credentials file's path does.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence
from urllib.parse import urlsplit

import yaml

from edgehost.errors import BadInput, EnvironmentProblem
from edgehost.files import write_atomic
from edgehost.checks import Check, Level
from edgehost.settings import SECRET_NAMES, Settings
from edgehost.engine.yamlfile import read_yaml

PROTOCOLS = ("auto", "quic", "http2")
DEFAULT_PROTOCOL = "auto"
VALIDATE_TIMEOUT = 30.0
VERSION_TIMEOUT = 15.0
# The kit's setting for the port the supervisor probes (GET /ready), env EDGEHOST_TUNNEL_METRICS_PORT;
# EDGEHOST_METRICS_PORT is a different port (the kit's own Prometheus endpoint).
METRICS_PORT_SETTING = "tunnel.metrics_port"
CLOUDFLARED_FIX = ("brew install cloudflared (Linux: Cloudflare's cloudflared package), "
                   "or set binary = \"/path/to/cloudflared\" in the tunnel section of edgehost.toml")

# cloudflared reads any of its command-line flags from the config file, plus the structured keys.
# Source of truth: cloudflared's config/configuration.go and the tunnel command's flags.
TOP_LEVEL_KEYS = frozenset(
    {
        # structured
        "tunnel", "credentials-file", "ingress", "originRequest", "warp-routing",
        # connection to the edge
        "protocol", "edge-ip-version", "edge-bind-address", "region", "edge", "ha-connections",
        "retries", "max-edge-addr-retries", "grace-period", "rpc-timeout", "write-stream-timeout",
        "dial-edge-timeout", "post-quantum", "features", "quic-disable-pmtu-discovery",
        "quic-connection-level-flow-control-limit", "quic-stream-level-flow-control-limit",
        "compression-quality", "use-reconnect-token", "max-fetch-size", "cacert",
        # identity, updates and processes
        "origincert", "token-file", "name", "label", "tag", "no-autoupdate", "autoupdate-freq",
        "no-prechecks", "pidfile", "stdin-control", "management-diagnostics", "management-hostname",
        # observability
        "metrics", "metrics-update-freq", "loglevel", "transport-loglevel", "logfile", "log-directory",
        "output", "trace-output",
        # private networking
        "icmpv4-src", "icmpv6-src", "max-active-flows", "dns-resolver-addrs",
        # legacy single-origin flags (still read; ingress rules are the modern form)
        "url", "hostname", "hello-world", "socks5", "unix-socket", "bastion", "proxy-connect-timeout",
        "proxy-tls-timeout", "proxy-tcp-keepalive", "proxy-no-happy-eyeballs",
        "proxy-keepalive-connections", "proxy-keepalive-timeout", "proxy-connection-timeout",
        "proxy-expect-continue-timeout", "http-host-header", "origin-server-name", "match-sni-to-host",
        "origin-ca-pool", "no-tls-verify", "no-chunked-encoding", "http2-origin",
    }
)
# Real keys, but they hold secrets: a config file is not the place (use credentials-file / token-file).
SECRET_KEYS = frozenset(
    {"token", "credentials-contents", "api-key", "api-ca-key", "secret-id", "access-key-id", "session-token"}
)
RULE_KEYS = frozenset({"hostname", "path", "service", "originRequest"})
ORIGIN_REQUEST_KEYS = frozenset(
    {
        "connectTimeout", "tlsTimeout", "tcpKeepAlive", "noHappyEyeballs", "keepAliveConnections",
        "keepAliveTimeout", "httpHostHeader", "originServerName", "matchSNItoHost", "caPool", "noTLSVerify",
        "disableChunkedEncoding", "bastionMode", "proxyAddress", "proxyPort", "proxyType", "ipRules",
        "http2Origin", "access",
    }
)
ACCESS_KEYS = frozenset({"required", "teamName", "audTag", "environment"})
IP_RULE_KEYS = frozenset({"prefix", "ports", "allow"})
WARP_ROUTING_KEYS = frozenset({"enabled", "connectTimeout", "tcpKeepAlive", "maxActiveFlows"})

_HOSTNAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$", re.IGNORECASE)
_TEAM = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)
_AUD = re.compile(r"^[A-Za-z0-9]{16,128}$")


# ---------------------------------------------------------------------------- render


@dataclass(frozen=True)
class TunnelSpec:
    """What a locally-managed tunnel config is made of (no secrets: only the credentials file's path)."""

    tunnel_id: str
    credentials_file: Path
    hostnames: tuple[str, ...]
    team_name: str
    aud_tag: str
    portal_port: int
    metrics_port: int
    protocol: str = DEFAULT_PROTOCOL
    # The supervisor's status page (edgehost's own metrics_port, not cloudflared's) on a hostname of its own.
    status_hostname: str | None = None
    status_port: int | None = None

    def validate(self) -> None:
        """Raise BadInput naming the first field cloudflared or Access would reject."""
        try:
            uuid.UUID(self.tunnel_id)
        except ValueError:
            raise BadInput(f"tunnel id {self.tunnel_id!r}: must be the tunnel's UUID (see `cloudflared tunnel list`)") from None
        if not self.hostnames:
            raise BadInput("at least one hostname is needed")
        for host in self.hostnames:
            if not _HOSTNAME.match(host):
                raise BadInput(f"hostname {host!r}: must be a DNS name without scheme, port or path (e.g. portal.example.com)")
        if len(set(h.lower() for h in self.hostnames)) != len(self.hostnames):
            raise BadInput("hostnames must not repeat")
        if not _TEAM.match(self.team_name):
            raise BadInput(f"Access team name {self.team_name!r}: the <team> of <team>.cloudflareaccess.com")
        if not _AUD.match(self.aud_tag):
            raise BadInput("Access AUD tag: must be the application's Audience (AUD) tag, letters and digits only")
        for label, port in (("portal port", self.portal_port), ("metrics port", self.metrics_port)):
            if not 0 < port < 65536:
                raise BadInput(f"{label} {port}: must be between 1 and 65535")
        if self.portal_port == self.metrics_port:
            raise BadInput("the portal and cloudflared's metrics server need different ports")
        if self.protocol not in PROTOCOLS:
            raise BadInput(f"protocol {self.protocol!r}: must be one of {', '.join(PROTOCOLS)}")
        if self.status_hostname is not None:
            self._validate_status()

    def _validate_status(self) -> None:
        host = self.status_hostname or ""
        if not _HOSTNAME.match(host) or host.startswith("*."):
            raise BadInput(f"status hostname {host!r}: must be a DNS name without scheme, port, path or wildcard "
                           "(e.g. status.example.com)")
        if host.lower() in (h.lower() for h in self.hostnames):
            raise BadInput(f"status hostname {host!r} is also a portal hostname: give the status page its own")
        if not self.status_port:
            raise BadInput("the status page is off (metrics_port = 0 in edgehost.toml, EDGEHOST_METRICS_PORT): "
                           "set a port to publish it")
        if not 0 < self.status_port < 65536:
            raise BadInput(f"status page port {self.status_port}: must be between 1 and 65535")
        if self.status_port in (self.portal_port, self.metrics_port):
            raise BadInput(f"status page port {self.status_port} is also the portal's or cloudflared's metrics port")


def render_metrics_port(requested: int | None, setting: int) -> int:
    """The metrics port `tunnel render` writes: the kit's tunnel.metrics_port, which the supervisor probes.

    An explicit different port is refused with BadInput: the config would pass lint only to be refused
    by `edgehost up`.
    """
    if requested is None or requested == setting:
        return setting
    raise BadInput(
        f"--metrics-port {requested} is not {METRICS_PORT_SETTING} ({setting}), the port `edgehost up` probes, "
        f"so it would refuse this config: drop --metrics-port, or set metrics_port = {requested} in the tunnel "
        f"section of edgehost.toml (or EDGEHOST_TUNNEL_METRICS_PORT={requested}; EDGEHOST_METRICS_PORT "
        "is the kit's own metrics server)"
    )


STATUS_PATHS = r"^/(status)?$"  # cloudflared matches the path (a regex) without the query string

_RENDER_HEADER = """\
# cloudflared config for a locally-managed tunnel, rendered by `edgehost tunnel render`.
# Check it with `edgehost tunnel lint`. Access is enforced INSIDE each ingress rule: cloudflared
# ignores a top-level originRequest.access (cloudflared issue #784).
"""


def tunnel_config(spec: TunnelSpec) -> dict[str, Any]:
    """The config as data: one Access-guarded rule per hostname to the portal, the status page's own
    Access-guarded rule when asked, then a 404 catch-all."""
    spec.validate()

    def guarded(host: str, port: int) -> dict[str, Any]:
        # Access goes inside every rule: cloudflared ignores a top-level originRequest.access.
        return {
            "hostname": host,
            "service": f"http://127.0.0.1:{port}",  # not localhost: it may resolve to ::1
            "originRequest": {"access": {"required": True, "teamName": spec.team_name, "audTag": [spec.aud_tag]}},
        }

    rules = [guarded(host, spec.portal_port) for host in spec.hostnames]
    if spec.status_hostname:
        # Only the page: the same server's /metrics falls through to the 404 catch-all.
        status = guarded(spec.status_hostname, int(spec.status_port or 0))
        rules.append({"hostname": status.pop("hostname"), "path": STATUS_PATHS, **status})
    rules.append({"service": "http_status:404"})
    return {
        "tunnel": spec.tunnel_id,
        "credentials-file": str(spec.credentials_file),
        "protocol": spec.protocol,
        "metrics": f"127.0.0.1:{spec.metrics_port}",
        "no-autoupdate": True,  # the supervisor owns the process; no restarts behind its back
        "ingress": rules,
    }


class _ConfigDumper(yaml.SafeDumper):
    """Block YAML as people write it: nested lists indented, no anchors or aliases."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_config(spec: TunnelSpec) -> str:
    """The config as YAML text, with a short header saying where it came from."""
    body = yaml.dump(tunnel_config(spec), Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False, width=120)
    return _RENDER_HEADER + body


def write_config(text: str, path: Path, *, force: bool = False) -> None:
    """Write a rendered config, refusing to replace an existing file unless force is set."""
    if path.exists() and not force:
        raise BadInput(f"{path}: already exists; pass --force to replace it")
    write_atomic(path, text)


# ---------------------------------------------------------------------------- lint


Severity = Literal["error", "warning"]


def Finding(severity: Severity, code: str, where: str, message: str) -> Check:  # noqa: N802
    """One problem in a config, as the shared Check: `code` is its stable name (for --json), `where` a key
    path like ingress[0].service; an error fails the lint, a warning does not."""
    return Check(code, Level.FAIL if severity == "error" else Level.WARN, message, where=where)


@dataclass(frozen=True)
class IngressValidation:
    """What `cloudflared tunnel ingress validate` said about the config."""

    binary: str
    ok: bool
    returncode: int | None
    output: str


@dataclass
class LintReport:
    config: Path
    require_access: bool
    findings: list[Check] = field(default_factory=list)
    cloudflared: IngressValidation | None = None

    @property
    def errors(self) -> list[Check]:
        return [f for f in self.findings if f.level is Level.FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [f for f in self.findings if f.level is Level.WARN]

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": str(self.config),
            "ok": self.ok,
            "require_access": self.require_access,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.__dict__ for f in self.findings],
            "cloudflared": None if self.cloudflared is None else self.cloudflared.__dict__,
        }


def load_config(path: Path) -> dict[str, Any]:
    """Parse a cloudflared config file; bad YAML or a non-mapping is BadInput."""
    data = read_yaml(path, "cloudflared config")
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a cloudflared config must be a mapping of keys, not {type(data).__name__}")
    return data


def is_catch_all(rule: Mapping[str, Any]) -> bool:
    """A rule that matches every request: no path and no hostname (or `*`), as cloudflared defines it."""
    return rule.get("hostname") in (None, "", "*") and rule.get("path") in (None, "")


def lint_config(
    config: Mapping[str, Any], *, require_access: bool = True, metrics_port: int | None = None,
) -> list[Check]:
    """Every problem found in a parsed config, in file order. Pure: reads no files.

    With `metrics_port` (the kit's tunnel.metrics_port), a `metrics:` the supervisor would refuse is an
    error, reported in the supervisor's own words.
    """
    findings: list[Check] = []

    def add(severity: Severity, code: str, where: str, message: str) -> None:
        findings.append(Finding(severity, code, where, message))

    for key in config:
        if key in SECRET_KEYS:
            add("error", "secret-in-config", str(key),
                f"'{key}' puts a secret in the config file; use credentials-file (or token-file) instead")
        elif key not in TOP_LEVEL_KEYS:
            add("warning", "unknown-key", str(key), f"unknown key '{key}': cloudflared ignores it")

    tunnel_id = config.get("tunnel")
    if not tunnel_id:
        add("error", "no-tunnel-id", "tunnel",
            "no 'tunnel': the kit runs `cloudflared tunnel run` without a name, so the config must name the tunnel")
    if "credentials-file" not in config:
        add("warning", "no-credentials-file", "credentials-file",
            "no 'credentials-file': cloudflared will search ~/.cloudflared for <tunnel-id>.json")

    protocol = config.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        add("error", "bad-protocol", "protocol", f"protocol {protocol!r}: must be one of {', '.join(PROTOCOLS)}")

    if "url" in config:
        add("error", "url-with-ingress", "url", "'url' cannot be combined with ingress rules; use an ingress rule instead")

    metrics = config.get("metrics")
    if metrics is None and metrics_port is not None:
        add("error", "no-metrics", "metrics", str(metrics_port_problem(None, metrics_port)))
    elif metrics is None:
        add("warning", "no-metrics", "metrics",
            "no 'metrics' address: the supervisor cannot probe /ready; set e.g. metrics: 127.0.0.1:20241")
    else:
        try:
            host, _ = split_address(str(metrics))
        except BadInput as exc:
            add("error", "bad-metrics", "metrics", str(exc))
        else:
            if not _is_loopback_host(host):
                add("warning", "metrics-exposed", "metrics",
                    f"metrics listen on {metrics}: bind 127.0.0.1 so only this machine can read them")
            problem = None if metrics_port is None else metrics_port_problem(metrics, metrics_port)
            if problem:
                add("error", "metrics-port-mismatch", "metrics", problem)

    top_origin = config.get("originRequest")
    if top_origin is not None:
        if not isinstance(top_origin, dict):
            add("error", "bad-origin-request", "originRequest", "originRequest must be a mapping")
        else:
            if "access" in top_origin:
                add("error", "top-level-access", "originRequest.access",
                    "cloudflared ignores a top-level originRequest.access (cloudflared issue #784): "
                    "put access under each ingress rule's originRequest")
            _lint_origin_request(top_origin, "originRequest", add, check_access=False)

    warp = config.get("warp-routing")
    if isinstance(warp, dict):
        for key in warp:
            if key not in WARP_ROUTING_KEYS:
                add("warning", "unknown-key", f"warp-routing.{key}", f"unknown key '{key}' in warp-routing")

    ingress = config.get("ingress")
    if not ingress:
        add("error", "no-ingress", "ingress",
            "no ingress rules: every hostname would reach nothing (or, with 'url', everything); add rules and a catch-all")
        return findings
    if not isinstance(ingress, list) or not all(isinstance(r, dict) for r in ingress):
        add("error", "bad-ingress", "ingress", "ingress must be a list of rules (mappings)")
        return findings

    last = len(ingress) - 1
    for i, rule in enumerate(ingress):
        where = f"ingress[{i}]"
        for key in rule:
            if key not in RULE_KEYS:
                add("warning", "unknown-key", f"{where}.{key}", f"unknown key '{key}' in an ingress rule")
        catch_all = is_catch_all(rule)
        if catch_all and i != last:
            add("error", "catch-all-misplaced", where,
                "a rule matching every request must be the last one: the rules after it are never reached")
        if i == last and not catch_all:
            add("error", "catch-all-missing", where,
                "the last rule must match every request (no hostname, no path), e.g. service: http_status:404")

        hostname = rule.get("hostname")
        if hostname not in (None, "", "*"):
            hostname = str(hostname)
            if ":" in hostname:
                add("error", "hostname-port", f"{where}.hostname",
                    f"hostname {hostname!r} has a port: hostnames match the request's Host without a port")
            elif "*" in hostname[1:]:
                add("error", "bad-wildcard", f"{where}.hostname",
                    f"hostname {hostname!r}: a wildcard may only be the first label, e.g. *.example.com")

        service = rule.get("service")
        to_origin = _lint_service(service, f"{where}.service", add)

        origin_request = rule.get("originRequest")
        if origin_request is not None and not isinstance(origin_request, dict):
            add("error", "bad-origin-request", f"{where}.originRequest", "originRequest must be a mapping")
            origin_request = None
        if origin_request:
            _lint_origin_request(origin_request, f"{where}.originRequest", add, check_access=True)
        access = (origin_request or {}).get("access")
        guarded = isinstance(access, dict) and access.get("required") is True
        if require_access and to_origin and not guarded:
            add("error", "access-missing", where,
                f"rule sends {_describe(rule)} to {service} without originRequest.access.required: true; "
                "cloudflared will not check the Access token")
        if catch_all and to_origin:
            add("warning", "catch-all-to-origin", where,
                "the catch-all reaches the portal: any hostname routed to this tunnel does; prefer http_status:404")
    return findings


def _describe(rule: Mapping[str, Any]) -> str:
    if is_catch_all(rule):
        return "every request"
    return str(rule.get("hostname") or f"path {rule.get('path')}")


def _lint_service(service: Any, where: str, add: Any) -> bool:
    """Check one rule's service; True when it forwards to an origin (so Access matters)."""
    if not service or not isinstance(service, str):
        add("error", "bad-service", where, "every rule needs a service (e.g. http://127.0.0.1:8080)")
        return False
    if service.startswith("http_status:"):
        if not service[len("http_status:"):].isdigit():
            add("error", "bad-service", where, f"{service!r}: http_status needs a status code, e.g. http_status:404")
        return False
    if service.startswith(("unix:", "unix+tls:")) or service in ("hello_world", "bastion", "socks-proxy"):
        return True
    parts = urlsplit(service)
    if not parts.scheme or not parts.hostname:
        add("error", "bad-service", where, f"{service!r}: needs a scheme and a host, e.g. http://127.0.0.1:8080")
        return True
    if parts.path not in ("", "/"):
        add("error", "bad-service", where, f"{service!r}: cloudflared does not proxy to a path; drop {parts.path!r}")
    if parts.hostname.lower() == "localhost":
        add("warning", "localhost-origin", where,
            f"{service!r}: localhost may resolve to ::1 while the portal listens on 127.0.0.1; use 127.0.0.1")
    return True


def _lint_origin_request(origin: Mapping[str, Any], where: str, add: Any, *, check_access: bool) -> None:
    for key in origin:
        if key not in ORIGIN_REQUEST_KEYS:
            add("warning", "unknown-key", f"{where}.{key}", f"unknown key '{key}' in originRequest")
    for i, rule in enumerate(origin.get("ipRules") or []):
        if isinstance(rule, dict):
            for key in rule:
                if key not in IP_RULE_KEYS:
                    add("warning", "unknown-key", f"{where}.ipRules[{i}].{key}", f"unknown key '{key}' in an ipRules entry")
    access = origin.get("access")
    if access is None:
        return
    if not isinstance(access, dict):
        add("error", "bad-access", f"{where}.access", "access must be a mapping: {required, teamName, audTag}")
        return
    for key in access:
        if key not in ACCESS_KEYS:
            add("warning", "unknown-key", f"{where}.access.{key}", f"unknown key '{key}' in access")
    if not check_access:
        return
    if access.get("required") is not True:
        return  # the rule is reported as unguarded by the caller when Access is required
    if not access.get("teamName"):
        add("error", "access-no-team", f"{where}.access.teamName",
            "access.required without teamName: cloudflared cannot fetch the team's keys to check tokens")
    aud = access.get("audTag")
    if aud is None or aud == []:
        add("warning", "access-no-aud", f"{where}.access.audTag",
            "no audTag: a token for ANY Access application of the team passes; set this application's AUD tag")
    elif not isinstance(aud, list) or not all(isinstance(a, str) and a for a in aud):
        add("error", "access-aud-not-list", f"{where}.access.audTag",
            "audTag must be a list of AUD tags, e.g. audTag: [\"<aud>\"]")


def lint_file(
    path: Path,
    *,
    require_access: bool = True,
    cloudflared: str | None = "cloudflared",
    metrics_port: int | None = None,
) -> LintReport:
    """Lint a config file; when the cloudflared binary is found, also run its own ingress validation.

    Pass `metrics_port` (the kit's tunnel.metrics_port) to lint it as the supervisor will run it.
    """
    config = load_config(path)
    findings = lint_config(config, require_access=require_access, metrics_port=metrics_port)
    report = LintReport(config=path, require_access=require_access, findings=findings)
    creds = config.get("credentials-file")
    if creds:
        report.findings.extend(_lint_credentials(Path(os.path.expanduser(str(creds))), config.get("tunnel")))
    binary = shutil.which(cloudflared) if cloudflared else None
    if binary:
        report.cloudflared = run_ingress_validate(binary, path)
        if not report.cloudflared.ok:
            last_line = (report.cloudflared.output.strip().splitlines() or ["(no output)"])[-1]
            report.findings.append(Finding("error", "cloudflared-validate", "ingress",
                                           f"`cloudflared tunnel ingress validate` failed: {last_line}"))
    return report


def _lint_credentials(path: Path, tunnel_id: Any) -> list[Check]:
    if not path.exists():
        return [Finding("warning", "credentials-not-found", "credentials-file",
                        f"{path} does not exist here (fine if this config is for another machine)")]
    found: list[Check] = []
    try:
        check_credentials_file(path)
    except BadInput as exc:
        found.append(Finding("error", "credentials-mode", "credentials-file", str(exc)))
        return found
    try:
        # Only TunnelID is read; the secret in the same file is never copied anywhere.
        named = json.loads(path.read_text()).get("TunnelID")
    except (OSError, ValueError, AttributeError):
        return [Finding("error", "credentials-unreadable", "credentials-file", f"{path}: not a tunnel credentials JSON file")]
    if tunnel_id and named and str(named).lower() != str(tunnel_id).lower():
        found.append(Finding("error", "credentials-mismatch", "credentials-file",
                             f"{path} belongs to tunnel {named}, but the config names tunnel {tunnel_id}"))
    return found


def run_ingress_validate(binary: str, config_path: Path, timeout: float = VALIDATE_TIMEOUT) -> IngressValidation:
    """The seam to cloudflared: `cloudflared tunnel --config FILE ingress validate`."""
    argv = [binary, "tunnel", "--config", str(config_path), "ingress", "validate"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return IngressValidation(binary, False, None, f"timed out after {timeout:g}s")
    except OSError as exc:
        return IngressValidation(binary, False, None, f"could not run: {exc.strerror}")
    output = (done.stdout + done.stderr).strip()
    # validate prints unused-key warnings and still exits 0; only the exit code decides.
    return IngressValidation(binary, done.returncode == 0, done.returncode, output)


def check_credentials_file(path: Path) -> None:
    """Refuse a tunnel credentials file that is missing or readable by others (it holds the tunnel secret)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadInput(f"{path}: tunnel credentials file not found (see `cloudflared tunnel create`)") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{path}: tunnel credentials must be a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode not in (0o400, 0o600):
        raise BadInput(f"{path}: tunnel credentials are mode {mode:04o}; they hold the tunnel secret, run: chmod 600 {path}")


# ---------------------------------------------------------------------------- running


def check_config_for_supervisor(
    config_path: Path,
    *,
    metrics_port: int | None = None,
    require_access: bool = True,
    cloudflared: str | None = None,
) -> LintReport:
    """Preflight before running the tunnel: no lint errors, a private credentials file, the expected metrics port.

    Raises BadInput with one line naming the first problem; returns the report so warnings can be logged.
    """
    config = load_config(config_path)
    report = lint_file(config_path, require_access=require_access, cloudflared=cloudflared)
    if report.errors:
        first = report.errors[0]
        more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise BadInput(f"{config_path}: {first.where}: {first.message}{more}; see `edgehost tunnel lint`")
    creds = config.get("credentials-file")
    if not creds:
        raise BadInput(f"{config_path}: no credentials-file; the supervisor runs the tunnel from its credentials file")
    check_credentials_file(Path(os.path.expanduser(str(creds))))
    if metrics_port is not None:
        address = config.get("metrics")
        problem = metrics_port_problem(address, metrics_port)
        if problem:
            raise BadInput(f"{config_path}: {problem}")
    return report


def metrics_port_problem(address: Any, metrics_port: int) -> str | None:
    """Why the supervisor's /ready probe on `metrics_port` (tunnel.metrics_port) misses this `metrics:` value.

    None when the ports agree, or when the address cannot be parsed (lint reports that as bad-metrics).
    One sentence, shared by the supervisor's preflight, `edgehost tunnel lint` and `edgehost doctor`.
    """
    if address is not None:
        try:
            if split_address(address)[1] == metrics_port:
                return None
        except BadInput:
            return None
    return (f"metrics is {address or 'not set'}, but the supervisor probes port {metrics_port} "
            f"({METRICS_PORT_SETTING}); set metrics: 127.0.0.1:{metrics_port}")


def check_cloudflared(settings: Settings, timeout: float = VERSION_TIMEOUT) -> tuple[Path, str]:
    """The cloudflared the supervisor would run (tunnel.binary) and its version line.

    Resolved as the supervisor's child resolves it: a bare name on the PATH of the kit's environment, a
    relative path from the kit's home. Raises EnvironmentProblem with one line: not found, not
    executable, or `cloudflared --version` does not run.
    """
    name = settings.tunnel.binary
    search_path = settings.environ.get("PATH", os.defpath)
    if os.sep in name:
        path = Path(name) if Path(name).is_absolute() else settings.home / name
        if not path.exists():
            raise EnvironmentProblem(f"cloudflared not found: tunnel.binary is {path}, which does not exist")
    else:
        found = shutil.which(name, path=search_path)
        if found is None:
            candidates = [(Path(d) if d else settings.home) / name for d in search_path.split(os.pathsep)]
            present = next((p for p in candidates if p.is_file()), None)
            if present is None:
                raise EnvironmentProblem(
                    f"cloudflared not found: tunnel.binary is {name!r} and no such program is on PATH ({search_path})")
            path = present
        else:
            path = Path(found)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise EnvironmentProblem(f"cloudflared at {path} (tunnel.binary) is not an executable file")
    env = {k: v for k, v in settings.environ.items() if k not in SECRET_NAMES}
    try:
        done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=env, cwd=settings.home)
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"`{path} --version` did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise EnvironmentProblem(f"`{path} --version` cannot run: {exc.strerror or exc}") from None
    lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    if done.returncode != 0:
        detail = lines[-1] if lines else "no output"
        raise EnvironmentProblem(f"`{path} --version` exited {done.returncode}: {detail[:200]}")
    return path, (lines[0] if lines else "cloudflared (version unknown)")[:200]


def cloudflared_problem(settings: Settings, timeout: float = VERSION_TIMEOUT) -> str | None:
    """One line for the supervisor to log as a warning when the tunnel is enabled but cloudflared cannot run.

    None when the tunnel is disabled or cloudflared answers `--version`. Never a reason to stop: the
    tunnel stays down, replication goes on.
    """
    if not settings.tunnel.enabled:
        return None
    try:
        check_cloudflared(settings, timeout)
    except EnvironmentProblem as exc:
        return f"{exc}; the tunnel stays down until it is fixed: {CLOUDFLARED_FIX}"
    return None


def cloudflared_argv(binary: str, config_path: Path | str) -> list[str]:
    """The command the supervisor runs: the tunnel from its config file, in the foreground."""
    # Never `service install`: launchd would then own a second cloudflared outside the supervisor.
    return [binary, "tunnel", "--no-autoupdate", "--config", str(config_path), "run"]


def split_address(address: str | int) -> tuple[str, int]:
    """Split a listen address (`127.0.0.1:20241`, `[::1]:20241`, `:20241`, `20241`) into host and port."""
    text = str(address).strip()
    if text.isdigit():
        host, port_text = "", text
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise BadInput(f"address {text!r}: expected host:port")
        host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise BadInput(f"address {text!r}: port must be a number") from None
    if not 0 < port < 65536:
        raise BadInput(f"address {text!r}: port must be between 1 and 65535")
    return host, port


def ready_url(metrics_addr: str | int) -> str:
    """cloudflared's readiness endpoint (200 once a connection to the edge is up) for a metrics address."""
    host, port = split_address(metrics_addr)
    if not host or host in ("0.0.0.0", "::", "localhost"):
        host = "127.0.0.1"  # a wildcard bind is reachable on loopback; localhost may mean ::1
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/ready"


def metrics_address(config_path: Path) -> str | None:
    """The `metrics` address a config file sets, or None (cloudflared then picks its own port)."""
    value = load_config(config_path).get("metrics")
    if value is None:
        return None
    split_address(value)  # reject nonsense early, with the file's value in the message
    return str(value)


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hostnames_from_text(values: Sequence[str]) -> tuple[str, ...]:
    """Hostnames from repeated options and/or comma-separated lists, in order, without blanks."""
    out: list[str] = []
    for value in values:
        out.extend(h.strip() for h in value.split(",") if h.strip())
    return tuple(out)
