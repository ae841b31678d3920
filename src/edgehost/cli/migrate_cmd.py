"""`edgehost migrate`."""

from __future__ import annotations

from edgehost.portal import store
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console


@app.command("migrate")
def migrate() -> None:
    """Bring every database to the latest schema (a no-op when current).

    First restores every database the replica holds and the disk lacks (a new machine gets its data
    back, never an empty database over it); creates the global DB only when the replica holds none.
    """
    from edgehost.ops.provision import prepare_data_dir

    settings = load_settings()
    prepare_data_dir(settings, lambda line: console.print(line, markup=False, highlight=False))
    for label, applied in store.migrate_all(settings):
        console.print(f"{label}: {', '.join(applied) if applied else 'up to date'}")
