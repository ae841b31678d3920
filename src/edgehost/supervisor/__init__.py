"""The supervisor behind `edgehost up`."""

from edgehost.supervisor.control import SupervisorClient
from edgehost.supervisor.run import Supervisor, preflight, service_plan

__all__ = ["Supervisor", "SupervisorClient", "preflight", "service_plan"]
