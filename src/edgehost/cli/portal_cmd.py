"""`edgehost portal`."""

from __future__ import annotations

import typer

from edgehost.settings import load_settings
from edgehost.cli import app


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
