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
