"""The supervisor behind `edgehost up`."""

from .control import SupervisorClient
from .run import Supervisor, preflight, service_plan

__all__ = ["Supervisor", "SupervisorClient", "preflight", "service_plan"]
