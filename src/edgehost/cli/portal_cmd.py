"""`edgehost portal`, `edgehost property ...`, `edgehost migrate`."""

from __future__ import annotations

import typer

from edgehost.portal import store
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json

property_app = typer.Typer(help="Create and list properties (one database each).", no_args_is_help=True)
app.add_typer(property_app, name="property")


@app.command("portal")
def portal(
    host: str = typer.Option(None, help="Address to bind (default from settings: 127.0.0.1)."),
    port: int = typer.Option(None, help="Port to bind (default from settings: 8080)."),
) -> None:
    """Serve the reference portal (the supervisor's default portal command)."""
    from dataclasses import replace

    from edgehost.portal.app import serve

    settings = load_settings()
    portal_settings = settings.portal
    if host:
        portal_settings = replace(portal_settings, host=host)
    if port:
        portal_settings = replace(portal_settings, port=port)
    serve(replace(settings, portal=portal_settings))


@property_app.command("add")
def property_add(slug: str = typer.Argument(..., help="Lowercase letters, digits and hyphens; 1-63 characters.")) -> None:
    """Create a property: its directory and a migrated database.

    Refused when the replica already holds a property of that name (restore it instead: the
    message gives the command) or cannot be asked.
    """
    from edgehost.ops.provision import check_new_property

    settings = load_settings()
    check_new_property(settings, slug)
    path = store.create_property(settings, slug)
    console.print(f"created property [bold]{slug}[/] at {path}")


@property_app.command("list")
def property_list(as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """List the properties on disk."""
    from edgehost.engine import layout

    slugs = layout.local_slugs(load_settings())
    if as_json:
        emit_json({"properties": slugs})
        return
    for slug in slugs:
        console.print(slug)


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
