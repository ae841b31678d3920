"""launchd on a Mac mini: the supervisor as a LaunchDaemon, the monthly drill, log rotation, and
the one seam every launchctl call passes through.

Why a LaunchDaemon and not a LaunchAgent: an agent lives in a user's login session, so after a
power cut it waits for someone to log in. A daemon is loaded by launchd at boot, before and without
any login, and runs as the unprivileged `UserName` we give it. Only a daemon brings the portal back
on its own.

The plists are rendered with plistlib and carry XML comments saying why each key has its value;
`plistlib` and launchd ignore comments, `plutil -lint` accepts them.
"""

from __future__ import annotations

import plistlib
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgehost.deploy.deployment import (  # noqa: F401  (re-exported: callers name them launchd.*)
    DEFAULT_USER, EXIT_TIMEOUT, OPEN_FILES, SYSTEM_PATH, Deployment, Step, StepResult, default_program, error_line,
    last_line, launchd_log_dir, make_owned_dir, supervisor_error_log, write_file,
)
from edgehost.errors import EnvironmentProblem

SUPERVISOR_LABEL = "com.edgehost.supervisor"
DRILL_LABEL = "com.edgehost.drill"
LABELS = (SUPERVISOR_LABEL, DRILL_LABEL)
DAEMONS_DIR = Path("/Library/LaunchDaemons")
NEWSYSLOG_DIR = Path("/etc/newsyslog.d")
NEWSYSLOG_FILE = "edgehost.conf"  # the repo's example is launchd/edgehost.newsyslog.conf

THROTTLE_INTERVAL = 10  # seconds between respawns of a crashing supervisor (launchd's default, made visible)
DRILL_SCHEDULE = {"Day": 1, "Hour": 3, "Minute": 30}  # monthly, 03:30 local time on the 1st

BOOTSTRAP_TRIES = 5
RETRY_DELAY = 2.0  # seconds; read at call time so tests can set it to 0
_IO_ERROR = re.compile(r"\b5: Input/output error|\bBootstrap failed: 5\b")
_NOT_LOADED = re.compile(r"No such process|Could not find service|not find service|service not found", re.I)


# --- what gets deployed ---------------------------------------------------------------------


# --- rendering ------------------------------------------------------------------------------

_HEADER = (
    "Rendered by `edgehost launchd render`: change the kit's settings and render again rather than "
    "editing this file. Installed in /Library/LaunchDaemons by `edgehost launchd install`."
)

_SUPERVISOR_NOTES = {
    "Label": "A LaunchDaemon, not a LaunchAgent: launchd loads it at boot, before and without any login, "
    "so after a power cut the portal comes back with nobody logged in.",
    "UserName": "Runs unprivileged; launchd itself (root) starts it. Never root.",
    "ProgramArguments": "`edgehost up`: the supervisor, which starts Litestream, the portal and cloudflared "
    "in order and stops them in reverse.",
    "EnvironmentVariables": "launchd gives jobs a bare PATH. EDGEHOST_ENV_FILE is the PATH of the 0600 env "
    "file holding the secrets; the secrets themselves never appear in this plist.",
    "RunAtLoad": "Start at boot (and when installed).",
    "KeepAlive": "Restart the supervisor when it exits with an error (including when it gives up on a "
    "crash-looping service); a clean exit (status 0) stays down.",
    "ThrottleInterval": "At most one respawn every this many seconds.",
    "ExitTimeOut": "Seconds between SIGTERM and SIGKILL. launchd's default of 20 would kill Litestream "
    "before its final sync to the replica; this leaves room for the portal's stop plus that sync.",
    "ProcessType": "Standard: no background throttling of CPU or I/O for the portal.",
    "StandardOutPath": "Every line the supervisor prints on stdout is also in its per-service files in the "
    "log dir (rotated by newsyslog); a copy here would grow without bound, since launchd holds it open.",
    "StandardErrorPath": "Tracebacks and errors from before the supervisor's logs are open: small, rotated "
    "without a signal (see the newsyslog entry).",
    "SoftResourceLimits": "launchd's default of 256 open files is low for many databases with their WAL files.",
    "Umask": "63 = 0077: files the kit creates (databases, logs) are readable by the service user only.",
}

