"""`edgehost points`."""

from __future__ import annotations

from typing import List, Optional

import typer

from edgehost.engine import layout, litestream
from edgehost.errors import BadInput, ExitStatus
from edgehost.ops.restore import PointsReport, human_duration, parse_time, restore_points
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json
from edgehost.cli.targets import select_keys


@app.command("points")
def points(
    slug: Optional[str] = typer.Argument(None, help="The property's slug."),
    global_db: bool = typer.Option(False, "--global", help="The global study database instead of a property."),
    around: Optional[str] = typer.Option(
        None, "--around", help="List the restorable points nearest this time: RFC 3339 or relative (-15m, -2h, -1d)."),
    count: int = typer.Option(5, "--count", min=1, max=100, help="Points listed before and after --around (default 5)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """The restorable points of one database, read from its replica.

    A restore can land only on these points. With the shipped litestream.yml: every sync (about one a
    second while writing) for the last 10-20 minutes (5-10 in the minutes after the hourly L0
    check), then only the L1 compaction boundaries (one per 10-minute mark with writes) back to the
    oldest snapshot kept (6-7 days). Without --around: the
    window, its precision tiers and the newest points. With --around T: the points nearest T, marking
    the one `restore --at T` lands on (the newest synced before T); restore any of them exactly with
    `edgehost restore SLUG --txid HEX`. Times are when Litestream synced the point (its LTX
    timestamp, UTC, milliseconds). One LIST of the database's LTX files, plus on S3 a HEAD per point shown.
    """
    if bool(slug) == global_db:
        raise BadInput("give one property slug or --global")
    settings = load_settings()
    when = parse_time(around) if around else None
    ls = litestream.Litestream.from_settings(settings)
    repl = ls.replication
    key = select_keys(settings, repl, [slug] if slug else [], global_db, False)[0]
    ref = layout.ref_for(settings, key)
    report = restore_points(repl.restore_url(ref), ls.env, ref.label, replica=repl.replica_url(ref), around=when,
                            count=count)
    if as_json:
        emit_json(report)
    else:
        _print_points(report, slug or "--global", repl.config.snapshot_retention)
    if report.histories:
        raise typer.Exit(int(ExitStatus.CHECK_FAILED))

def _span(seconds: float | None) -> str:
    return "a single point" if not seconds else human_duration(seconds)

def _print_points(report: PointsReport, cli_ref: str, retention) -> None:
    def out(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    out(f"[bold]{report.name}[/]  {report.replica}")
    for split in report.histories:
        out(f"  [bold red]more than one history:[/] {split}")
    if not report.restorable_points:
        what = (f"{report.files} LTX files ({report.bytes / 1024:.0f} KiB) but no chain from a snapshot"
                if report.files else "no LTX files for this database")
        out(f"  no restorable point: the replica holds {what}")
        return
    out(f"  restorable from {report.earliest_time} (txid {report.earliest_txid})")
    out(f"              to {report.latest_time} (txid {report.latest_txid})")
    out(f"  found: {_span(report.window_seconds)} of history, {report.restorable_points} restorable points, "
        f"{report.files} LTX files ({report.bytes / 1024:.0f} KiB); litestream.yml keeps up to "
        f"snapshot.retention = {human_duration(retention.total_seconds())}")
    out("  precision:")
    for tier in report.tiers:
        span = tier.from_time if tier.points == 1 else f"{tier.from_time} .. {tier.to_time}"
        out(f"    {tier.what:26s} {tier.points:6d} point{'s' if tier.points != 1 else ' '}  {span}")
    if report.around:
        if report.lands is None:
            out(f"  nothing restorable before {report.around}: it is older than the earliest point")
        else:
            out(f"  `restore --at {report.around}` lands on txid {report.lands.txid}, synced "
                f"{human_duration(report.lands.seconds_before or 0)} before it")
        out(f"  points around {report.around}:")
    else:
        out("  newest points:")
    out(f"    {'txid':16s}  {'synced (UTC)':24s}  {'vs T' if report.around else '':18s}  levels")
    for point in report.points:
        rel = ""
        if point.seconds_before is not None:
            rel = (f"{human_duration(point.seconds_before)} before" if point.seconds_before > 0
                   else f"{human_duration(-point.seconds_before)} after")
        mark = "  <- --at lands here" if report.lands is not None and point.txid == report.lands.txid else ""
        out(f"    {point.txid}  {point.synced_at:24s}  {rel:18s}  {_levels(point.levels)}{mark}")
    pick = report.lands or (report.points[-1] if report.points else None)
    if pick is not None:
        out(f"  restore one exactly: edgehost restore {cli_ref} --txid {pick.txid}")


def _levels(levels: list[int]) -> str:
    return " ".join("snapshot" if lv == 9 else f"L{lv}" for lv in levels)
