"""The app on the restored data: boot it on a scratch port, wait for its health path, ask its smoke paths, stop it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx

from edgehost.engine import layout, loopback
from edgehost.engine.layout import GLOBAL
from edgehost.errors import EnvironmentProblem
from edgehost.ops.drill.report import DrillDatabase, DrillReport
from edgehost.settings import SECRET_NAMES, Settings
from edgehost.supervisor.logs import LogHub
from edgehost.supervisor.policy import Backoff
from edgehost.supervisor.service import Service, ServiceSpec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _portal_env(settings: Settings, data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in settings.environ.items()
           if k not in SECRET_NAMES and not k.startswith("EDGEHOST_ACCESS_")}
    env.update({"EDGEHOST_HOME": str(settings.home), "EDGEHOST_DATA_DIR": str(data_dir),
                "EDGEHOST_PORTAL_HOST": "127.0.0.1", "EDGEHOST_PORTAL_PORT": str(port),
                "EDGEHOST_STATE_DIR": str(data_dir.parent / "state")})
    return env


def _log_tail(log: Path, lines: int = 5) -> str:
    try:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-lines:]
    except OSError:
        return ""
    return (" | last lines of its log: " + " / ".join(tail)) if tail else ""


def boot_portal(settings: Settings, data_dir: Path, log: Path, timeout: float = 60) -> tuple[Service, str]:
    """Start the configured portal command on a scratch data dir and port; wait for its health path.

    It runs as the supervisor runs it (supervisor/service.py): in its own process group, under the
    parent-death guard, so a drill that is killed does not leave a portal serving scratch data.
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    health = f"{url}{settings.app.health_path}"
    unhealthy = ""

    def ready() -> bool:
        nonlocal unhealthy
        try:
            resp = loopback.get(health, timeout=1)
        except httpx.HTTPError:
            return False
        unhealthy = "" if resp.status_code == 200 else _unhealthy(resp)
        return resp.status_code == 200

    spec = ServiceSpec("portal", settings.portal_argv(), _portal_env(settings, data_dir, port), ready=ready,
                       ready_timeout=timeout, stop_timeout=15, cwd=settings.home)
    portal = Service(spec, Backoff(settings.restart), LogHub(log.parent, stream=open(os.devnull, "w")))
    portal.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if portal.poll() is not None:
            code = portal.stop(1)
            raise EnvironmentProblem(f"the portal exited ({code}) on the restored data{_log_tail(log)}")
        if ready():
            return portal, url
        time.sleep(0.1)
    stop_portal(portal)
    raise EnvironmentProblem(f"the portal did not become healthy on the restored data in {timeout:.0f}s"
                             + (f": {unhealthy}" if unhealthy else _log_tail(log)))


def _unhealthy(resp: httpx.Response) -> str:
    """Which databases the health path says failed (the reference portal names them)."""
    try:
        dbs = resp.json().get("databases", {})
        return "; ".join(f"{name}: {d.get('error', 'not ok')}" for name, d in dbs.items() if not d.get("ok"))
    except (ValueError, AttributeError):
        return f"the health path answered {resp.status_code}"


def stop_portal(portal: Service) -> None:
    portal.stop(15)



def _smoke(settings: Settings, report: DrillReport, keys: list[str], url: str,
           portal: Service | None = None, log: Path | None = None) -> None:
    """Each smoke path of the app contract must answer 200 with JSON on the restored portal. A path
    with {slug} is asked per property and charged to it; the others to the global database."""
    by_name = {db.name: db for db in report.databases}
    asks: list[tuple[DrillDatabase, str]] = []
    for path in settings.app.smoke:
        for key in keys:
            db = by_name[layout.ref_for(settings, key).label]
            if db.restored and ("{slug}" in path) == (key != GLOBAL):
                asks.append((db, path.replace("{slug}", key)))
    report.notes.append(f"smoke requests on the restored portal: {', '.join(settings.app.smoke) or 'none'}")
    for db in {id(d): d for d, _ in asks}.values():
        db.checks["answers"] = "ok"
    for db, path in asks:
        # A connection of its own per request: a portal that drops a connection after failing one
        # database's request must not make the next database's request fail.
        with loopback.client(base_url=url, timeout=30) as client:
            try:
                resp = client.get(path)
                problem = "" if resp.status_code == 200 else f"GET {path} answered {resp.status_code}"
                if not problem:
                    resp.json()
            except ValueError:
                problem = f"GET {path} answered 200 but not JSON"
            except httpx.TransportError as exc:
                if portal is not None and portal.poll() is not None:
                    raise EnvironmentProblem(f"the restored portal exited ({portal.poll()}) while answering "
                                             f"GET {path}{_log_tail(log) if log else ''}") from None
                problem = f"GET {path}: the restored portal did not answer: {exc}"
            if problem and db.checks["answers"] == "ok":
                db.checks["answers"] = problem
