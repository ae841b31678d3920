"""Replication status per database, from Litestream's control socket: txids, last sync, lag, WAL size."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import layout
from .errors import EnvironmentProblem
from .litestream import ControlSocket
from .settings import Settings


@dataclass
class DatabaseStatus:
    name: str
    path: str
    state: str  # replicating | not replicated | error
    local_txid: int | None = None
    replicated_txid: int | None = None
    last_sync_at: str | None = None
    lag_seconds: float | None = None
    wal_bytes: int = 0
    error: str = ""


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    # Go prints nanoseconds; Python wants at most microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    stamp = f"{head}.{frac[:6]}" if frac else head
    return datetime.fromisoformat(stamp + "+00:00").timestamp()


def lag_seconds(local_txid: int, replicated_txid: int, last_sync: float | None, now: float, since: float) -> float:
    """How long the replica has been behind: 0 when caught up, else the time since the last upload."""
    if replicated_txid >= local_txid:
        return 0.0
    return max(0.0, now - (last_sync if last_sync is not None else since))


def replication_status(settings: Settings, sock: ControlSocket | None = None, now: float | None = None) -> list[DatabaseStatus]:
    """Ask the running litestream about every database on disk."""
    sock = sock or ControlSocket(settings.litestream_socket)
    now = time.time() if now is None else now
    info = sock.info()
    started = _parse_time(info.get("started_at")) or now
    listed = {d["path"]: d for d in sock.list()}
    out: list[DatabaseStatus] = []
    for ref in layout.local_databases(settings):
        wal = Path(f"{ref.path}-wal")
        st = DatabaseStatus(ref.label, str(ref.path), "not replicated", wal_bytes=wal.stat().st_size if wal.exists() else 0)
        entry = listed.get(str(ref.path))
        if entry is not None:
            try:
                # A local-only sync: cheap, and it returns both the local and the replica position.
                result = sock.sync(ref.path, wait=False, timeout=5)
                st.local_txid = int(result["txid"])
                st.replicated_txid = int(result["replicated_txid"])
                st.last_sync_at = entry.get("last_sync_at")
                st.lag_seconds = round(lag_seconds(st.local_txid, st.replicated_txid,
                                                   _parse_time(st.last_sync_at), now, started), 1)
                st.state = "replicating" if entry.get("status") == "replicating" else entry.get("status", "?")
            except EnvironmentProblem as exc:
                st.state, st.error = "error", str(exc)
        out.append(st)
    return out


def prometheus_text(dbs: list[DatabaseStatus], services: list[dict]) -> str:
    """The metrics endpoint's body (Prometheus text format 0.0.4)."""
    lines = [
        "# HELP edgehost_replication_lag_seconds Seconds the replica has been behind the local database (0 = caught up).",
        "# TYPE edgehost_replication_lag_seconds gauge",
    ]
    for db in dbs:
        if db.lag_seconds is not None:
            lines.append(f'edgehost_replication_lag_seconds{{db="{db.name}"}} {db.lag_seconds}')
    lines += ["# HELP edgehost_replication_local_txid Latest local transaction id.",
              "# TYPE edgehost_replication_local_txid gauge"]
    lines += [f'edgehost_replication_local_txid{{db="{d.name}"}} {d.local_txid}' for d in dbs if d.local_txid is not None]
    lines += ["# HELP edgehost_replication_replicated_txid Latest transaction id in the replica.",
              "# TYPE edgehost_replication_replicated_txid gauge"]
    lines += [f'edgehost_replication_replicated_txid{{db="{d.name}"}} {d.replicated_txid}' for d in dbs if d.replicated_txid is not None]
    lines += ["# HELP edgehost_wal_bytes Size of the database's WAL file.", "# TYPE edgehost_wal_bytes gauge"]
    lines += [f'edgehost_wal_bytes{{db="{d.name}"}} {d.wal_bytes}' for d in dbs]
    lines += ["# HELP edgehost_service_up 1 when the service is running.", "# TYPE edgehost_service_up gauge"]
    lines += [f'edgehost_service_up{{service="{s["name"]}"}} {1 if s["state"] == "running" else 0}' for s in services]
    lines += ["# HELP edgehost_service_restarts_total Restarts since the supervisor started.",
              "# TYPE edgehost_service_restarts_total counter"]
    lines += [f'edgehost_service_restarts_total{{service="{s["name"]}"}} {s["restarts"]}' for s in services]
    return "\n".join(lines) + "\n"

