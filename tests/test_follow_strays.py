"""A follower starting up kills the `litestream restore -f` an earlier run of it left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from edgehost.ops.follow import kill_stray_followers


def _fake_litestream(tmp_path, *args: str) -> subprocess.Popen:
    """A process whose command line is a follower's `litestream restore -f ...` (it only sleeps)."""
    exe = tmp_path / "bin" / "litestream"
    if not exe.exists():
        exe.parent.mkdir()
        exe.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
        exe.chmod(0o755)
    return subprocess.Popen([str(exe), *args], start_new_session=True)


def test_strays_under_this_data_dir_are_killed_running_or_stopped_and_nothing_else(tmp_path):
    data, other = tmp_path / "home" / "data", tmp_path / "other" / "data"
    mirror = f"file://{tmp_path}/home/state/standby-mirror/acme"
    running = _fake_litestream(tmp_path, "restore", "-f", "-follow-interval", "250ms", "-o", f"{data}/acme/honestcam.db", mirror)
    stopped = _fake_litestream(tmp_path, "restore", "-f", "-follow-interval", "250ms", "-o", f"{data}/honestcam-study.db", mirror)
    elsewhere = _fake_litestream(tmp_path, "restore", "-f", "-follow-interval", "250ms", "-o", f"{other}/acme/honestcam.db", mirror)
    plain = _fake_litestream(tmp_path, "restore", "-o", f"{data}/beta/honestcam.db", "s3://bucket/edgehost/beta/honestcam.db")
    procs = [running, stopped, elsewhere, plain]
    try:
        time.sleep(0.3)  # exec'd: ps shows their command lines
        stopped.send_signal(signal.SIGSTOP)  # as a promotion leaves them when its follower dies
        killed = kill_stray_followers(data)
        assert sorted(killed) == sorted([running.pid, stopped.pid])
        assert running.wait(10) == -signal.SIGKILL and stopped.wait(10) == -signal.SIGKILL
        # Another home's follower and `up`'s restore of a missing database (no -f) are left alone.
        assert elsewhere.poll() is None and plain.poll() is None
        assert kill_stray_followers(data) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
