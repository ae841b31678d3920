"""A follower starting up kills the `litestream restore -f` an earlier run of it left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from edgehost.ops.follow import kill_stray_followers


def fake_follower(*args: str) -> subprocess.Popen:
    """A process whose command line carries a follower's `restore -f ... -o ...` (it only sleeps)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *args], start_new_session=True)


def follow_args(out: str, mirror: str) -> list[str]:
    return ["restore", "-f", "-follow-interval", "250ms", "-o", out, mirror]


def test_strays_under_this_data_dir_are_killed_running_or_stopped_and_nothing_else(tmp_path):
    data = tmp_path / "my home" / "data"  # a space in the path, as in a macOS home folder
    mirror = f"file://{tmp_path}/my home/state/standby-mirror/acme"
    running = fake_follower(*follow_args(f"{data}/acme/honestcam.db", mirror))
    stopped = fake_follower(*follow_args(f"{data}/honestcam-study.db", mirror))
    sibling = fake_follower(*follow_args(f"{data}2/acme/honestcam.db", mirror))  # another home's data2/
    plain = fake_follower("restore", "-o", f"{data}/beta/honestcam.db", "s3://bucket/edgehost/beta/honestcam.db")
    procs = [running, stopped, sibling, plain]
    try:
        time.sleep(0.3)  # exec'd: their command lines are visible
        stopped.send_signal(signal.SIGSTOP)  # as a promotion leaves them when its follower dies
        killed = kill_stray_followers(data)
        assert sorted(killed) == sorted([running.pid, stopped.pid])
        assert running.wait(10) == -signal.SIGKILL and stopped.wait(10) == -signal.SIGKILL
        # Another home's follower and `up`'s restore of a missing database (no -f) are left alone.
        assert sibling.poll() is None and plain.poll() is None
        assert kill_stray_followers(data) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
