"""`edgehost restore`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from edgehost.engine import layout, litestream
from edgehost.errors import BadInput, ExitStatus
from edgehost.ops.recovery import RestoreEngine
from edgehost.ops.restore import (RestorePlan, RestorePoint, RestoreReport, execute_in_place, execute_plan, format_time,
                                  human_duration, parse_time, parse_txid, resolve_plan, restore_plan)
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json
from edgehost.cli.targets import select_keys


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
    parallel: int = typer.Option(8, "--parallel", help="Databases applied at once by litestream (downloads run on 16 threads)."),
    source: Optional[Path] = typer.Option(
        None, "--from", help="Restore from a local mirror (`edgehost mirror --to DIR`) instead of the replica: no network needed."),
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
    older than 10-20 minutes (shipped litestream.yml), lands on the 10-minute compaction boundary before
    it. The report names, for every database, the txid restored, when it was synced and, with --at,
    how long before T that is (--json: txid, synced_at, seconds_before_at, levels, newest, note).
    """
    settings = load_settings()
    when = parse_time(at) if at else None
    tx = parse_txid(txid) if txid else None
    if when is not None and tx is not None:
        raise BadInput("--at and --txid exclude each other: give one")
    ls = litestream.Litestream.from_settings(settings)
    repl = ls.replication
    if source is not None and not source.is_dir():
        raise BadInput(f"--from {source}: no such directory (make one with `edgehost mirror --to DIR`)")
    with RestoreEngine(settings, ls, source=source) as engine:
        where = f"the mirror at {source}" if source is not None else ""
        keys = select_keys(settings, repl, slugs or [], global_db, all_dbs, available=engine.keys(), where=where)
        plan = restore_plan(settings, repl, keys, to=to, in_place=in_place, at=when, txid=tx, parallel=parallel)
        resolve_plan(plan, engine)  # refuses a point some database does not have, before anything is written
        if in_place:
            from edgehost.supervisor import SupervisorClient

            SupervisorClient(settings.supervisor_socket).status()  # refuse now, before the plan, if none runs
        _print_plan(plan)
        if dry_run:
            if as_json:
                emit_json({"plan": plan, "dry_run": True})
            return
        total = sum(engine.planned_bytes(t.key, t.point) for t in plan.targets)
        report = _run(settings, plan, engine, total, in_place)
        stats = engine.refresh_stats()
    _finish(report, as_json, stats)


def _run(settings, plan: RestorePlan, engine: RestoreEngine, total: int, in_place: bool) -> RestoreReport:
    columns = ([TextColumn("restoring"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn()]
               if total else [TextColumn("restoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()])
    with Progress(*columns, console=console, transient=True, disable=len(plan.targets) < 2 and not total) as progress:
        task = progress.add_task("restore", total=total or len(plan.targets))
        if total:
            engine.on_bytes = lambda n: progress.advance(task, n)

        def on_result(result) -> None:
            if not total:
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

            return execute_in_place(settings, plan, engine, SupervisorClient(settings.supervisor_socket), on_result)
        return execute_plan(plan, engine, on_result)


def _finish(report: RestoreReport, as_json: bool, stats) -> None:
    failed = [r for r in report.results if not r.ok]
    if as_json:
        emit_json({"ok": report.ok, "root": report.plan.root, "mode": report.plan.mode, "point": report.plan.point,
                   "seconds": report.seconds, "replaced_dir": report.replaced_dir, "requests": stats,
                   "results": report.results})
    fetched = f", {stats.bytes / 1e6:.1f} MB in {stats.gets} GETs, {stats.list_pages} LIST page(s)" if stats.gets else ""
    console.print(f"{len(report.results) - len(failed)}/{len(report.results)} restored in {report.seconds:.2f}s "
                  f"into {report.plan.root}{fetched}")
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
