"""`edgehost promote`'s side: ask the `edgehost follow` running here to take over.

Kept apart from ops/follow.py, which loads the supervisor: the command imports only this and the
standard library, so the promotion starts a quarter of a second sooner.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from edgehost.errors import BadInput, EnvironmentProblem
from edgehost.settings import Settings


class _UnixHTTP(http.client.HTTPConnection):
    """HTTP over the follower's unix socket with the standard library: httpx and the TLS context it
    builds would double the command's start, and every tenth of a second counts in a failover."""

    def __init__(self, path: str, timeout: float):
        super().__init__("edgehost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def request_promotion(settings: Settings, no_wait: bool, timeout: float) -> dict[str, Any]:
    """Ask the running follower to promote itself; its report."""
    if not settings.supervisor_socket.exists():
        raise EnvironmentProblem("no `edgehost follow` is running here (no control socket in the state dir)")
    conn = _UnixHTTP(str(settings.supervisor_socket), timeout)
    try:
        conn.request("POST", "/promote" + ("?no_wait=1" if no_wait else ""), headers={"Content-Length": "0"})
        answer = conn.getresponse()
        status, body = answer.status, answer.read()
    except TimeoutError:
        raise EnvironmentProblem(f"the promotion did not finish within {timeout:g}s (--timeout); "
                                 f"`edgehost status` shows where it stands") from None
    except (OSError, http.client.HTTPException) as exc:
        raise EnvironmentProblem(f"the follower does not answer on {settings.supervisor_socket}: "
                                 f"{type(exc).__name__}") from None
    finally:
        conn.close()
    if status == 404:  # `edgehost up` answers there, and knows no promotion
        raise BadInput("this machine is not following (it runs `edgehost up`): nothing to promote")
    try:
        return json.loads(body)
    except ValueError:
        raise EnvironmentProblem(f"the follower answered {status} without a report") from None
