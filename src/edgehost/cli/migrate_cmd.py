"""`edgehost migrate`."""

from __future__ import annotations

import typer

from edgehost.engine import schema
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json


@app.command("migrate")
def migrate(as_json: bool = typer.Option(False, "--json", help="Print what was restored and applied as JSON on stdout.")) -> None:
    """Bring every database to the latest schema (a no-op when current).

    First restores every database the replica holds and the disk lacks (a new machine gets its data
    back, never an empty database over it); creates the global DB only when the replica holds none.
    """
    from edgehost.ops.provision import prepare_data_dir

    settings = load_settings()
    restored = prepare_data_dir(settings, lambda line: console.print(line, markup=False, highlight=False))
    done = schema.migrate_all(settings)
    if as_json:
        emit_json({"restored": [r.name for r in restored],
                   "databases": [{"name": label, "applied": applied} for label, applied in done]})
    for label, applied in done:
        console.print(f"{label}: {', '.join(applied) if applied else 'up to date'}", markup=False, highlight=False)
