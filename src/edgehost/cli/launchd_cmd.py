"""`edgehost launchd render|install|uninstall|restart|status`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from edgehost.deploy import launchd
from edgehost.errors import BadInput, ExitStatus
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json, report_written

launchd_app = typer.Typer(
    help="The supervisor as a macOS LaunchDaemon (back after a power cut, nobody logged in) and the monthly drill.",
    no_args_is_help=True,
)
app.add_typer(launchd_app, name="launchd")

_USER = typer.Option(launchd.DEFAULT_USER, "--user", envvar="EDGEHOST_SERVICE_USER",
                     help="The unprivileged account the jobs run as.")
_GROUP = typer.Option(None, "--group", envvar="EDGEHOST_SERVICE_GROUP", help="Its group (default: same as --user).")
_PROGRAM = typer.Option(None, "--program", help="The edgehost executable the jobs run (default: the one beside this Python).")
_JSON = typer.Option(False, "--json", help="Print JSON on stdout.")
_STANDBY = typer.Option(False, "--standby", help="Run `edgehost follow` (a warm standby; docs/standby.md) instead of `up`.")
_DRY_RUN = typer.Option(False, "--dry-run", help="Print the commands in order without running them.")
_DAEMONS_DIR = typer.Option(launchd.DAEMONS_DIR, "--daemons-dir", help="Where the plists go.")
_NEWSYSLOG_DIR = typer.Option(launchd.NEWSYSLOG_DIR, "--newsyslog-dir", help="Where the newsyslog entry goes.")


def _deployment(user: str, group: Optional[str], program: Optional[Path], standby: bool = False) -> launchd.Deployment:
    return launchd.Deployment.from_settings(load_settings(), user, group, program, standby)


def _print_report(report: launchd.LaunchdReport, as_json: bool) -> None:
    if as_json:
        emit_json(report)
        return
    for step in report.steps:
        suffix = f"  [{step.note}]" if step.note and step.note != "dry run" else ""
        retries = f"  (after {step.attempts} tries)" if step.attempts > 1 else ""
        console.print(f"{step.command}{retries}{suffix}", markup=False, highlight=False, soft_wrap=True)


@launchd_app.command("render")
def render(
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write into (default: <state>/launchd)."),
    user: str = _USER,
    group: Optional[str] = _GROUP,
    program: Optional[Path] = _PROGRAM,
    standby: bool = _STANDBY,
    as_json: bool = _JSON,
) -> None:
    """Write the supervisor and drill plists and the newsyslog entry to a folder, to read before installing."""
    settings = load_settings()
    dep = launchd.Deployment.from_settings(settings, user, group, program, standby)
    out = (out or settings.state_dir / "launchd").absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"{out}: cannot create folder: {exc.strerror}") from None
    written = []
    for f in launchd.render(dep):
        path = out / launchd.example_name(f)
        path.write_bytes(f.content)
        written.append({"path": str(path), "kind": f.kind, "label": f.label, "installs_to": str(f.install_path)})
    report_written(written, dep, as_json)


@launchd_app.command("install")
def install(
    user: str = _USER,
    group: Optional[str] = _GROUP,
    program: Optional[Path] = _PROGRAM,
    standby: bool = _STANDBY,
    dry_run: bool = _DRY_RUN,
    as_json: bool = _JSON,
    daemons_dir: Path = _DAEMONS_DIR,
    newsyslog_dir: Path = _NEWSYSLOG_DIR,
) -> None:
    """Install both jobs as LaunchDaemons and load them (needs sudo); the supervisor starts at once.

    Runs `launchctl bootout`, `enable` and `bootstrap system <plist>` for each job, retrying the
    "Bootstrap failed: 5: Input/output error" launchd gives right after a bootout.
    """
    report = launchd.install(_deployment(user, group, program, standby), dry_run, daemons_dir, newsyslog_dir)
    _print_report(report, as_json)


@launchd_app.command("uninstall")
def uninstall(
    user: str = _USER,
    group: Optional[str] = _GROUP,
    program: Optional[Path] = _PROGRAM,
    dry_run: bool = _DRY_RUN,
    as_json: bool = _JSON,
    daemons_dir: Path = _DAEMONS_DIR,
    newsyslog_dir: Path = _NEWSYSLOG_DIR,
) -> None:
    """Unload both jobs (the supervisor stops its services in order) and remove their files; data stays."""
    report = launchd.uninstall(_deployment(user, group, program), dry_run, daemons_dir, newsyslog_dir)
    _print_report(report, as_json)


@launchd_app.command("restart")
def restart(dry_run: bool = _DRY_RUN, as_json: bool = _JSON) -> None:
    """Restart the supervisor in place (`launchctl kickstart -k`)."""
    _print_report(launchd.restart(dry_run), as_json)


@launchd_app.command("status")
def status(as_json: bool = _JSON, daemons_dir: Path = _DAEMONS_DIR) -> int:
    """Whether each job is loaded (`launchctl print system/<label>`); exits 1 when one is not."""
    jobs = launchd.status(daemons_dir)
    if as_json:
        emit_json({"jobs": jobs})
    else:
        table = Table("job", "loaded", "state", "pid", "last exit", "plist")
        for j in jobs:
            table.add_row(j.label, "yes" if j.loaded else "[red]no[/]", j.state or "", str(j.pid or ""),
                          j.last_exit_code or "", j.plist if j.plist_installed else f"{j.plist} (missing)")
        console.print(table)
    return int(ExitStatus.CHECK_FAILED) if not all(j.loaded for j in jobs) else int(ExitStatus.OK)
