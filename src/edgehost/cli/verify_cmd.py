"""`edgehost verify`."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgehost.errors import BadInput, ExitStatus
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json, short_txid


@app.command("verify")
def verify(
    slugs: Optional[List[str]] = typer.Argument(None, help="Property slugs to verify."),
    global_db: bool = typer.Option(False, "--global", help="Verify the global study database."),
    all_dbs: bool = typer.Option(False, "--all", help="Every database on disk (the default when none is named)."),
    parallel: int = typer.Option(8, "--parallel", help="Databases verified at once."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
) -> None:
    """Prove each database restores whole and fresh from its replica.

    Writes a sentinel into a kit-owned table, pauses writers for one local Litestream sync to pin
    the live snapshot at txid N, forces the upload, restores exactly N with litestream and checks
    integrity, foreign keys, schema, the sentinel and a content hash against the live snapshot.
    Needs `edgehost up` (or litestream with its control socket) running; without it every database
    is reported stale. Exit 0 when all pass, 1 when any fails.
    """
    from edgehost.ops import verify as verify_lib

    if all_dbs and (slugs or global_db):
        raise BadInput("--all already means every database: drop the slugs and --global")
    settings = load_settings()
    refs = verify_lib.targets(settings, slugs or [], global_db, all_dbs)
    if not refs:
        raise BadInput(f"no databases under {settings.data_dir} to verify")
    with Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=len(refs) < 2) as progress:
        task = progress.add_task("verify", total=len(refs))
        results, seconds = verify_lib.verify_all(settings, refs, parallel=parallel,
                                                 on_result=lambda _r: progress.advance(task))
    failed = [r for r in results if not r.ok]
    from edgehost.ops.state import record_verify

    record_verify(settings, len(results), [f"{r.name}: {r.failed_check}: {r.detail}" for r in failed])
    if as_json:
        emit_json({"ok": not failed, "seconds": seconds, "results": results})
    else:
        console.print(verify_table(results))
        for r in failed:
            console.print(f"[red]FAIL[/] {r.name}: {r.failed_check}: {r.detail}")
        console.print(f"{len(results) - len(failed)}/{len(results)} verified in {seconds:.2f}s")
    if failed:
        raise typer.Exit(int(ExitStatus.CHECK_FAILED))


def verify_table(results: list) -> Table:
    """One row a database, readable at 80 columns: short txid and hash; names and verdicts wrap, never cut."""
    table = Table("database", "verdict", "txid", "rows", "RPO", "restore", "pause", "hash")
    table.columns[0].overflow = table.columns[1].overflow = "fold"
    for r in results:
        verdict = "[green]OK[/]" if r.ok else f"[red]FAIL[/] {r.failed_check}"
        rows = sum(r.rows.values()) if r.rows else 0
        rpo = "-" if r.rpo_seconds is None else f"{r.rpo_seconds:.2f}s"
        table.add_row(r.name, verdict, short_txid(r.txid), str(rows), rpo, f"{r.restore_seconds:.2f}s",
                      f"{r.writer_wait_ms:.0f}ms", r.hash[:8] or "-")
    return table