_DRILL_NOTES = {
    "Label": "The monthly disaster-recovery drill: restore every database from the replica into a "
    "scratch dir, verify it, boot the portal on it and write a report.",
    "UserName": "Same unprivileged user as the supervisor.",
    "ProgramArguments": "The report lands in <state>/drills/latest.md.",
    "StartCalendarInterval": "Day 1 of each month at 03:30 local time. A run missed while the Mac slept "
    "happens on wake; one missed while it was off is skipped until next month.",
    "ProcessType": "Background: the drill yields CPU and I/O to the live portal.",
}


def _annotate(xml: bytes, notes: dict[str, str]) -> bytes:
    """Insert XML comments before top-level keys (plistlib cannot write comments)."""
    out: list[str] = []
    for line in xml.decode().splitlines():
        m = re.fullmatch(r"\t<key>([A-Za-z]+)</key>", line)
        if m and m.group(1) in notes:
            out.append(f"\t<!-- {_comment(notes[m.group(1)])} -->")
        out.append(line)
        if line.startswith("<!DOCTYPE"):
            out.append(f"<!-- {_comment(_HEADER)} -->")
    return ("\n".join(out) + "\n").encode()


def _comment(text: str) -> str:
    if "--" in text:
        raise ValueError(f"'--' is not allowed in an XML comment: {text!r}")
    return text


def supervisor_job(dep: Deployment) -> dict[str, Any]:
    """The supervisor's launchd job as a dict (plistlib renders it)."""
    return {
        "Label": SUPERVISOR_LABEL,
        "UserName": dep.user,
        "GroupName": dep.group,
        "ProgramArguments": [str(dep.program), dep.verb],
        "WorkingDirectory": str(dep.home),
        "EnvironmentVariables": dep.environment(),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_INTERVAL,
        "ExitTimeOut": dep.stop_timeout,
        "ProcessType": "Standard",
        "StandardOutPath": "/dev/null",
        "StandardErrorPath": str(dep.supervisor_error_log),
        "SoftResourceLimits": {"NumberOfFiles": OPEN_FILES},
        "HardResourceLimits": {"NumberOfFiles": OPEN_FILES},
        "Umask": 0o077,
    }


def drill_job(dep: Deployment) -> dict[str, Any]:
    """The monthly drill's launchd job."""
    log = str(dep.launchd_log_dir / "drill.log")
    return {
        "Label": DRILL_LABEL,
        "UserName": dep.user,
        "GroupName": dep.group,
        "ProgramArguments": [str(dep.program), "drill", "--report", str(dep.drill_report)],
        "WorkingDirectory": str(dep.home),
        "EnvironmentVariables": dep.environment(),
        "StartCalendarInterval": dict(DRILL_SCHEDULE),
        "RunAtLoad": False,
        "ExitTimeOut": dep.stop_timeout,
        "ProcessType": "Background",
        "StandardOutPath": log,
        "StandardErrorPath": log,
        "Umask": 0o077,
    }


def render_plist(job: dict[str, Any]) -> bytes:
    notes = _SUPERVISOR_NOTES if job["Label"] == SUPERVISOR_LABEL else _DRILL_NOTES
    return _annotate(plistlib.dumps(job, sort_keys=False), notes)


