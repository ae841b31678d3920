"""`edgehost portal`."""

from __future__ import annotations

import os
import sys

import typer

from edgehost.settings import load_settings
from edgehost.cli import app


@app.command("portal")
def portal(
    host: str = typer.Option(None, help="Address to bind (default from settings: 127.0.0.1)."),
    port: int = typer.Option(None, help="Port to bind (default from settings: 8080)."),
) -> None:
    """Serve the reference portal (the supervisor's default portal command).

    Runs `python -m edgehost.portal` in this process (the kit never imports the app); --host and
    --port override the settings for this run only.
    """
    settings = load_settings()  # a bad setting stops here, in one line
    env = dict(os.environ)
    if host:
        env["EDGEHOST_PORTAL_HOST"] = host
    if port:
        env["EDGEHOST_PORTAL_PORT"] = str(port)
    load_settings(settings.home, env)  # and so does a bad --port
    os.execve(sys.executable, [sys.executable, "-m", "edgehost.portal"], env)
