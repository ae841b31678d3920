"""Usage errors: one line on stderr and exit 2, never a traceback (typer >= 0.29 ships its own click)."""

from __future__ import annotations

import pytest

from procs import edgehost


@pytest.mark.parametrize("argv, says", [
    (["-V"], "No such option: -V"),
    ([], "a command is needed"),
    (["status", "--jsn"], "No such option: --jsn"),
    (["statuss"], "No such command 'statuss'"),
    (["restore", "--all", "--parallel", "x"], "Invalid value for '--parallel'"),
    (["property", "add"], "Missing argument 'slug'"),
])
def test_a_usage_error_is_one_line_and_exit_2(kit_home, argv, says):
    proc = edgehost(kit_home, *argv, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_promote_without_a_follower_says_so_in_one_line(kit_home):
    """No follower here, or a socket file a dead one left behind: exit 3 and one line, no traceback."""
    import socket

    proc = edgehost(kit_home, "promote", "--no-wait", timeout=60)
    assert proc.returncode == 3 and "no `edgehost follow` is running here" in proc.stderr, proc.stderr
    settings = kit_home.settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(settings.supervisor_socket))
    stale.close()  # the file stays, nobody listens
    proc = edgehost(kit_home, "promote", "--no-wait", "--json", timeout=60)
    assert proc.returncode == 3 and "does not answer" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
