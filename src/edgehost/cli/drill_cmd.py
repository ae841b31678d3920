"""`edgehost drill`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgehost.errors import BadInput, ExitStatus
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json


@app.command("drill")
def drill(
    at: Optional[str] = typer.Option(None, "--at", help="Rehearse a restore to this time (RFC 3339 or -2h); default latest."),
    report_path: Optional[Path] = typer.Option(None, "--report", help="Also write the Markdown report here (and the JSON beside it)."),
    scenario: str = typer.Option("full", "--scenario", help="full, or accidental-delete (on a scratch copy)."),
    slug: Optional[str] = typer.Option(None, "--slug", help="The property for accidental-delete (default: the largest)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the scratch data (restored copies, scratch replica) for inspection."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """The disaster rehearsal: restore every database into an empty scratch data dir, check each,
    boot the portal on it, compare its answers with the live data, and report RTO and RPO.

    The live databases are read at the instant the restore point is decided. RPO per database is
    the age of the oldest live write the restore lacked (0 when it lacked nothing); a database whose
    gap passes lag_alert_seconds (EDGEHOST_LAG_ALERT_SECONDS) fails the drill, named with its gap,
    and the report gives the worst RPO.

    Scratch data is deleted when the drill ends, pass or fail (unless --keep). The report goes to
    state/drills/ (Markdown and JSON), the kit's history and the replica (_edgehost/drills/), and to
    --report when given; the last EDGEHOST_DRILL_KEEP_REPORTS (12) are kept in each. `edgehost
    status` shows the last drill, from the replica on a new machine. Exit 0 pass, 1 a check failed,
    3 could not run.
    """
    from edgehost.ops import drill as drill_lib
    from edgehost.ops.restore import parse_time

    settings = load_settings()
    drill_lib.keep_reports(settings)  # a bad setting stops here, before anything runs
    when = parse_time(at) if at else None
    if scenario not in ("full", "accidental-delete"):
        raise BadInput(f"unknown scenario {scenario!r}: use full or accidental-delete")
    check = _healthchecks(settings)
    check("start", f"edgehost drill ({scenario}) started")
    if scenario == "full":
        report = drill_lib.run_drill(settings, at=when, keep=keep, progress=lambda m: console.print(f"[dim]{m}[/]"))
    elif scenario == "accidental-delete":
        if when is not None:
            raise BadInput("--at does not apply to the accidental-delete scenario")
        report = drill_lib.accidental_delete(settings, slug, keep=keep, progress=lambda m: console.print(f"[dim]{m}[/]"))
    md, js = drill_lib.save(settings, report, report_path)
    check("" if report.status == "pass" else "fail", f"edgehost drill ({scenario}): {report.status}")
    if as_json:
        emit_json(report.as_dict())
    console.print(drill_lib.render_markdown(report), markup=False, highlight=False)
    console.print(f"report: {md} and {js}")
    code = {"pass": ExitStatus.OK, "fail": ExitStatus.CHECK_FAILED, "error": ExitStatus.ENVIRONMENT}[report.status]
    raise typer.Exit(int(code))


def _healthchecks(settings):
    """The dead-man's switch's /start before a drill and its success or /fail after; a failing ping
    is one line on stderr and never changes the drill's outcome."""
    from edgehost.ops import alerts

    hc = alerts.healthchecks(settings)

    def ping(signal: str, body: str) -> None:
        if hc is None:
            return
        try:
            hc.ping(signal, body)
        except Exception as exc:
            console.print(f"[yellow]warning:[/] healthchecks ping {signal or 'success'} failed: {alerts.reason(exc)}")

    return ping
