"""The supervisor's lease guard keeps litestream's state honest across a lease blip (real Supervisor and
Service objects; the lease is a stand-in: its two attributes are what the guard reads)."""

from __future__ import annotations

import io
from types import SimpleNamespace

from edgehost.engine import litestream
from edgehost.supervisor.lease import lease_clock
from edgehost.supervisor.policy import Backoff
from edgehost.supervisor.run import Supervisor, service_plan
from edgehost.supervisor.service import Service


def _supervisor(kit_home) -> tuple[Supervisor, Service]:
    settings = kit_home.settings()
    sup = Supervisor(settings, stream=io.StringIO())
    spec = service_plan(settings, litestream.Litestream.from_settings(settings))[0]
    ls = Service(spec, Backoff(settings.restart), sup.hub)
    sup.services.append(ls)
    return sup, ls


def test_a_crash_looped_litestream_stays_failed_through_a_lease_blip(kit_home):
    """FAILED (crash loop, exit_on_failure off) must not become "waiting for the lease" when a renewal
    is late, then "stopped" once one lands, and so be started again behind the operator's back."""
    sup, ls = _supervisor(kit_home)
    ls.state, ls.reason = Service.FAILED, ""
    sup.lease = SimpleNamespace(held=True, confirmed_at=lease_clock() - 10_000)  # a renewal long overdue
    sup._guard_replication()
    assert ls.state == Service.FAILED
    sup.lease.confirmed_at = lease_clock()  # a renewal lands
    sup._guard_replication()
    assert ls.state == Service.FAILED

    ls.state = Service.STOPPED  # not failed: held while the lease is late, free again after
    sup.lease.confirmed_at = lease_clock() - 10_000
    sup._guard_replication()
    assert ls.state == Service.HELD and ls.reason.startswith(Supervisor.LEASE_WAIT)
    sup.lease.confirmed_at = lease_clock()
    sup._guard_replication()
    assert ls.state == Service.STOPPED


def test_the_end_of_renewals_waits_for_a_renewal_in_flight_and_a_hurried_stop_still_releases(kit_home):
    """The release waits for the lease thread; hurried, it still gives an idle thread a moment to end
    (it ends at once), and reports one still busy instead of racing it."""
    import threading
    import time

    sup, _ = _supervisor(kit_home)
    sup.hurry.set()
    sup._lease_thread = threading.Thread(target=lambda: sup._lease_done.wait(30), daemon=True)
    sup._lease_thread.start()
    assert sup._end_renewals() is True  # idle between renewals: it ends, the lease is released

    sup._lease_done.clear()
    sup._lease_thread = threading.Thread(target=lambda: time.sleep(3), daemon=True)  # a renewal hanging
    sup._lease_thread.start()
    started = time.monotonic()
    assert sup._end_renewals() is False and time.monotonic() - started < 2
