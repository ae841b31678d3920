"""`edgehost alert test`."""

from __future__ import annotations

import typer
from rich.markup import escape

from edgehost.errors import BadInput, ExitStatus
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json

alert_app = typer.Typer(help="Alerts: ntfy, a JSON webhook and a healthchecks-style dead-man's switch.",
                        no_args_is_help=True)
app.add_typer(alert_app, name="alert")


@alert_app.command("test")
def alert_test(as_json: bool = typer.Option(False, "--json", help="Print each channel's result as JSON on stdout.")) -> None:
    """Send a test notice to every configured channel (ntfy, webhook) and ping the healthchecks URL.

    Channels come from [alerts] in edgehost.toml or, better, the env file: EDGEHOST_NTFY_URL,
    EDGEHOST_NTFY_TOKEN, EDGEHOST_WEBHOOK_URL, EDGEHOST_HEALTHCHECKS_URL. Exit 0 when every channel
    took the notice, 1 when one failed, 2 when none is configured. URLs are never printed.
    """
    from edgehost.ops import alerts

    settings = load_settings()
    results = alerts.send_test(settings, log=lambda _line: None)
    if not results:
        raise BadInput("no alert channel is configured: set EDGEHOST_NTFY_URL, EDGEHOST_WEBHOOK_URL or "
                       "EDGEHOST_HEALTHCHECKS_URL in the env file (docs/alerts.md)")
    failed = [r for r in results if not r["ok"]]
    if as_json:
        emit_json({"ok": not failed, "channels": results})
    else:
        for r in results:
            verdict = "[green]sent[/]" if r["ok"] else f"[red]FAILED[/] {escape(r['error'])}"
            console.print(f"{r['channel']}: {verdict}")
    if failed:
        raise typer.Exit(int(ExitStatus.CHECK_FAILED))
