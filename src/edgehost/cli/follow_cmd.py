"""`edgehost follow` and `edgehost promote`."""

from __future__ import annotations

import typer

from edgehost.errors import BadInput
from edgehost.ops.promotion import PROMOTE_TIMEOUT
from edgehost.settings import load_settings
from edgehost.cli import app


@app.command("follow")
def follow_cmd(
    interval: str = typer.Option("1s", "--interval", help="How often the replica is listed (one listing for every database)."),
) -> None:
    """Run this machine as a warm standby: keep every database of the replica restored and current
    under the data dir, and serve the portal read-only (writes get 503 naming the primary).

    Each interval lists the replica once, downloads only new files into state/standby-mirror, and one
    `litestream restore -f` per database applies them. New properties are followed as they appear.
    `edgehost status` shows each database's lag. `edgehost promote` turns this machine into the
    primary. Runs in the foreground until SIGTERM (launchd or systemd run it; docs/standby.md).
    """
    from edgehost.ops.follow import follow
    from edgehost.ops.restore import parse_duration

    settings = load_settings()
    raise typer.Exit(follow(settings, parse_duration(interval, "--interval")))


@app.command("promote")
def promote_cmd(
    no_wait: bool = typer.Option(False, "--no-wait", help="Do not wait for the old primary's next lease renewal "
                                                          "(only when it is known to be down)."),
    timeout: float = typer.Option(PROMOTE_TIMEOUT, "--timeout", help="Seconds to wait for the whole promotion (the wait for a live old primary alone is up to 605 s with the default lease settings)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Fail over to this standby: take the writer lease (the old primary is fenced or refused),
    wait until every database has applied the replica's newest txid, stop following and run as the
    primary: litestream replicating, the portal writable, an alert naming the new primary.

    Talks to the `edgehost follow` running here; the report gives the seconds each step took.
    Exit 0 when the portal is writable, 1 when the promotion failed (the standby keeps following).
    """
    from edgehost.ops.promotion import request_promotion, show_report, valid_timeout

    if not valid_timeout(timeout):
        raise BadInput(f"--timeout must be a positive number of seconds (got {timeout:g})")
    settings = load_settings()
    code = show_report(request_promotion(settings.supervisor_socket, no_wait, timeout), as_json)
    if code:
        raise typer.Exit(code)
