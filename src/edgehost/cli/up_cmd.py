"""`edgehost up`."""

from __future__ import annotations

import typer

from edgehost.settings import load_settings
from edgehost.cli import app


@app.command("up")
def up(
    take_over: bool = typer.Option(False, "--take-over", help="Take the writer lease from another machine that "
                                   "still holds it. Only when that machine is gone: it stops writing at its next renewal."),
) -> None:
    """Run everything in the foreground: restore what is missing, then litestream, the portal and cloudflared.

    Takes the replica's writer lease first (one writer per replica). Stops in reverse order on
    SIGTERM/SIGINT after a final sync of every database (a second signal hurries it); SIGHUP
    reopens the log files. Exit 0 after a clean stop, 2/3 when it could not start, 4 when
    litestream crash-looped, 5 when a final sync did not land, 6 when another machine holds the
    writer lease (or took it while this one ran).
    """
    from edgehost.supervisor import Supervisor

    code = Supervisor(load_settings(), take_over=take_over).run()
    raise typer.Exit(code)
