"""The chaos runs' fixtures, and the table of their results at the end of the session."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from chaos_kit import CHAOS_TOML, FULL, RESULTS, SwitchableProxy, chaos_run, reap_home, results_table


@pytest.fixture
def chaos_home(s3_home):
    """An S3 home (moto over HTTP) with a restart policy for injected kills; nothing of it outlives the test."""
    (s3_home.path / "edgehost.toml").write_text(CHAOS_TOML)
    yield s3_home
    reap_home(s3_home)


@pytest.fixture
def chaos(chaos_home, tmp_path):
    """`with chaos(fault, injected, unit) as run:` the stack and its writers around one fault (chaos_kit.chaos_run)."""
    return functools.partial(chaos_run, chaos_home, tmp_path / "restored")


@pytest.fixture
def s3_proxy(chaos_home, moto_s3):
    """A switchable proxy in front of moto, which the chaos home's S3 endpoint points at."""
    proxy = SwitchableProxy(moto_s3.endpoint)
    chaos_home.env["EDGEHOST_S3_ENDPOINT"] = proxy.endpoint
    yield proxy
    proxy.close()


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
