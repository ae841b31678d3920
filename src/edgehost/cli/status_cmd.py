"""`edgehost status`."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from edgehost.errors import EdgehostError, ExitStatus
from edgehost.settings import load_settings
from edgehost.cli import app
from edgehost.cli.output import ago, console, emit_json, short_txid


@app.command("status")
def status_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """Each service (state, pid, restarts, uptime) and each database (txids, last sync, lag, WAL size).

    Exits 1 when a database's replication lag passes lag_alert_seconds or litestream reports an error
    for it (state "error", the message in "error"), 3 when nothing is running. With --json, txids
    (local_txid, replicated_txid) are 16 hex digits, as litestream, points and verify print them;
    the Prometheus metrics keep them as numbers.
    """
    from edgehost.ops import status as status_lib
    from edgehost.supervisor import SupervisorClient

    settings = load_settings()
    supervisor = SupervisorClient(settings.supervisor_socket, timeout=10).status()
    if supervisor.get("role") == "follower":
        follower_status(settings, supervisor, as_json)
        return
    try:
        # An idle database the supervisor's last poll found caught up costs no call of its own.
        cache = status_lib.PositionCache.load(supervisor.get("positions") or {})
        dbs = status_lib.replication_status(settings, cache=cache)
        db_error = ""
    except EdgehostError as exc:
        dbs, db_error = [], str(exc)
    from edgehost.ops.state import drill_history, merge_drills

    from edgehost.ops import durable_acks

    # The supervisor reads the replica's drills once an hour; this machine's own are read here, so a
    # drill just run shows at once, and status asks the bucket nothing.
    cached = supervisor.get("last_drills")
    drills = (merge_drills(drill_history(settings, limit=1, replica=False), cached, limit=1) if cached is not None
              else drill_history(settings, limit=1))
    lagging = [d.name for d in dbs if d.lag_seconds is not None and d.lag_seconds > settings.lag_alert_seconds]
    failing = [d.name for d in dbs if d.state == "error"]
    report = {
        "supervisor": {k: supervisor[k] for k in ("pid", "phase", "uptime_seconds")},
        "services": supervisor["services"],
        "databases": [d.as_json() for d in dbs],
        "lag_alert_seconds": settings.lag_alert_seconds,
        "lagging": lagging,
        "failing": failing,
        "litestream_error": db_error,
        "last_drill": drills[0] if drills else None,
        "lease": supervisor.get("lease"),
        "durable_acks": durable_acks.summary_rows(durable_acks.fetch(settings)),
    }
    if as_json:
        emit_json(report)
    else:
        console.print(service_table(supervisor["services"]))
        for svc in supervisor["services"]:
            if svc.get("reason"):
                console.print(f"[red]{svc['name']} {svc['state']}:[/] {svc['reason']}", highlight=False, soft_wrap=True)
        lease = supervisor.get("lease") or {}
        if lease.get("fenced"):
            console.print("[bold red]writer lease lost: another machine writes to the replica; this one stopped "
                          "replicating and serves read-only[/]")
        elif lease.get("held"):
            console.print("writer lease: held by this machine")
        else:
            console.print("[yellow]writer lease: not held yet (the replica has not answered)[/]")
        console.print(database_table(dbs, lagging + failing))
        for d in dbs:
            if d.error:
                console.print(f"[bold red]{escape(d.name)}:[/] {escape(d.error)}", highlight=False, soft_wrap=True)
        if any("ltx file" in d.error or "another history" in d.error for d in dbs):
            console.print("litestream's local state and the replica disagree (see docs/litestream-tuning.md, "
                          "\"When the replica changes\")")
        if db_error:
            console.print(f"[red]litestream:[/] {db_error}")
        if report["durable_acks"]:
            table = Table("durable database", "acknowledged", "timeouts", "p50", "p99")
            for r in report["durable_acks"]:
                table.add_row(escape(r["db"]), str(r["acked"]), str(r["timeouts"]),
                              "-" if r["p50_ms"] is None else f"{r['p50_ms']:.0f} ms",
                              "-" if r["p99_ms"] is None else f"{r['p99_ms']:.0f} ms")
            console.print(table)
        if drills:
            d = drills[0]
            rto = f", RTO {d['rto_seconds']:.1f}s" if d["rto_seconds"] is not None else ""
            console.print(f"last drill: {d['status'].upper()} ({d['scenario']}) at {d['finished_at']}, "
                          f"{d['databases']} databases, {d['failed']} failures{rto}")
        else:
            console.print("last drill: never (run `edgehost drill`)")
        if lagging:
            console.print(f"[bold red]lagging beyond {settings.lag_alert_seconds:.0f}s:[/] {', '.join(lagging)}")
    if lagging or failing or db_error or (supervisor.get("lease") or {}).get("fenced"):
        raise typer.Exit(int(ExitStatus.CHECK_FAILED))


def service_table(services: list[dict]) -> Table:
    table = Table("service", "state", "pid", "restarts", "uptime")
    for s in services:
        table.add_row(s["name"], s["state"], str(s["pid"] or "-"), str(s["restarts"]), _span(s["uptime_seconds"]))
    return table


def database_table(dbs: list, alarming: list[str]) -> Table:
    """One row a database, readable at 80 columns: short txids, relative times; names wrap, never cut."""
    from edgehost.ops import status as status_lib

    table = Table("database", "state", "txid local/replica", "last sync", "lag", "WAL")
    table.columns[0].overflow = "fold"
    for d in dbs:
        lag = "-" if d.lag_seconds is None else f"{d.lag_seconds:.0f}s"
        txids = (f"{short_txid(status_lib.hex_txid(d.local_txid))}/"
                 f"{short_txid(status_lib.hex_txid(d.replicated_txid))}")
        table.add_row(d.name, d.state, txids, ago(d.last_sync_at), lag, f"{d.wal_bytes / 1024:.0f} KiB",
                      style="bold red" if d.name in alarming else None)
    return table


def _span(seconds: float) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def follower_status(settings, follower: dict, as_json: bool) -> None:
    """A standby (`edgehost follow`): each database's applied txid against the replica's, and its lag."""
    lagging = [d["name"] for d in follower["databases"] if d["lag_seconds"] > settings.lag_alert_seconds]
    report = {"role": "follower", "primary": follower["primary"], "services": follower["services"],
              "databases": follower["databases"], "last_round": follower["last_round"],
              "lag_alert_seconds": settings.lag_alert_seconds, "lagging": lagging}
    if as_json:
        emit_json(report)
    else:
        console.print(f"standby of {escape(follower['primary'])}: one listing every {follower['interval_seconds']:g}s")
        if follower["services"]:
            console.print(service_table(follower["services"]))
        table = Table("database", "replica txid", "applied txid", "lag", "restarts")
        for d in follower["databases"]:
            lag = f"{d['lag_seconds']:.1f}s"
            table.add_row(escape(d["name"]), short_txid(d["replica_txid"]), short_txid(d["applied_txid"]),
                          f"[red]{lag}[/]" if d["name"] in lagging else lag, str(d["restarts"]))
        console.print(table)
    if lagging:
        raise typer.Exit(int(ExitStatus.CHECK_FAILED))
