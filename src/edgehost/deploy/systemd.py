"""systemd on Linux: the supervisor as a hardened service, the monthly drill as a timer, and the one
seam every systemctl call passes through. The macOS counterpart is launchd.py."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgehost.errors import EnvironmentProblem
# Deployment (paths, program, user) and the install plumbing are shared with the launchd side.
from edgehost.deploy.deployment import OPEN_FILES, Deployment, Step, StepResult, error_line, make_owned_dir, write_file

UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_USER = "edgehost"
SUPERVISOR_UNIT = "edgehost.service"
DRILL_SERVICE = "edgehost-drill.service"
DRILL_TIMER = "edgehost-drill.timer"
DRILL_CALENDAR = "*-*-01 03:30:00"  # day 1 of each month at 03:30, as on the Mac
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
RESTART_SEC = 5
# systemd >= 254 can lengthen the wait between restarts (RestartSteps=, RestartMaxDelaySec=); older
# versions warn "Unknown key" and ignore them, so they are written only where systemd knows them.
BACKOFF_SINCE = 254
RESTART_STEPS = 4
# systemd never shrinks the delay again on its own (only a manual start or reset-failed does), so the
# cap stays small: a supervisor that crashes once a month still comes back within a minute.
RESTART_MAX_DELAY = 60


def installed_version() -> int | None:
    """The systemd version on this machine (`systemctl --version`), or None where there is none."""
    try:
        proc = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.match(r"systemd (\d+)", proc.stdout)
    return int(m.group(1)) if proc.returncode == 0 and m else None


def _restart_policy(backoff: bool) -> list[str]:
    """Restart on every failure, forever: the unit must never end up failed for good."""
    lines = [
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
    ]
    if backoff:
        lines += [
            # 5 s, then about 9, 17, 32 and at most 60 s between restarts while it keeps failing.
            f"RestartSteps={RESTART_STEPS}",
            f"RestartMaxDelaySec={RESTART_MAX_DELAY}",
        ]
    return lines


def _hardening(dep: Deployment) -> list[str]:
    """Sandboxing shared by both services: read-only system, writable only where the kit writes."""
    writable = [dep.data_dir, dep.state_dir, dep.log_dir]
    if dep.replica_dir is not None:
        writable.append(dep.replica_dir)
    lines = [
        f"User={dep.user}",
        f"Group={dep.group}",
        f"WorkingDirectory={dep.home}",
        f"Environment=PATH={dep.path_env(SYSTEM_PATH)}",
        f"Environment=EDGEHOST_HOME={dep.home}",
    ]
    if dep.env_file is not None:
        # systemd (as root) reads the 0600 file; the supervisor is also told where it is. Its path
        # only: the secrets stay in the file.
        lines += [f"Environment=EDGEHOST_ENV_FILE={dep.env_file}", f"EnvironmentFile={dep.env_file}"]
    lines += [
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        # Every directory here must exist before the unit starts (install creates them).
        "ReadWritePaths=" + " ".join(str(p) for p in dict.fromkeys(writable)),
    ]
    return lines


def supervisor_unit(dep: Deployment, backoff: bool | None = None) -> str:
    """edgehost.service. `backoff`: write RestartSteps=/RestartMaxDelaySec= (default: when this machine's
    systemd is 254 or newer)."""
    if backoff is None:
        backoff = (installed_version() or 0) >= BACKOFF_SINCE
    lines = [
        "# Rendered by `edgehost systemd render`: change the kit's settings and render again rather than editing.",
        "[Unit]",
        "Description=edgehost supervisor: Litestream, the portal and cloudflared",
        "After=network-online.target",
        "Wants=network-online.target",
        "# Never give up restarting. With a start limit (the default is 5 starts in 10 s; this unit used",
        "# 5 in 300 s) a network outage of half a minute after a power cut, with every start failing",
        "# because the replica was unreachable, left the unit failed for good: no replication and no portal",
        "# until someone ran `systemctl reset-failed`. Replication is the point of this service, so it",
        "# keeps trying" + (", waiting longer between tries (RestartSteps=)." if backoff else
                           " every RestartSec= (RestartSteps= needs systemd 254 or newer)."),
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={dep.program} {dep.verb}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        *_restart_policy(backoff),
        # SIGTERM goes to the supervisor alone, which stops the portal, then lets Litestream finish
        # its final sync; only what is still alive after TimeoutStopSec gets SIGKILL.
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={dep.stop_timeout}",
        f"LimitNOFILE={OPEN_FILES}",
        *_hardening(dep),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def drill_service(dep: Deployment) -> str:
    lines = [
        "# Rendered by `edgehost systemd render`. Started by edgehost-drill.timer.",
        "[Unit]",
        "Description=edgehost monthly disaster-recovery drill",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        f"ExecStart={dep.program} drill --report {dep.drill_report}",
        "KillMode=mixed",
        f"TimeoutStopSec={dep.stop_timeout}",
        "Nice=10",
        "IOSchedulingClass=idle",
        *_hardening(dep),
    ]
    return "\n".join(lines) + "\n"


def drill_timer() -> str:
    lines = [
        "# Rendered by `edgehost systemd render`.",
        "[Unit]",
        "Description=edgehost monthly disaster-recovery drill",
        "",
        "[Timer]",
        f"OnCalendar={DRILL_CALENDAR}",
        # A drill missed while the machine was off runs at the next boot.
        "Persistent=true",
        f"Unit={DRILL_SERVICE}",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]
    return "\n".join(lines) + "\n"


def render(dep: Deployment, backoff: bool | None = None) -> dict[str, str]:
    """The three unit files by name (`backoff` as for supervisor_unit)."""
    return {SUPERVISOR_UNIT: supervisor_unit(dep, backoff), DRILL_SERVICE: drill_service(dep), DRILL_TIMER: drill_timer()}


# --- the systemctl seam ---------------------------------------------------------------------


def systemctl(*args: str) -> tuple[int, str]:
    """Run `systemctl ARGS`: the only place edgehost calls systemctl (tests replace this function)."""
    argv = ("systemctl", *args)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    except FileNotFoundError:
        raise EnvironmentProblem("systemctl not found: this is not a systemd machine (on macOS: edgehost launchd)") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"{' '.join(argv)}: timed out after 180s") from None
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@dataclass
class SystemdReport:
    action: str
    dry_run: bool
    steps: list[StepResult] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def install_plan(dep: Deployment, unit_dir: Path) -> list[Step]:
    """In order: the writable directories, the unit files, daemon-reload, enable --now."""
    dirs = [dep.data_dir, dep.state_dir, dep.log_dir, dep.drill_report.parent]
    if dep.replica_dir is not None:
        dirs.append(dep.replica_dir)
    # ReadWritePaths= fails the unit (226/NAMESPACE) when a directory is missing: create them first.
    steps = [Step("mkdir", f"install -d -m 0700 -o {dep.user} -g {dep.group} {d}", path=str(d), mode=0o700,
                  owner=f"{dep.user}:{dep.group}") for d in dict.fromkeys(dirs)]
    steps += [Step("write", f"write {unit_dir / name} (mode 0644)", path=str(unit_dir / name)) for name in render(dep)]
    for args in (("daemon-reload",), ("enable", "--now", SUPERVISOR_UNIT, DRILL_TIMER)):
        steps.append(Step("systemctl", "systemctl " + " ".join(args), argv=args))
    return steps


def install(dep: Deployment, dry_run: bool = False, unit_dir: Path = UNIT_DIR) -> SystemdReport:
    """Write the units, reload systemd, enable and start the supervisor and the drill timer."""
    units = {str(unit_dir / name): text for name, text in render(dep).items()}
    report = SystemdReport("install", dry_run, files=list(units))
    for step in install_plan(dep, unit_dir):
        if dry_run:
            report.steps.append(StepResult(step.command, note="dry run"))
            continue
        if step.kind == "mkdir":
            make_owned_dir(Path(step.path), dep.user, dep.group, step.mode)
        elif step.kind == "write":
            write_file(Path(step.path), units[step.path].encode(), step.mode)
        else:
            rc, output = systemctl(*step.argv)
            if rc != 0:
                raise EnvironmentProblem(f"{step.command}: {error_line(output) or f'exit {rc}'}")
        report.steps.append(StepResult(step.command))
    return report


def _run(report: SystemdReport, args: tuple[str, ...], dry_run: bool, tolerate: tuple[int, ...] = ()) -> None:
    command = "systemctl " + " ".join(args)
    if dry_run:
        report.steps.append(StepResult(command, note="dry run"))
        return
    rc, output = systemctl(*args)
    if rc != 0 and rc not in tolerate:
        raise EnvironmentProblem(f"{command}: {error_line(output) or f'exit {rc}'}")
    report.steps.append(StepResult(command, rc, output, note="not loaded" if rc in tolerate and rc else ""))


def uninstall(dry_run: bool = False, unit_dir: Path = UNIT_DIR) -> SystemdReport:
    """Stop and disable the service and timer, remove the unit files, daemon-reload. Data, state and logs stay."""
    report = SystemdReport("uninstall", dry_run)
    # 5: unit not loaded (already gone); uninstall is safe to run twice.
    _run(report, ("disable", "--now", SUPERVISOR_UNIT, DRILL_TIMER), dry_run, tolerate=(1, 5))
    for name in (SUPERVISOR_UNIT, DRILL_SERVICE, DRILL_TIMER):
        path = unit_dir / name
        report.files.append(str(path))
        if dry_run:
            report.steps.append(StepResult(f"rm {path}", note="dry run"))
            continue
        existed = path.exists()
        path.unlink(missing_ok=True)
        report.steps.append(StepResult(f"rm {path}", note="" if existed else "not there"))
    _run(report, ("daemon-reload",), dry_run)
    return report


def restart(dry_run: bool = False) -> SystemdReport:
    """Restart the supervisor (a clean stop with its final sync, then a start)."""
    report = SystemdReport("restart", dry_run)
    _run(report, ("restart", SUPERVISOR_UNIT), dry_run)
    return report


@dataclass
class UnitStatus:
    unit: str
    loaded: bool
    active: str  # active | inactive | failed | activating | ...
    enabled: str  # enabled | disabled | not-found | ...
    main_pid: int | None
    result: str  # systemd's Result=: success, exit-code, signal, ...


def status() -> list[UnitStatus]:
    """The supervisor service and the drill timer, as systemd sees them."""
    out = []
    for unit in (SUPERVISOR_UNIT, DRILL_TIMER):
        rc, text = systemctl("show", unit, "--property=LoadState,ActiveState,UnitFileState,MainPID,Result")
        if rc != 0:
            raise EnvironmentProblem(f"systemctl show {unit}: {error_line(text) or f'exit {rc}'}")
        props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        pid = int(props.get("MainPID", "0") or 0)
        out.append(UnitStatus(unit, props.get("LoadState") == "loaded", props.get("ActiveState", ""),
                              props.get("UnitFileState", ""), pid or None, props.get("Result", "")))
    return out
