"""How much of asynchronous throughput can durable mode keep, as a function of how long one `sync -wait`
takes? The portal's group commit against a stand-in control socket that answers every sync after D ms,
beside the real litestream in the same run (issue 17's throughput goal).

    .venv/bin/python bench/durable_ceiling.py                         # D = 0,2,3,4,6,8 ms, 2 repeats
    .venv/bin/python bench/durable_ceiling.py --delays 0,3,6 --seconds 5

One kit home (moto S3 under uvicorn on 127.0.0.1, `edgehost up` with the real litestream 0.5.17) gets
a property; then, per repeat:

  real       bench/durable_throughput.py's run: `edgehost up`, 8 client processes posting back to
             back for SECONDS, async then durable; the coordinator's own sync p50 comes from the
             portal's /_edgehost/durable
  stand-in   the same portal alone (the supervisor stopped, so no litestream), its control socket
             replaced by a stand-in that answers each POST /sync after D ms with the txid replicated;
             async once, then durable for each D

The stand-in rows are an upper bound for a litestream whose sync takes that long: nothing is uploaded,
so nothing else competes for the two cores. Results go to stdout and to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "src"), str(BENCH), str(REPO / "tests"), str(REPO / "tests" / "chaos")]

import durable_throughput as dt  # noqa: E402
import restore_all as ra  # noqa: E402
from machine_loss import new_home  # noqa: E402
from procs import start_supervisor  # noqa: E402

from edgehost.supervisor.run import portal_spec  # noqa: E402


class StandIn:
    """A control socket answering POST /sync after `delay` seconds (txid = replicated_txid)."""

    def __init__(self, path: Path):
        self.path, self.delay, self.syncs = path, 0.0, 0
        threading.Thread(target=self._serve, daemon=True).start()
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if self.delay:
                    await asyncio.sleep(self.delay)
                self.syncs += 1
                body = json.dumps({"txid": 1, "replicated_txid": 1, "changed": True}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    def _serve(self) -> None:
        async def main() -> None:
            server = await asyncio.start_unix_server(self._handle, path=str(self.path))
            async with server:
                await server.serve_forever()

        asyncio.run(main())


def portal_run(settings, durable: bool, seconds: float, clients: int, log: Path) -> dict:
    spec = portal_spec(settings, EDGEHOST_DURABLE_PROPERTY_DBS="true" if durable else "false")
    env = {**os.environ, **spec.env, "EDGEHOST_DURABLE_PROPERTY_DBS": "true" if durable else "false"}
    proc = subprocess.Popen(spec.argv, env=env, cwd=str(settings.home), stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)
    url = settings.portal_url
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit(f"error: the portal did not come up; see {log}")
        lat, _, failed, _ = dt.drive(f"{url}/properties/acme/events", clients, seconds, False)
        stats = httpx.get(f"{url}/_edgehost/durable", timeout=5).json()["databases"].get("acme", {})
        return {"rate": len(lat) / seconds, "p50": dt.pct(lat, 0.5) * 1000, "failed": failed,
                "syncs": stats.get("syncs", 0), "sync_p50": stats.get("sync_p50_ms")}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delays", default="0,2,3,4,6,8", help="the stand-in's answer delays, ms")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    delays = [float(x) for x in args.delays.split(",") if x]
    work = Path(tempfile.mkdtemp(prefix="durable-ceiling-"))
    port = ra.free_port()
    moto = subprocess.Popen([sys.executable, str(BENCH / "restore_all.py"), "--_moto", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ra.base_env())
    rows: list[tuple[str, float, dict]] = []  # (what, delay, result)
    try:
        ra.wait_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        ra.s3(endpoint).create_bucket(Bucket="ceiling")
        home = new_home(work, "standin", endpoint, "ceiling", **ra.CREDS)
        home.env["PYTHONPATH"] = str(REPO / "src")
        sup = start_supervisor(home)
        settings = home.settings()
        httpx.post(f"{settings.portal_url}/properties", json={"slug": "acme"}, timeout=10).raise_for_status()
        sup.stop()
        settings.litestream_socket.unlink(missing_ok=True)
        stand_in = StandIn(settings.litestream_socket)
        for r in range(args.repeats):
            for durable in (False, True):
                res = dt.run(work / f"real-{r}", endpoint, durable, args.clients, args.seconds)
                res = {"rate": res["rate"], "p50": res["p50"] * 1000, "failed": res["failed"],
                       "syncs": res["syncs"], "sync_p50": res["sync_p50"]}
                rows.append((f"real {'durable' if durable else 'async'}", -1.0, res))
                print(rows[-1], file=sys.stderr, flush=True)
            rows.append(("stand-in async", -1.0, portal_run(settings, False, args.seconds, args.clients, work / "portal.log")))
            print(rows[-1], file=sys.stderr, flush=True)
            for d in delays:
                stand_in.delay = d / 1000
                rows.append(("stand-in durable", d, portal_run(settings, True, args.seconds, args.clients, work / "portal.log")))
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        moto.terminate()

    lines = [f"durable_ceiling: {args.clients} client processes, {args.seconds:g} s per run, {args.repeats} repeats, "
             f"{os.cpu_count()} CPUs; ratio = durable / async of the same repeat and the same kind (real or stand-in)",
             "", "| repeat | run | stand-in delay ms | events/s | ratio to async | ack p50 ms | syncs | sync p50 ms (coordinator) | non-201 |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    per_repeat = 2 + 1 + len(delays)
    ratios: dict[str, list[float]] = {}
    for i, (what, d, res) in enumerate(rows):
        rep = i // per_repeat
        base = next(x for (w, _, x) in rows[rep * per_repeat:(rep + 1) * per_repeat]
                    if w == ("real async" if what.startswith("real") else "stand-in async"))
        ratio = res["rate"] / base["rate"] * 100
        key = what if d < 0 else f"{what} {d:g} ms"
        ratios.setdefault(key, []).append(ratio)
        lines.append(f"| {rep + 1} | {what} | {'' if d < 0 else f'{d:g}'} | {res['rate']:.0f} | {ratio:.0f}% | "
                     f"{res['p50']:.1f} | {res['syncs']} | {res['sync_p50'] if res['sync_p50'] is not None else '-'} | {res['failed']} |")
    lines += ["", "| run | ratio to async, each repeat | median |", "| --- | --- | ---: |"]
    for key, vals in ratios.items():
        if "async" not in key:
            lines.append(f"| {key} | {', '.join(f'{v:.0f}%' for v in vals)} | {statistics.median(vals):.0f}% |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
