"""The chaos runs' fixtures, and the table of their results at the end of the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chaos_kit import CHAOS_TOML, FULL, RESULTS, reap_home, results_table


@pytest.fixture
def chaos_home(s3_home):
    """An S3 home (moto over HTTP) with a restart policy for injected kills; nothing of it outlives the test."""
    (s3_home.path / "edgehost.toml").write_text(CHAOS_TOML)
    yield s3_home
    reap_home(s3_home)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    mode = "FULL" if FULL else "reduced"
    table = results_table(RESULTS)
    terminalreporter.write_sep("=", f"chaos results ({mode} counts)")
    terminalreporter.write_line(table)
    out = os.environ.get("EDGEHOST_CHAOS_REPORT")
    if out:
        Path(out).write_text(f"chaos results ({mode} counts)\n\n{table}\n")
        terminalreporter.write_line(f"table written to {out}")
