"""`edgehost systemd render|install|uninstall|restart|status` (Linux)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgehost.deploy import systemd
from edgehost.errors import BadInput, ExitStatus
from edgehost.deploy.deployment import Deployment
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json, report_written

systemd_app = typer.Typer(help="The supervisor as a systemd service and the monthly drill as a timer (Linux).",
                          no_args_is_help=True)
app.add_typer(systemd_app, name="systemd")

_USER = typer.Option(systemd.DEFAULT_USER, "--user", envvar="EDGEHOST_SERVICE_USER",
                     help="The unprivileged account the services run as.")
_GROUP = typer.Option(None, "--group", envvar="EDGEHOST_SERVICE_GROUP", help="Its group (default: same as --user).")
_PROGRAM = typer.Option(None, "--program", help="The edgehost executable the units run (default: the one beside this Python).")
_JSON = typer.Option(False, "--json", help="Print JSON on stdout.")
_STANDBY = typer.Option(False, "--standby", help="Run `edgehost follow` (a warm standby; docs/standby.md) instead of `up`.")


@systemd_app.command("render")
def render(
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write into (default: <state>/systemd)."),
    user: str = _USER,
    group: Optional[str] = _GROUP,
    program: Optional[Path] = _PROGRAM,
    standby: bool = _STANDBY,
    as_json: bool = _JSON,
) -> None:
    """Write edgehost.service, edgehost-drill.service and edgehost-drill.timer to a folder, to read before installing."""
    settings = load_settings()
    dep = Deployment.from_settings(settings, user, group, program, standby)
    out = (out or settings.state_dir / "systemd").absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"{out}: cannot create folder: {exc.strerror}") from None
    written = []
    for name, text in systemd.render(dep).items():
        (out / name).write_text(text)
        written.append({"path": str(out / name), "installs_to": str(systemd.UNIT_DIR / name)})
    report_written(written, dep, as_json)


@systemd_app.command("install")
def install(
    user: str = _USER,
    group: Optional[str] = _GROUP,
    program: Optional[Path] = _PROGRAM,
    standby: bool = _STANDBY,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands in order without running them."),
    as_json: bool = _JSON,
    unit_dir: Path = typer.Option(systemd.UNIT_DIR, "--unit-dir", help="Where the unit files go."),
) -> None:
    """Install the units (needs root): create the writable dirs, daemon-reload, enable --now the service and timer."""
    dep = Deployment.from_settings(load_settings(), user, group, program, standby)
    report = systemd.install(dep, dry_run, unit_dir)
    if as_json:
        emit_json(report)
        return
    for step in report.steps:
        console.print(step.command, markup=False, highlight=False, soft_wrap=True)


def _print_steps(report: systemd.SystemdReport, as_json: bool) -> None:
    if as_json:
        emit_json(report)
        return
    for step in report.steps:
        note = f"  ({step.note})" if step.note else ""
        console.print(step.command + note, markup=False, highlight=False, soft_wrap=True)


@systemd_app.command("uninstall")
def uninstall(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands in order without running them."),
    as_json: bool = _JSON,
    unit_dir: Path = typer.Option(systemd.UNIT_DIR, "--unit-dir", help="Where the unit files are."),
) -> None:
    """Stop and disable the supervisor and the drill timer and remove the unit files (needs root).

    The supervisor stops cleanly (final sync, lease released); data, state, logs and the env file stay.
    Running it twice is safe.
    """
    _print_steps(systemd.uninstall(dry_run, unit_dir), as_json)


@systemd_app.command("restart")
def restart(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command without running it."),
    as_json: bool = _JSON,
) -> None:
    """Restart the supervisor service (a clean stop with its final sync, then a start; needs root)."""
    _print_steps(systemd.restart(dry_run), as_json)


@systemd_app.command("status")
def status(as_json: bool = _JSON) -> int:
    """The supervisor service and the drill timer as systemd sees them; exit 1 unless the service runs."""
    units = systemd.status()
    running = units[0].loaded and units[0].active == "active"
    if as_json:
        emit_json({"ok": running, "units": units})
    else:
        for u in units:
            pid = f", pid {u.main_pid}" if u.main_pid else ""
            console.print(f"{u.unit}: {u.active or 'unknown'} ({u.enabled or 'not installed'}{pid}"
                          f"{', last result ' + u.result if u.result and u.result != 'success' else ''})",
                          markup=False, highlight=False)
    return 0 if running else int(ExitStatus.CHECK_FAILED)
