"""`edgehost promote`'s side: ask the `edgehost follow` running here to take over.

Kept apart from ops/follow.py, which loads the supervisor: the command imports only this and httpx,
so the promotion starts a quarter of a second sooner.
"""

from __future__ import annotations

from typing import Any

from edgehost.errors import BadInput, EnvironmentProblem
from edgehost.settings import Settings


def request_promotion(settings: Settings, no_wait: bool, timeout: float) -> dict[str, Any]:
    """Ask the running follower to promote itself; its report."""
    import httpx

    if not settings.supervisor_socket.exists():
        raise EnvironmentProblem("no `edgehost follow` is running here (no control socket in the state dir)")
    transport = httpx.HTTPTransport(uds=str(settings.supervisor_socket))
    with httpx.Client(transport=transport, base_url="http://edgehost", timeout=timeout) as client:
        try:
            answer = client.post("/promote" + ("?no_wait=1" if no_wait else ""))
        except httpx.HTTPError as exc:
            raise EnvironmentProblem(f"the follower did not answer on {settings.supervisor_socket} within "
                                     f"{timeout:g}s: {type(exc).__name__}") from None
    if answer.status_code == 404:  # `edgehost up` answers there, and knows no promotion
        raise BadInput("this machine is not following (it runs `edgehost up`): nothing to promote")
    try:
        return answer.json()
    except ValueError:
        raise EnvironmentProblem(f"the follower answered {answer.status_code} without a report") from None
