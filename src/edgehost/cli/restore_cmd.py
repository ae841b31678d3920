"""`edgehost points` and `edgehost restore`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import layout, litestream
from ..errors import BadInput, ExitStatus
from ..replica import replica_keys
from ..restore import (RestorePlan, latest_by_key, RestoreReport, execute_in_place, execute_plan, parse_time, parse_txid, point_error,
                       restore_plan, restore_window)
from ..settings import Settings, load_settings
from . import app
from .output import console, emit_json


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
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """The restore window of one database: earliest and latest restorable time and txid, from the replica."""
    if bool(slug) == global_db:
        raise BadInput("give one property slug or --global")
    settings = load_settings()
    repl = litestream.replication(settings)
    key = select_keys(settings, repl, [slug] if slug else [], global_db, False)[0]
    binary, _ = litestream.check_binary(settings.environ)
    env, _ = litestream.child_environ(settings)
    window = restore_window(binary, env, repl.restore_url(layout.ref_for(settings, key)), layout.ref_for(settings, key).label)
    if as_json:
        emit_json(window)
        return
    console.print(f"[bold]{window.name}[/]  {repl.replica_url(layout.ref_for(settings, key))}")
    console.print(f"  earliest  {window.earliest_time}  txid {window.earliest_txid}")
    console.print(f"  latest    {window.latest_time}  txid {window.latest_txid}")
    console.print(f"  {window.files} LTX files, {window.bytes / 1024:.0f} KiB "
                  f"(window kept: snapshot.retention {repl.config.snapshot_retention})")


def _print_plan(plan: RestorePlan) -> None:
    where = {"scratch": "a new scratch directory", "to": "the directory given with --to",
             "in-place": "the LIVE data dir (current files kept under _replaced/)"}[plan.mode]
    console.print(f"[bold]plan:[/] restore {len(plan.targets)} database(s) at {plan.point} into {where}: {plan.root}")
    for target in plan.targets[:20]:
        console.print(f"  {target.name:24s} -> {target.out}")
    if len(plan.targets) > 20:
        console.print(f"  ... and {len(plan.targets) - 20} more")


def _check_point(plan: RestorePlan, binary, env) -> None:
    """Refuse a point litestream cannot restore for any target, before anything is written."""
    if plan.at is None and plan.txid is None:
        return
    from concurrent.futures import ThreadPoolExecutor

    def check(target):
        return target.name, point_error(binary, env, target.url, txid=plan.txid, timestamp=plan.at)

    with ThreadPoolExecutor(max_workers=plan.parallel) as pool:
        for name, error in pool.map(check, plan.targets):
            if error:
                raise BadInput(f"{name}: cannot restore {plan.point}: {error}")


@app.command("restore")
def restore(
    slugs: Optional[List[str]] = typer.Argument(None, help="Property slugs to restore."),
    global_db: bool = typer.Option(False, "--global", help="Restore the global study database."),
    all_dbs: bool = typer.Option(False, "--all", help="Every database in the replica (found by listing it)."),
    at: Optional[str] = typer.Option(None, "--at", help="Point in time: RFC 3339 or relative (-15m, -2h, -1d)."),
    txid: Optional[str] = typer.Option(None, "--txid", help="Restore up to this transaction id (hex), one database."),
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
    _check_point(plan, binary, env)
    if in_place:
        from ..supervisor import SupervisorClient

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
            mark = "[green]ok[/]" if result.ok else f"[red]FAILED[/] {result.error}"
            progress.console.print(f"  {result.name:24s} {mark}" + (f"  txid {result.txid}  {result.seconds:.2f}s" if result.ok else ""))

        if in_place:
            from ..supervisor import SupervisorClient

            report = execute_in_place(settings, plan, binary, env, SupervisorClient(settings.supervisor_socket), on_result)
        else:
            latest = latest_by_key(settings, repl, keys) if when is None and tx is None and len(keys) >= 4 else None
            report = execute_plan(plan, binary, env, on_result, latest)
    _finish(report, as_json)


def _finish(report: RestoreReport, as_json: bool) -> None:
    failed = [r for r in report.results if not r.ok]
    if as_json:
        emit_json({"ok": report.ok, "root": report.plan.root, "mode": report.plan.mode, "point": report.plan.point,
                   "seconds": report.seconds, "replaced_dir": report.replaced_dir, "results": report.results})
    console.print(f"{len(report.results) - len(failed)}/{len(report.results)} restored in {report.seconds:.2f}s "
                  f"into {report.plan.root}")
    if report.replaced_dir:
        console.print(f"previous files kept in {report.replaced_dir}")
    if failed:
        raise typer.Exit(int(ExitStatus.CHECK_FAILED))
