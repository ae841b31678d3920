"""`edgehost points` and `edgehost restore`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgehost.engine import layout, litestream
from edgehost.errors import BadInput, ExitStatus
from edgehost.engine.replica import replica_keys
from edgehost.ops.restore import (PointsReport, RestorePlan, RestorePoint, RestoreReport, execute_in_place, execute_plan,
                       format_time, human_duration, parse_time, parse_txid, resolve_plan, restore_plan, restore_points)
from edgehost.settings import Settings, load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json


def select_keys(settings: Settings, repl: litestream.Replication, slugs: list[str], global_db: bool,
                all_dbs: bool) -> list[str]:
    """The databases a command names, checked against what the replica holds."""
    for slug in slugs:
        layout.check_slug(slug)
    if all_dbs and (slugs or global_db):
        raise BadInput("--all already means every database: drop the slugs and --global")
    if not (slugs or global_db or all_dbs):
        raise BadInput("say which databases: one or more slugs, --global, or --all")
    available = replica_keys(settings, repl.tenants_root, repl.global_entry.replica_url)
    if all_dbs:
        if not available:
            raise BadInput(f"the replica at {settings.replica_url} holds no databases")
        return available
    wanted = ([layout.GLOBAL] if global_db else []) + list(dict.fromkeys(slugs))
    missing = [k for k in wanted if k not in available]
    if missing:
        names = ", ".join("the global DB" if k == layout.GLOBAL else repr(k) for k in missing)
        raise BadInput(f"unknown in the replica at {settings.replica_url}: {names}")
    return wanted


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
    second while writing) for the last 5-10 minutes, then only the L1 compaction boundaries (one per
    5-minute mark with writes) back to the oldest snapshot kept (6-7 days). Without --around: the
    window, its precision tiers and the newest points. With --around T: the points nearest T, marking
    the one `restore --at T` lands on (the newest synced before T); restore any of them exactly with
    `edgehost restore SLUG --txid HEX`. Times are when Litestream synced the point (its LTX
    timestamp, UTC, milliseconds). One LIST of the database's LTX files, plus on S3 a HEAD per point shown.
    """
    if bool(slug) == global_db:
        raise BadInput("give one property slug or --global")
    settings = load_settings()
    when = parse_time(around) if around else None
    repl = litestream.replication(settings)
    key = select_keys(settings, repl, [slug] if slug else [], global_db, False)[0]
    ref = layout.ref_for(settings, key)
    env, _ = litestream.child_environ(settings)
    report = restore_points(repl.restore_url(ref), env, ref.label, replica=repl.replica_url(ref), around=when,
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


def _print_plan(plan: RestorePlan) -> None:
    where = {"scratch": "a new scratch directory", "to": "the directory given with --to",
             "in-place": "the LIVE data dir (current files kept under _replaced/)"}[plan.mode]
    console.print(f"[bold]plan:[/] restore {len(plan.targets)} database(s) at {plan.point} into {where}: {plan.root}",
                  highlight=False, soft_wrap=True)
    for target in plan.targets[:20]:
        console.print(f"  {target.name:24s} -> {target.out}" + (f"  {_point_text(target.point)}" if target.point else ""),
                      highlight=False, soft_wrap=True)
    if len(plan.targets) > 20:
        console.print(f"  ... and {len(plan.targets) - 20} more")


def _point_text(point: RestorePoint) -> str:
    text = f"txid {point.txid}, synced {point.synced_at}"
    return text + (f" ({human_duration(point.seconds_before)} before --at)" if point.seconds_before is not None else "")


@app.command("restore")
def restore(
    slugs: Optional[List[str]] = typer.Argument(None, help="Property slugs to restore."),
    global_db: bool = typer.Option(False, "--global", help="Restore the global study database."),
    all_dbs: bool = typer.Option(False, "--all", help="Every database in the replica (found by listing it)."),
    at: Optional[str] = typer.Option(
        None, "--at", help="Restore the newest point synced before this time: RFC 3339 or relative (-15m, -2h, -1d)."),
    txid: Optional[str] = typer.Option(
        None, "--txid", help="Restore exactly this point (hex txid from `edgehost points`); one database."),
    to: Optional[Path] = typer.Option(None, "--to", help="Write into this directory (data-dir layout); never overwrites."),
    in_place: bool = typer.Option(False, "--in-place", help="Replace the live databases; needs `edgehost up` running."),
    parallel: int = typer.Option(8, "--parallel", help="Databases restored at once (each mostly waits on the network)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and stop."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Point-in-time restore of properties, the global DB or everything, with the real litestream binary.

    By default into a new scratch directory (printed) with the data dir's layout. With --in-place the
    supervisor stops the portal, each restored copy passes PRAGMA integrity_check, the current file
    moves to <data_dir>/_replaced/<timestamp>/ (never deleted), and replication carries on from the
    restored state. Exit 0 when every database restored, 1 when any failed.

    A restore lands only on a restorable point (see `edgehost points`): --at T takes the newest point
    Litestream synced before T, never one after T. That misses the last second before T and, for a T
    older than 5-10 minutes (shipped litestream.yml), lands on the 5-minute compaction boundary before
    it. The report names, for every database, the txid restored, when it was synced and, with --at,
    how long before T that is (--json: txid, synced_at, seconds_before_at, levels, newest, note).
    """
    settings = load_settings()
    when = parse_time(at) if at else None
    tx = parse_txid(txid) if txid else None
    if when is not None and tx is not None:
        raise BadInput("--at and --txid exclude each other: give one")
    repl = litestream.replication(settings)
    keys = select_keys(settings, repl, slugs or [], global_db, all_dbs)
    plan = restore_plan(settings, repl, keys, to=to, in_place=in_place, at=when, txid=tx, parallel=parallel)
    binary, _ = litestream.check_binary(settings.environ)
    env, _ = litestream.child_environ(settings)
    resolve_plan(plan, env)  # refuses a point some database does not have, before anything is written
    if in_place:
        from edgehost.supervisor import SupervisorClient

        SupervisorClient(settings.supervisor_socket).status()  # refuse now, before the plan, if none runs
    _print_plan(plan)
    if dry_run:
        if as_json:
            emit_json({"plan": plan, "dry_run": True})
        return

    with Progress(TextColumn("restoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=len(plan.targets) < 2) as progress:
        task = progress.add_task("restore", total=len(plan.targets))

        def on_result(result) -> None:
            progress.advance(task)
            if not result.ok:
                progress.console.print(f"  {result.name:24s} [red]FAILED[/] {result.error}", highlight=False, soft_wrap=True)
                return
            point = (f"txid {result.txid}, synced {result.synced_at}" if result.synced_at else f"txid {result.txid}")
            if result.seconds_before_at is not None:
                point += f" ({human_duration(result.seconds_before_at)} before --at)"
            progress.console.print(f"  {result.name:24s} [green]ok[/]  {point}  {result.seconds:.2f}s"
                                   + (f"  [yellow]{result.note}[/]" if result.note else ""), highlight=False, soft_wrap=True)

        if in_place:
            from edgehost.supervisor import SupervisorClient

            report = execute_in_place(settings, plan, binary, env, SupervisorClient(settings.supervisor_socket), on_result)
        else:
            report = execute_plan(plan, binary, env, on_result)
    _finish(report, as_json)


def _finish(report: RestoreReport, as_json: bool) -> None:
    failed = [r for r in report.results if not r.ok]
    if as_json:
        emit_json({"ok": report.ok, "root": report.plan.root, "mode": report.plan.mode, "point": report.plan.point,
                   "seconds": report.seconds, "replaced_dir": report.replaced_dir, "results": report.results})
    console.print(f"{len(report.results) - len(failed)}/{len(report.results)} restored in {report.seconds:.2f}s "
                  f"into {report.plan.root}")
    # results come in the order of the plan's targets
    restored = [(t, r) for t, r in zip(report.plan.targets, report.results) if r.ok and r.seconds_before_at is not None]
    behind = [(t, r) for t, r in restored if not r.newest]
    if restored and report.plan.at is not None:
        text = f"each database is at the newest point synced before {format_time(report.plan.at)}"
        if behind:
            target, worst = max(behind, key=lambda tr: tr[1].seconds_before_at)
            ref = "--global" if target.key == layout.GLOBAL else target.key
            text += (f"; the farthest back is {worst.name}, {human_duration(worst.seconds_before_at)} before: "
                     f"see `edgehost points {ref} --around {format_time(report.plan.at)}`")
        console.print(text, highlight=False, soft_wrap=True)
    if report.replaced_dir:
        console.print(f"previous files kept in {report.replaced_dir}")
    if failed:
        raise typer.Exit(int(ExitStatus.CHECK_FAILED))
