"""The chaos runs' fixtures (the table of their results is written by tests/conftest.py)."""

from __future__ import annotations

import functools

import pytest

from chaos_kit import CHAOS_TOML, SwitchableProxy, chaos_run, reap_home


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
