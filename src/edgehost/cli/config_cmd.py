"""`edgehost config check`."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from edgehost.ops.config_report import config_report
from edgehost.cli import app
from edgehost.cli.output import console, emit_json

config_app = typer.Typer(help="Inspect the kit's settings and litestream.yml.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def check(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout.")) -> None:
    """Parse edgehost.toml, the env file and litestream.yml; list the databases and where each replicates.

    Shows every setting with the source that won it (default, edgehost.toml, env file, environment);
    secrets are never shown. Warns (exit 0) when R2/S3 keys are empty or still example values.
    Bad YAML, a missing environment variable or an unknown key exits 2 with one line naming the file and key.
    """
    report = config_report()
    if as_json:
        emit_json(report)
        return
    console.print(f"home             {report.home}")
    console.print(f"litestream.yml   {report.litestream_config}")
    console.print(f"data dir         {report.data_dir}")
    console.print(f"replica          {report.replica_root} ({report.replica_kind}), "
                  f"point-in-time window {report.snapshot_retention_hours:g}h")
    console.print(f"properties       {report.properties_watch} (watched)")
    table = Table("database", "path", "replica", "on disk")
    for db in report.databases:
        table.add_row(db.name, db.path, db.replica_url, "yes" if db.exists else "no")
    console.print(table)
    keys = Table("setting", "value", "from")
    for line in report.settings:
        keys.add_row(line.key, escape(line.value) or "-", line.source, style=None if line.source == "default" else "bold")
    console.print(keys)
    for warning in report.warnings:
        console.print(f"[yellow]warn:[/] {escape(warning)}", highlight=False, soft_wrap=True)