def render_newsyslog(dep: Deployment) -> str:
    """/etc/newsyslog.d/edgehost.conf: rotate the supervisor's logs and SIGHUP it to reopen them."""
    owner = f"{dep.user}:{dep.group}"
    rows = [
        # The supervisor's per-service logs, daily at midnight, 14 kept: newsyslog renames them,
        # sends SIGHUP (1) to the pid in the pid file so the supervisor reopens its files, then gzips
        # the old ones (Z). G: the name is a glob. (The supervisor also caps each file at 10 MB
        # between rotations with numbered .log.N backups.)
        (f"{dep.log_dir}/*.log", owner, "600", "14", "*", "@T00", "GZ", str(dep.pid_file), "1"),
        # launchd's stderr capture: launchd holds that descriptor and reopens it only when it
        # respawns the job, so no signal (N) and no compression, which would lose what is written
        # after the rotation.
        (f"{dep.launchd_log_dir}/*.log", owner, "600", "3", "1024", "*", "GN", "", ""),
    ]
    head = [
        "# edgehost log rotation for newsyslog(8), rendered by `edgehost launchd render`.",
        f"# Installed as {NEWSYSLOG_DIR / NEWSYSLOG_FILE}; newsyslog runs every 30 minutes from launchd.",
        "# size is in KB; when @T00 is daily at midnight; count is how many old copies are kept.",
        "#",
    ]
    cols = ("# logfilename", "[owner:group]", "mode", "count", "size", "when", "flags", "[/pid_file]", "[sig_num]")
    widths = [max(len(r[i]) for r in [cols, *rows]) for i in range(len(cols))]
    lines = [*head, "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RenderedFile:
    name: str  # the file name it is installed under
    install_dir: Path
    content: bytes
    kind: str  # "plist" or "newsyslog"
    label: str = ""

    @property
    def install_path(self) -> Path:
        return self.install_dir / self.name


def render(dep: Deployment, daemons_dir: Path = DAEMONS_DIR, newsyslog_dir: Path = NEWSYSLOG_DIR) -> list[RenderedFile]:
    """Everything `install` writes: the two plists and the newsyslog entry."""
    files = [
        RenderedFile(f"{job['Label']}.plist", daemons_dir, render_plist(job), "plist", job["Label"])
        for job in (supervisor_job(dep), drill_job(dep))
    ]
    files.append(RenderedFile(NEWSYSLOG_FILE, newsyslog_dir, render_newsyslog(dep).encode(), "newsyslog"))
    return files


def example_name(f: RenderedFile) -> str:
    """The file's name in the repo's launchd/ folder of examples."""
    return "edgehost.newsyslog.conf" if f.kind == "newsyslog" else f.name


# --- the launchctl seam ---------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    output: str  # stdout and stderr together, stripped


def launchctl(*args: str) -> CommandResult:
    """Run `launchctl ARGS`: the only place edgehost calls launchctl (tests replace this function)."""
    argv = ("launchctl", *args)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    except FileNotFoundError:
        raise EnvironmentProblem("launchctl not found: launchd jobs exist only on macOS (on Linux: edgehost systemd)") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"{' '.join(argv)}: timed out after 180s") from None
    return CommandResult(argv, proc.returncode, (proc.stdout + proc.stderr).strip())


# --- plans and their execution --------------------------------------------------------------


@dataclass
class LaunchdReport:
    action: str
    dry_run: bool
    steps: list[StepResult] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def _launchctl_step(*args: str) -> Step:
    return Step("launchctl", "launchctl " + " ".join(args), argv=tuple(args))


def install_plan(dep: Deployment, files: list[RenderedFile]) -> list[Step]:
    """Write the files, then (re)load each job: bootout (if loaded), enable, bootstrap."""
    # launchd does not create the directory of StandardOutPath; without it the job fails to spawn.
    steps = [Step("mkdir", f"install -d -m 0750 -o {dep.user} -g {dep.group} {dep.launchd_log_dir}",
                  path=str(dep.launchd_log_dir), mode=0o750, owner=f"{dep.user}:{dep.group}")]
    for f in files:
        steps.append(Step("write", f"write {f.install_path} (mode 0644)", path=str(f.install_path)))
    for f in files:
        if f.kind != "plist":
            continue
        steps += [
            # A loaded job keeps its old definition: unload it so the new plist takes effect.
            _launchctl_step("bootout", f"system/{f.label}"),
            # A disabled service fails bootstrap with the same unhelpful "5: Input/output error".
            _launchctl_step("enable", f"system/{f.label}"),
            _launchctl_step("bootstrap", "system", str(f.install_path)),
        ]
    return steps


def uninstall_plan(files: list[RenderedFile]) -> list[Step]:
    steps = [_launchctl_step("bootout", f"system/{f.label}") for f in files if f.kind == "plist"]
    steps += [Step("remove", f"rm -f {f.install_path}", path=str(f.install_path)) for f in files]
    return steps


def restart_plan() -> list[Step]:
    return [_launchctl_step("kickstart", "-k", f"system/{SUPERVISOR_LABEL}")]


