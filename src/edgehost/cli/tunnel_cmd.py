"""`edgehost tunnel render` and `edgehost tunnel lint`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from edgehost.deploy import tunnel
from edgehost.errors import BadInput, ExitStatus
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import console, emit_json

tunnel_app = typer.Typer(help="Render and lint cloudflared's config.yml (Cloudflare Tunnel + Access).", no_args_is_help=True)
app.add_typer(tunnel_app, name="tunnel")


def _pick(value, env: dict, name: str, what: str):
    """An option's value, else the variable from the environment or edgehost.env, else a BadInput naming both."""
    if value not in (None, "", []):
        return value
    if env.get(name):
        return env[name]
    raise BadInput(f"{what} is needed: pass it as an option or set {name}")


@tunnel_app.command("render")
def render(
    tunnel_id: Optional[str] = typer.Option(
        None, "--tunnel-id", help="The tunnel's UUID (`cloudflared tunnel list`). Env: EDGEHOST_TUNNEL_ID."),
    credentials_file: Optional[Path] = typer.Option(
        None, "--credentials-file",
        help="Path of the tunnel's credentials JSON (only the path is written). Env: EDGEHOST_TUNNEL_CREDENTIALS."),
    hostnames: Optional[List[str]] = typer.Option(
        None, "--hostname",
        help="A public hostname routed to the portal; repeat or comma-separate. Env: EDGEHOST_TUNNEL_HOSTNAMES."),
    team: Optional[str] = typer.Option(
        None, "--team", help="Access team name (<team>.cloudflareaccess.com). Env: EDGEHOST_ACCESS_TEAM."),
    aud: Optional[str] = typer.Option(None, "--aud", help="The Access application's AUD tag. Env: EDGEHOST_ACCESS_AUD."),
    portal_port: Optional[int] = typer.Option(None, "--portal-port", help="Portal port on 127.0.0.1 (default: settings)."),
    metrics_port: Optional[int] = typer.Option(
        None, "--metrics-port",
        help="cloudflared metrics port on 127.0.0.1: must be tunnel.metrics_port, the port the supervisor probes "
             "(the default); change that setting in edgehost.toml instead."),
    protocol: str = typer.Option(tunnel.DEFAULT_PROTOCOL, "--protocol", help="Edge transport: auto, quic or http2."),
    status_hostname: Optional[str] = typer.Option(
        None, "--status-hostname",
        help="Also publish the supervisor's status page (127.0.0.1:<metrics_port>) on this hostname, behind the "
             "same Access application. Env: EDGEHOST_TUNNEL_STATUS_HOSTNAME."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
) -> None:
    """Render a locally-managed tunnel config: one Access-guarded rule per hostname (and the status page's
    with --status-hostname), then a 404 catch-all."""
    settings = load_settings()
    env = dict(settings.environ)
    aud_value = str(_pick(aud, env, "EDGEHOST_ACCESS_AUD", "the Access AUD tag"))
    if "," in aud_value:
        raise BadInput("render takes one AUD tag (the application the hostnames belong to)")
    names = tunnel.hostnames_from_text(hostnames or [env.get("EDGEHOST_TUNNEL_HOSTNAMES", "")])
    if not names:
        raise BadInput("a hostname is needed: pass --hostname or set EDGEHOST_TUNNEL_HOSTNAMES")
    creds = Path(os.path.expanduser(str(_pick(credentials_file, env, "EDGEHOST_TUNNEL_CREDENTIALS", "--credentials-file"))))
    spec = tunnel.TunnelSpec(
        tunnel_id=str(_pick(tunnel_id, env, "EDGEHOST_TUNNEL_ID", "--tunnel-id")),
        credentials_file=creds if creds.is_absolute() else settings.home / creds,
        hostnames=names,
        team_name=str(_pick(team, env, "EDGEHOST_ACCESS_TEAM", "the Access team name")).strip(),
        aud_tag=aud_value.strip(),
        portal_port=portal_port or settings.portal.port,
        metrics_port=tunnel.render_metrics_port(metrics_port, settings.tunnel.metrics_port),
        protocol=protocol,
        status_hostname=(status_hostname or env.get("EDGEHOST_TUNNEL_STATUS_HOSTNAME") or "").strip() or None,
        status_port=settings.metrics_port,
    )
    text = tunnel.render_config(spec)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tunnel.write_config(text, output, force=force)
    status = f", status page on {spec.status_hostname}" if spec.status_hostname else ""
    console.print(f"wrote {output} ({len(spec.hostnames)} hostname(s){status}); "
                  f"check it with: edgehost tunnel lint {output}")


@tunnel_app.command("lint")
def lint(
    config: Optional[Path] = typer.Argument(None, help="cloudflared config file (default: the tunnel config in settings)."),
    require_access: bool = typer.Option(
        True, "--require-access/--no-require-access", help="Treat a rule that reaches the portal without Access as an error."),
    skip_cloudflared: bool = typer.Option(
        False, "--skip-cloudflared", help="Do not run `cloudflared tunnel ingress validate` even if cloudflared is installed."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Check a cloudflared config for the traps that bypass Access or break routing; exit 1 on any error.

    The config is linted as the supervisor will run it: its metrics port must be tunnel.metrics_port.
    """
    settings = load_settings()
    path = config or settings.tunnel.config
    report = tunnel.lint_file(path, require_access=require_access,
                              cloudflared=None if skip_cloudflared else settings.tunnel.binary,
                              metrics_port=settings.tunnel.metrics_port)
    if as_json:
        emit_json(report.as_dict())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(int(ExitStatus.CHECK_FAILED))


def _print_report(report: tunnel.LintReport) -> None:
    if report.findings:
        table = Table("level", "where", "problem", show_lines=False)
        for f in report.findings:
            style = "bold red" if f.level == "fail" else "yellow"
            # Messages quote config text ([::1]:20241, audTag: ["..."]): never rich markup.
            table.add_row(f"[{style}]{f.level}[/]", escape(f.where), f"{escape(f.message)} [dim]({f.name})[/]")
        console.print(table)
    if report.cloudflared is not None:
        verdict = "[green]OK[/]" if report.cloudflared.ok else "[bold red]failed[/]"
        console.print(f"cloudflared ingress validate: {verdict}")
    else:
        console.print("[dim]cloudflared not run (not installed or skipped)[/]")
    summary = f"{report.config}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    console.print(f"[bold red]{summary}[/]" if report.errors else f"[green]{summary}[/]")
