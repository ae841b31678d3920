"""Nothing acknowledged is lost on a clean stop: SIGTERM right after a new property's first writes.

litestream 0.5.17 exits within milliseconds of SIGTERM without syncing a database it discovered but
has not synced yet; the supervisor must drive the final sync itself. Each round creates a property
(through the portal, or with `edgehost property add` while `up` runs), writes to it and to the
global DB for at most half a second, sends SIGTERM as launchd does, and restores with plain
`litestream restore`: every acknowledged row must be there.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from edgehost.engine import layout, litestream
from procs import Writer, edgehost, plain_restore, rows, start_supervisor, wait_until

pytestmark = pytest.mark.e2e

ROUNDS = int(os.environ.get("EDGEHOST_FINAL_SYNC_ROUNDS", "20"))


class UserWriter(Writer):
    """PUTs study users (the global DB) and records every acknowledged one."""

    def __init__(self, url: str, tag: str):
        super().__init__(url, slug="")
        self.tag = tag

    def _send(self, client: httpx.Client, i: int):
        user = f"{self.tag}-{i}"
        resp = client.put(f"{self.url}/study/users/{user}", json={"email": f"{user}@x.y"})
        return user if resp.status_code == 200 else None


def _restore(home, ref, tmp_path, name: str):
    settings = home.settings()
    out = tmp_path / f"{name}.db"
    proc = plain_restore(litestream.replication(settings).restore_url(ref), out, home.environ())
    assert proc.returncode == 0, f"{ref.label}: {proc.stderr.strip()}"
    return out


def test_sigterm_right_after_a_new_propertys_first_writes_loses_nothing(request, tmp_path):
    # The embedded file replica by default; EDGEHOST_FINAL_SYNC_S3=1 runs the rounds against moto S3.
    kit_home = request.getfixturevalue("s3_home" if os.environ.get("EDGEHOST_FINAL_SYNC_S3") else "kit_home")
    settings = kit_home.settings()
    url = settings.portal_url
    lost_events = lost_users = acked_events = acked_users = 0
    for i in range(ROUNDS):
        up = start_supervisor(kit_home, log_name=f"up{i}.log")
        slug = f"p{i}"
        if i % 2:
            made = edgehost(kit_home, "property", "add", slug)  # a writer outside the portal
            assert made.returncode == 0, made.stderr
        else:
            httpx.post(f"{url}/properties", json={"slug": slug}).raise_for_status()
        events = Writer(url, slug).start()
        users = UserWriter(url, f"r{i}").start()
        if i % 5:
            # Right after the first acknowledged writes is the worst case; on a loaded machine the
            # first answer can take a while, so wait for it, then write 0.125 to 0.5 s more.
            wait_until(lambda: events.acked and users.acked, 30, interval=0.01, what="the first acknowledged writes")
            time.sleep((i % 5) * 0.125)
        up.signal(signal.SIGTERM)
        code = up.popen.wait(90)
        ev, us = events.stop(), users.stop()
        up.stop()
        assert code == 0, up.output()[-3000:]
        got_ev = {r[0] for r in rows(_restore(kit_home, layout.property_db(settings, slug), tmp_path, f"{slug}-{i}"),
                                     "SELECT id FROM compliance_events")}
        got_us = {r[0] for r in rows(_restore(kit_home, layout.global_db(settings), tmp_path, f"global-{i}"),
                                     "SELECT user_id FROM study_users")}
        lost_events += len(set(ev) - got_ev)
        lost_users += len(set(us) - got_us)
        acked_events += len(ev)
        acked_users += len(us)
        assert "final sync:" in up.output()
    print(f"{ROUNDS} rounds: {acked_events} events and {acked_users} users acknowledged, "
          f"{lost_events} events and {lost_users} users missing from a plain restore")
    assert (lost_events, lost_users) == (0, 0)