def _run_launchctl(step: Step, tolerate_bootout: bool) -> StepResult:
    tries = BOOTSTRAP_TRIES if step.argv[0] == "bootstrap" else 1
    for attempt in range(1, tries + 1):
        result = launchctl(*step.argv)
        if result.returncode == 0:
            return StepResult(step.command, 0, result.output, attempt)
        if step.argv[0] == "bootout" and (tolerate_bootout or _NOT_LOADED.search(result.output)):
            note = "was not loaded" if _NOT_LOADED.search(result.output) else "bootout failed; bootstrap decides"
            return StepResult(step.command, result.returncode, result.output, attempt, note=note)
        # Right after a bootout launchd may still be tearing the old job down and refuses the new
        # one with "Bootstrap failed: 5: Input/output error"; it goes through a moment later.
        if step.argv[0] == "bootstrap" and _IO_ERROR.search(result.output) and attempt < tries:
            time.sleep(RETRY_DELAY)
            continue
        hint = ""
        if step.argv[0] == "bootstrap":
            hint = (f" (after {attempt} tries; check `sudo launchctl print system/{Path(step.argv[2]).stem}`, "
                    f"`plutil -lint {step.argv[2]}`, that it is owned by root with mode 0644, and that its log dir exists)")
        if "Operation not permitted" in result.output or "requires root" in result.output.lower():
            hint = " (run it with sudo)"
        raise EnvironmentProblem(f"{step.command}: {error_line(result.output) or f'exit {result.returncode}'}{hint}")
    raise AssertionError("unreachable")


def execute(steps: list[Step], files: list[RenderedFile], action: str, dry_run: bool,
            tolerate_bootout: bool = True) -> LaunchdReport:
    """Carry out a plan in order (or only list it, with dry_run)."""
    report = LaunchdReport(action, dry_run, files=[str(f.install_path) for f in files])
    contents = {str(f.install_path): f.content for f in files}
    for step in steps:
        if dry_run:
            report.steps.append(StepResult(step.command, note="dry run"))
            continue
        if step.kind == "launchctl":
            report.steps.append(_run_launchctl(step, tolerate_bootout))
        elif step.kind == "mkdir":
            user, group = step.owner.split(":")
            make_owned_dir(Path(step.path), user, group, step.mode)
            report.steps.append(StepResult(step.command))
        elif step.kind == "write":
            write_file(Path(step.path), contents[step.path], step.mode)
            report.steps.append(StepResult(step.command))
        elif step.kind == "remove":
            existed = Path(step.path).exists()
            Path(step.path).unlink(missing_ok=True)
            report.steps.append(StepResult(step.command, note="" if existed else "was not there"))
    return report


def install(dep: Deployment, dry_run: bool = False, daemons_dir: Path = DAEMONS_DIR,
            newsyslog_dir: Path = NEWSYSLOG_DIR) -> LaunchdReport:
    """Write the plists and the newsyslog entry, then load both jobs (the supervisor starts at once)."""
    files = render(dep, daemons_dir, newsyslog_dir)
    return execute(install_plan(dep, files), files, "install", dry_run)


def uninstall(dep: Deployment, dry_run: bool = False, daemons_dir: Path = DAEMONS_DIR,
              newsyslog_dir: Path = NEWSYSLOG_DIR) -> LaunchdReport:
    """Unload both jobs (the supervisor stops its services in order) and remove the files; data stays."""
    files = render(dep, daemons_dir, newsyslog_dir)
    return execute(uninstall_plan(files), files, "uninstall", dry_run, tolerate_bootout=False)


def restart(dry_run: bool = False) -> LaunchdReport:
    """Stop and start the supervisor in place (`kickstart -k`)."""
    return execute(restart_plan(), [], "restart", dry_run)


# --- status ---------------------------------------------------------------------------------


@dataclass
class JobStatus:
    label: str
    loaded: bool
    plist: str
    plist_installed: bool
    state: str | None = None  # "running", "not running", ...
    pid: int | None = None
    last_exit_code: str | None = None


def _field(text: str, name: str) -> str | None:
    m = re.search(rf"^\s*{re.escape(name)} = (.+)$", text, re.M)
    return m.group(1).strip() if m else None


def job_status(label: str, daemons_dir: Path = DAEMONS_DIR) -> JobStatus:
    """Whether launchd has the job loaded (`launchctl print system/<label>`), and its state."""
    plist = daemons_dir / f"{label}.plist"
    result = launchctl("print", f"system/{label}")
    status = JobStatus(label, result.returncode == 0, str(plist), plist.exists())
    if status.loaded:
        status.state = _field(result.output, "state")
        pid = _field(result.output, "pid")
        status.pid = int(pid) if pid and pid.isdigit() else None
        status.last_exit_code = _field(result.output, "last exit code")
    return status


def status(daemons_dir: Path = DAEMONS_DIR) -> list[JobStatus]:
    """Both jobs' status, the supervisor first."""
    return [job_status(label, daemons_dir) for label in LABELS]
