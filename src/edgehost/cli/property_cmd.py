"""`edgehost property add` and `edgehost property list`."""

from __future__ import annotations

import typer
from rich.markup import escape

from edgehost.engine import schema
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json

property_app = typer.Typer(help="Create and list properties (one database each).", no_args_is_help=True)
app.add_typer(property_app, name="property")


@property_app.command("add")
def property_add(
    slug: str = typer.Argument(..., help="Lowercase letters, digits and hyphens; 1-63 characters."),
    as_json: bool = typer.Option(False, "--json", help="Print {\"slug\", \"path\"} as JSON on stdout."),
) -> None:
    """Create a property: its directory and a migrated database.

    Refused when the replica already holds a property of that name (restore it instead: the
    message gives the command) or cannot be asked.
    """
    from edgehost.ops.provision import check_new_property

    settings = load_settings()
    check_new_property(settings, slug)
    path = schema.create_property(settings, slug)
    if as_json:
        emit_json({"slug": slug, "path": str(path)})
    console.print(f"created property [bold]{slug}[/] at {escape(str(path))}")


@property_app.command("list")
def property_list(as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """List the properties on disk, one slug a line on stdout."""
    from edgehost.engine import layout

    slugs = layout.local_slugs(load_settings())
    if as_json:
        emit_json({"properties": slugs})
        return
    for slug in slugs:
        typer.echo(slug)
