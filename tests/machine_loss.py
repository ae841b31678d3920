"""The machine-loss round for durable acknowledgements (tests/test_durable_e2e.py, bench/durable_loss.py).

One round: a kit home replicating to a fresh bucket, `edgehost up`, writers posting events as fast as
the portal answers; at a random moment every process of the home is killed at once and the home is
deleted (the machine is gone); a fresh home restores from the bucket, and every event the portal
acknowledged (201) must be in the restored copy.
"""

from __future__ import annotations

import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO / "tests", REPO / "tests" / "chaos"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from chaos_kit import AckWriter, compare, create_properties, fresh_restore, home_processes, power_cut, reap_home  # noqa: E402
from procs import S3_KEYS, KitHome, free_port, start_supervisor, sync_db  # noqa: E402

from edgehost.engine import layout  # noqa: E402


@dataclass
class LossRound:
    durable: bool
    acked: int
    lost: int
    failed_writes: int  # answered 503 or cut off by the kill: never acknowledged
    seconds_written: float


def new_home(root: Path, name: str, endpoint: str, bucket: str, **env: str) -> KitHome:
    path = root / name
    path.mkdir(parents=True)
    shutil.copy(REPO / "litestream.yml", path / "litestream.yml")
    return KitHome(path, {"EDGEHOST_HOME": str(path), "EDGEHOST_PORTAL_PORT": str(free_port()),
                          "EDGEHOST_METRICS_PORT": "0", "EDGEHOST_REPLICA_URL": f"s3://{bucket}/edgehost",
                          "EDGEHOST_S3_ENDPOINT": endpoint, "EDGEHOST_S3_REGION": "us-east-1", **S3_KEYS, **env})


def machine_loss_round(root: Path, endpoint: str, bucket: str, durable: bool, rng: random.Random,
                       writers: int = 8, seconds: tuple[float, float] = (1.0, 3.0)) -> LossRound:
    home = new_home(root, "machine", endpoint, bucket,
                    EDGEHOST_DURABLE_PROPERTY_DBS="true" if durable else "false")
    sup = start_supervisor(home)
    running: list[AckWriter] = []
    try:
        settings = home.settings()
        url = settings.portal_url
        create_properties(url, ["acme"])
        sync_db(settings, layout.property_db(settings, "acme"))  # replicating before the first write: the steady state
        running = [AckWriter(url, "acme", pause=0, name=f"w{i}").start() for i in range(writers)]
        began = time.monotonic()
        time.sleep(rng.uniform(*seconds))
        power_cut(home_processes(home))  # the machine dies: every process at the same instant
        written = time.monotonic() - began
    finally:
        for w in running:
            w.stop()
        reap_home(home)
        sup.stop(5)
    shutil.rmtree(home.path)  # and its disk with it
    fresh = new_home(root, "fresh", endpoint, bucket)
    restored = root / "restored"
    fresh_restore(fresh, restored)
    cmp = compare(running, restored, fresh.settings())
    assert not cmp.changed, cmp.changed
    shutil.rmtree(root)
    return LossRound(durable, cmp.acked, len(cmp.lost), sum(w.errors for w in running), written)
