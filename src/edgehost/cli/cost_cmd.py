"""`edgehost cost`."""

from __future__ import annotations

import typer
from rich.table import Table

from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json


@app.command("cost")
def cost_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """Estimate this month's Cloudflare R2 bill from what this machine really does.

    Reads the running litestream's replica operation counters (its metrics on
    127.0.0.1:litestream_metrics_port), adds the LISTs litestream does not count and the kit's lease
    renewals, lists the replica once for its size, and prices the month with R2's published prices
    (Class A $4.50/million, Class B $0.36/million, storage $0.015/GB-month; free tier 1M A, 10M B,
    10 GB-month). Exits 3 when litestream is not running. See docs/cost.md.
    """
    from edgehost.ops import cost as cost_lib

    settings = load_settings()
    report = cost_lib.estimate(settings)
    if as_json:
        emit_json(report)
        return
    window = report["window"]["seconds"]
    console.print(f"window: {window / 60:.1f} min since litestream started, {report['databases']} databases, "
                  f"replica {report['replica_type']}")
    month = report["requests_per_month"]
    table = Table("operation", "class", "in window", "per month")
    for op, n in sorted(month["by_operation"].items()):
        table.add_row(op, cost_lib.CLASS_OF.get(op, "A"), f"{report['requests_in_window'][op]:,}", f"{n:,}")
    for cls in ("A", "B", "free"):
        table.add_row(f"class {cls}", "", "", f"{month['by_class'][cls]:,}", style="bold")
    console.print(table)
    storage = report["storage"]
    console.print("storage: " + ("not listed" if storage["bytes"] is None else f"{storage['gb']:.4f} GB"))
    b = report["bill"]
    console.print(f"bill this month: ${b['before_free_tier']:.2f} before the free tier, "
                  f"[bold]${b['after_free_tier']:.2f}[/] after (prices of {report['prices']['as_of']}, "
                  f"{report['prices']['source']})", highlight=False)
    if report["note"]:
        console.print(f"[yellow]note:[/] {report['note']}", highlight=False)
