"""Shared fixtures: a kit home in tmp, a moto S3 server over HTTP on loopback, the litestream binary."""

from __future__ import annotations

import shutil
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from edgehost.engine.litestream import find_binary

from procs import S3_KEYS, KitHome, free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def litestream_bin() -> Path:
    return find_binary()


@dataclass
class MotoS3:
    endpoint: str
    region: str = "us-east-1"
    requests: list = field(default_factory=list)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region, **{
            "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"]})

    def new_bucket(self) -> str:
        name = f"edgehost-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """A real S3 endpoint over HTTP (moto's server mode) on a free loopback port."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoS3(endpoint=f"http://127.0.0.1:{port}")
    finally:
        server.stop()


def _short_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Unix socket paths must stay under ~104 bytes (macOS) / 108 (Linux): keep homes short.
    return tmp_path_factory.mktemp("h", numbered=True)


@pytest.fixture
def kit_home(tmp_path_factory: pytest.TempPathFactory) -> KitHome:
    """A home with a local file replica: the kit's embedded default."""
    home = _short_home(tmp_path_factory)
    shutil.copy(REPO / "litestream.yml", home / "litestream.yml")
    env = {"EDGEHOST_HOME": str(home), "EDGEHOST_PORTAL_PORT": str(free_port()),
           "EDGEHOST_METRICS_PORT": str(free_port())}
    return KitHome(home, env)


@pytest.fixture
def s3_home(kit_home: KitHome, moto_s3: MotoS3) -> KitHome:
    """A home whose replica is a fresh bucket on the moto server."""
    bucket = moto_s3.new_bucket()
    kit_home.env.update(
        {
            "EDGEHOST_REPLICA_URL": f"s3://{bucket}/edgehost",
            "EDGEHOST_S3_ENDPOINT": moto_s3.endpoint,
            "EDGEHOST_S3_REGION": moto_s3.region,
            **S3_KEYS,
        }
    )
    return kit_home


# --- the chaos results table ---------------------------------------------------------------------
# The chaos runs record into tests/chaos/chaos_kit. Under pytest-xdist they run in a worker while only
# the controller writes the summary (and it never loads tests/chaos/conftest.py), so each worker hands
# its results over when it finishes and the table is written here.

CHAOS_DIR = REPO / "tests" / "chaos"


def _chaos_kit():
    if str(CHAOS_DIR) not in sys.path:
        sys.path.insert(0, str(CHAOS_DIR))
    import chaos_kit

    return chaos_kit


def pytest_sessionfinish(session):
    kit = sys.modules.get("chaos_kit")
    if hasattr(session.config, "workeroutput") and kit is not None:
        session.config.workeroutput["chaos_results"] = [asdict(r) for r in kit.RESULTS]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    results = getattr(node, "workeroutput", {}).get("chaos_results")
    if results:
        kit = _chaos_kit()
        kit.RESULTS.extend(kit.ChaosResult(**r) for r in results)


def pytest_terminal_summary(terminalreporter):
    kit = sys.modules.get("chaos_kit")
    if kit is not None:
        kit.write_summary(terminalreporter)
