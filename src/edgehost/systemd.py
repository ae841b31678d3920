"""systemd on Linux: the supervisor as a hardened service, the monthly drill as a timer, and the one
seam every systemctl call passes through. The macOS counterpart is launchd.py."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EnvironmentProblem
# Deployment (paths, program, user) and the install plumbing are shared with the launchd side.
from .launchd import OPEN_FILES, Deployment, Step, StepResult, error_line, make_owned_dir, write_file

UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_USER = "edgehost"
SUPERVISOR_UNIT = "edgehost.service"
DRILL_SERVICE = "edgehost-drill.service"
DRILL_TIMER = "edgehost-drill.timer"
DRILL_CALENDAR = "*-*-01 03:30:00"  # day 1 of each month at 03:30, as on the Mac
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")


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


def supervisor_unit(dep: Deployment) -> str:
    lines = [
        "# Rendered by `edgehost systemd render`: change the kit's settings and render again rather than editing.",
        "[Unit]",
        "Description=edgehost supervisor: Litestream, the portal and cloudflared",
        "After=network-online.target",
        "Wants=network-online.target",
        # Give up after 5 failed starts in 5 minutes rather than looping forever.
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={dep.program} up",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=5",
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


def render(dep: Deployment) -> dict[str, str]:
    """The three unit files by name."""
    return {SUPERVISOR_UNIT: supervisor_unit(dep), DRILL_SERVICE: drill_service(dep), DRILL_TIMER: drill_timer()}


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
