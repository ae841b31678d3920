"""Machine loss with durable acknowledgements on and off: how many acknowledged events a lost machine takes.

    .venv/bin/python bench/durable_loss.py                 # 20 rounds each way
    .venv/bin/python bench/durable_loss.py --rounds 3

Each round (tests/machine_loss.py): a fresh kit home and bucket on a moto S3 server (its own process,
uvicorn, from bench/restore_all.py), `edgehost up`, 8 writers posting events to one property as fast
as the portal answers; after a random 1-3 s every process of the home is killed at the same instant
(SIGSTOP all, then SIGKILL all) and the home is deleted; a fresh home runs `edgehost restore --all`
from the bucket and every event answered 201 is looked for. Results go to bench/results/durable-loss-<date>.md.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "bench"), str(REPO / "tests"), str(REPO / "tests" / "chaos")]

import restore_all as ra  # noqa: E402
from machine_loss import machine_loss_round  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / f"durable-loss-{date.today()}.md"))
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit("error: --rounds must be at least 1")
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="durable-loss-", dir="/tmp"))
    moto_port = ra.free_port()
    moto = subprocess.Popen([sys.executable, ra.__file__, "--_moto", str(moto_port)], env=ra.base_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{moto_port}"
    rows = []
    try:
        ra.wait_port(moto_port)
        for durable in (True, False):
            for i in range(args.rounds):
                bucket = f"loss-{'d' if durable else 'a'}-{i}-{int(time.time()) % 10**6}"
                ra.s3(endpoint).create_bucket(Bucket=bucket)
                r = machine_loss_round(work / f"{bucket}", endpoint, bucket, durable, rng)
                rows.append(r)
                print(f"{'durable' if durable else 'async  '} round {i + 1}: {r.acked} acked, {r.lost} lost, "
                      f"{r.failed_writes} not acknowledged, killed after {r.seconds_written:.2f} s",
                      file=sys.stderr, flush=True)
    finally:
        moto.terminate()
        moto.wait(10)
    lines = [f"# Durable acknowledgements: machine loss ({date.today()})", "",
             f"`bench/durable_loss.py --rounds {args.rounds} --seed {args.seed}`: 8 writers at full speed on one "
             "property, every process killed at once after a random 1-3 s, the home deleted, a fresh home "
             "restored from the bucket (moto on loopback, the real litestream 0.5.17).", "",
             "| mode | rounds | acknowledged | acknowledged and lost | rounds with a loss | worst round | not acknowledged (503 or cut) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for durable in (True, False):
        mine = [r for r in rows if r.durable == durable]
        lines.append(f"| {'durable' if durable else 'async'} | {len(mine)} | {sum(r.acked for r in mine)} | "
                     f"{sum(r.lost for r in mine)} | {sum(1 for r in mine if r.lost)} | "
                     f"{max(r.lost for r in mine)} of {max(mine, key=lambda r: r.lost).acked} | "
                     f"{sum(r.failed_writes for r in mine)} |")
    lines += ["", "Per round (acknowledged / lost):", "",
              "- durable: " + ", ".join(f"{r.acked}/{r.lost}" for r in rows if r.durable),
              "- async: " + ", ".join(f"{r.acked}/{r.lost}" for r in rows if not r.durable)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
