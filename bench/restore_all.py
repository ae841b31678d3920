"""Restore-all of many tenants: `edgehost restore --all` against plain litestream loops and the raw
download lower bound, on loopback and with added round-trip time (issue 4).

    .venv/bin/python bench/restore_all.py                       # 200 tenants, loopback + 30 ms RTT
    .venv/bin/python bench/restore_all.py --tenants 20 --delay-ms 0

Everything runs on 127.0.0.1: a moto S3 server (its own process, so its CPU shows apart from the
clients'; served by uvicorn, which keeps connections alive as S3 and R2 do, where moto_server closes
every one), databases replicated into it by the real litestream binary (`litestream replicate` with
the repo's litestream.yml, synced through its control socket), and, for the delayed pass, a delaying
TCP proxy (a child process of this script) in front of moto. Methods, each restoring the global DB
plus every tenant into an empty directory:

  a  seq          `litestream restore -o OUT URL`, one after another (a bash while-read loop)
  b  xargs-P8     the same commands through `xargs -P 8`
  c  raw-boto3    a boto3 download, 16 threads, of exactly the LTX objects the restores need
                  (found beforehand, untimed, with `litestream restore -dry-run`): the lower bound
  d  edgehost-PN  `edgehost restore --all --parallel N --to DIR --json`; the first --edgehost-parallel
                  value runs on every network, the others only with the delay
  e  (optional)   xargs -P8 of `litestream restore -txid T`, T read from one LIST of the whole
                  replica: what edgehost could do to halve litestream's LISTs (see bench/README.md)

Each method is checked afterwards (every database present, the row count of every database equals
what was written, PRAGMA integrity_check on a sample; for the raw download every object present at
its size), so nothing wins by failing. S3 requests per method are counted from moto's request log.
The seeded bucket (objects and expected row counts) is cached under --cache, so a rerun uploads it
instead of building and replicating the databases again.

netem is not in this machine's kernel (CONFIG_NET_SCH_NETEM is not set), so the delay is a proxy;
`--_proxy` runs it. What it does, per TCP connection: bytes from the client reach moto DELAY/2
after the proxy read them, and not before 1.5 x DELAY after the connection was accepted (a TCP
handshake costs one round trip before the first request can leave); bytes from moto reach the
client DELAY/2 after the proxy read them. Order is kept, there is no bandwidth limit, loss or
window effect: latency only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LITESTREAM = VENV_BIN / "litestream"
EDGEHOST = VENV_BIN / "edgehost"
BUCKET = "bench"
PREFIX = "edgehost"
GLOBAL_NAME = "honestcam-study.db"
PROPERTY_NAME = "honestcam.db"
GLOBAL_KEY = "@global"
CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


# --- the delaying proxy (runs as its own process: `restore_all.py --_proxy LISTEN UPSTREAM DELAY_MS`) ---


def run_proxy(listen_port: int, upstream_port: int, rtt_ms: float) -> None:
    one_way = rtt_ms / 2000.0
    handshake = rtt_ms / 1000.0

    async def pump(reader, writer, not_before: float) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def receive() -> None:
            while True:
                try:
                    data = await reader.read(256 * 1024)
                except (ConnectionError, OSError):
                    data = b""
                await queue.put((max(loop.time(), not_before) + one_way, data))
                if not data:
                    return

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    if not data:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError):
                    return

        await asyncio.gather(receive(), deliver())

    async def handle(client_reader, client_writer) -> None:
        accepted = asyncio.get_running_loop().time()
        running.add(asyncio.current_task())  # a strong reference: never garbage-collected mid-flight
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_writer.close()
            return
        for w in (client_writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stats["connections"] += 1
        try:
            await asyncio.gather(pump(client_reader, up_writer, accepted + handshake),
                                 pump(up_reader, client_writer, 0.0))
        except Exception as exc:  # a peer went away mid-stream; the client sees a broken connection
            stats[f"ended with {type(exc).__name__}"] += 1
        finally:
            for w in (client_writer, up_writer):
                try:
                    w.close()
                except Exception:
                    pass
            running.discard(asyncio.current_task())

    stats: collections.Counter = collections.Counter()
    running: set = set()

    def stop() -> None:
        print(f"delay proxy: {dict(stats)}", file=sys.stderr, flush=True)
        os._exit(0)

    async def main() -> None:
        import signal

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=512)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def run_moto(port: int) -> None:
    """moto's S3 app under uvicorn, which keeps connections alive as S3 and R2 do.

    `moto_server` (werkzeug's dev server) answers every request with `Connection: close`, so each
    request would pay a TCP handshake, which no real endpoint makes a client do.
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("MOTO_PORT", str(port))
    import uvicorn
    from moto.server import DomainDispatcherApplication, create_backend_app

    logging.basicConfig(level=logging.INFO)
    app = DomainDispatcherApplication(create_backend_app)
    # moto matches the Host header against every service's URL patterns on each request (~1.5 ms of
    # CPU); the answer depends on the host alone, so remember it.
    lookup, memo = app.get_backend_for_host, {}
    app.get_backend_for_host = lambda host: memo[host] if host in memo else memo.setdefault(host, lookup(host))
    uvicorn.run(app, host="127.0.0.1", port=port, interface="wsgi", log_level="info", access_log=True,
                use_colors=False, timeout_keep_alive=60, backlog=512)


# --- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def s3(endpoint: str, pool: int = 16):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
                        config=Config(max_pool_connections=pool, s3={"addressing_style": "path"},
                                      retries={"max_attempts": 3, "mode": "standard"}))


def base_env() -> dict[str, str]:
    """The process environment without anything that would steer the tools elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EDGEHOST_", "AWS_", "LITESTREAM_", "R2_")) and k not in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    env.update(CREDS)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env  # AWS_CA_BUNDLE is gone with the other AWS_ vars: it breaks litestream 0.5.17's S3 client


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat), to see others' load."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def client_cpu() -> float:
    """CPU time of this process plus its waited-for children (the litestream, edgehost, bash processes)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def db_url(key: str, endpoint: str) -> str:
    rel = GLOBAL_NAME if key == GLOBAL_KEY else f"{key}/{PROPERTY_NAME}"
    return f"s3://{BUCKET}/{PREFIX}/{rel}?endpoint={endpoint}&forcePathStyle=true&region=us-east-1"


def db_relpath(key: str) -> str:
    return GLOBAL_NAME if key == GLOBAL_KEY else f"{key}/{PROPERTY_NAME}"


class MotoLog:
    """moto's request log (uvicorn's access log, or werkzeug's), read between two marks."""

    REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|DELETE|HEAD) (\S+)')
    PEER = re.compile(r'(127\.0\.0\.1:\d+) - "')

    def __init__(self, path: Path):
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size

    def counts(self, since: int) -> dict[str, int]:
        time.sleep(0.3)  # the server logs after it answered
        with open(self.path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        counts: collections.Counter = collections.Counter()
        peers = set()
        for line in text.splitlines():
            m = self.REQUEST.search(line)
            if not m:
                continue
            verb, path = m.groups()
            counts["LIST" if verb == "GET" and "list-type" in path else verb] += 1
            peer = self.PEER.search(line)
            if peer:
                peers.add(peer.group(1))
        if peers:
            counts["connections"] = len(peers)  # distinct client ports (uvicorn logs them)
        return dict(counts)


# --- seeding ----------------------------------------------------------------------------------


def tenant_names(n: int) -> list[str]:
    return [f"prop-{i:04d}" for i in range(n)]


def build_databases(data: Path, tenants: list[str], min_mb: float, max_mb: float, seed: int) -> dict[str, int]:
    """WAL-mode databases of random blob rows; returns the row count of each."""
    rng = random.Random(seed)
    rows: dict[str, int] = {}
    for name in tenants:
        path = data / name / PROPERTY_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        target = int(rng.uniform(min_mb, max_mb) * 1024 * 1024)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE compliance_events(id INTEGER PRIMARY KEY, at REAL, payload BLOB)")
        written, n = 0, 0
        while written < target:
            batch = []
            for _ in range(50):
                size = rng.randint(500, 8000)
                batch.append((time.time(), rng.randbytes(size)))
                written += size + 20
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO compliance_events(at, payload) VALUES (?, ?)", batch)
            conn.execute("COMMIT")
            n += len(batch)
        conn.close()
        rows[name] = n
    g = sqlite3.connect(data / GLOBAL_NAME, isolation_level=None)
    g.execute("PRAGMA journal_mode=WAL")
    g.execute("CREATE TABLE compliance_events(id INTEGER PRIMARY KEY, at REAL, payload BLOB)")
    g.executemany("INSERT INTO compliance_events(at, payload) VALUES (?, ?)", [(time.time(), rng.randbytes(200)) for _ in range(100)])
    g.close()
    rows[GLOBAL_KEY] = 100
    return rows


def append_rows(data: Path, keys: list[str], rows: dict[str, int], seed: int) -> None:
    """A few small appends to every database: the next replication adds one small LTX file each."""
    rng = random.Random(seed)
    for key in keys:
        conn = sqlite3.connect(data / db_relpath(key), isolation_level=None)
        n = rng.randint(1, 5)
        conn.executemany("INSERT INTO compliance_events(at, payload) VALUES (?, ?)",
                         [(time.time(), rng.randbytes(300)) for _ in range(n)])
        conn.close()
        rows[key] += n


def litestream_config(home: Path) -> Path:
    """The repo's litestream.yml, copied unchanged."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "litestream.yml", home / "litestream.yml")
    return home / "litestream.yml"


def replicate(config: Path, data: Path, endpoint: str, socket_path: Path, keys: list[str], rows: dict[str, int],
              increments: int, seed: int) -> None:
    """Run `litestream replicate` as the supervisor does; sync every database through the control
    socket, then `increments` times append a few rows and sync again; stop it (final sync).

    (`replicate -once` is not used: each run of it uploads the whole database again as a new L0
    file, so a restore would have to fetch several full copies.)
    """
    from edgehost.engine.litestream import ControlSocket

    env = {**base_env(), "EDGEHOST_DATA_DIR": str(data), "EDGEHOST_GLOBAL_DB_NAME": GLOBAL_NAME,
           "EDGEHOST_PROPERTY_DB_NAME": PROPERTY_NAME, "EDGEHOST_REPLICA_URL": f"s3://{BUCKET}/{PREFIX}",
           "EDGEHOST_S3_ENDPOINT": endpoint, "EDGEHOST_S3_REGION": "us-east-1", "EDGEHOST_S3_FORCE_PATH_STYLE": "true",
           "EDGEHOST_LITESTREAM_SOCKET": str(socket_path)}
    log = open(config.parent / "litestream.log", "wb")
    proc = subprocess.Popen([str(LITESTREAM), "replicate", "-config", str(config)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    sock = ControlSocket(socket_path, timeout=120)
    paths = [str(data / db_relpath(k)) for k in keys]
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"litestream replicate exited: {(config.parent / 'litestream.log').read_text()[-2000:]}")
            if sock.alive():
                known = {d.get("path") for d in sock.list()}
                if all(p in known for p in paths):
                    break
            if time.monotonic() > deadline:
                raise SystemExit("litestream did not pick up every database within 300s")
            time.sleep(0.5)

        def sync_all() -> None:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda p: sock.sync(Path(p), wait=True, timeout=110), paths))

        sync_all()
        for i in range(increments):
            append_rows(data, keys, rows, seed + 1 + i)
            sync_all()
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()


def seed_bucket(args, endpoint: str, work: Path) -> tuple[dict[str, int], dict | None, Path | None]:
    """Fill the bucket (from the cache when it matches): the expected row count per database, the
    objects each restore fetches when the cache knows them, and the cache directory."""
    client = s3(endpoint)
    client.create_bucket(Bucket=BUCKET)
    tag = hashlib.sha1(json.dumps([args.tenants, args.min_mb, args.max_mb, args.increments, args.seed,
                                   (REPO / "litestream.yml").read_text()]).encode()).hexdigest()[:12]
    cache = Path(args.cache) / f"t{args.tenants}-{tag}" if args.cache else None
    if cache and (cache / "manifest.json").exists():
        manifest = json.loads((cache / "manifest.json").read_text())

        def put(obj):
            s3c.put_object(Bucket=BUCKET, Key=obj["key"], Body=(cache / "objects" / obj["key"]).read_bytes(),
                           Metadata=obj.get("metadata") or {})

        s3c = s3(endpoint, 8)
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, manifest["objects"]))
        print(f"seeded {len(manifest['objects'])} objects from the cache {cache} in {time.monotonic() - started:.1f}s",
              file=sys.stderr, flush=True)
        needs = manifest.get("restore_objects")
        return manifest["rows"], ({k: [tuple(o) for o in v] for k, v in needs.items()} if needs else None), cache

    started = time.monotonic()
    data = work / "source" / "data"
    tenants = tenant_names(args.tenants)
    rows = build_databases(data, tenants, args.min_mb, args.max_mb, args.seed)
    built = time.monotonic()
    config = litestream_config(work / "source")
    size = sum(p.stat().st_size for p in data.rglob("*.db*") if p.is_file())
    replicate(config, data, endpoint, work / "source" / "ls.sock", list(rows), rows, args.increments, args.seed)
    print(f"built {len(rows)} databases ({size / 2**20:.0f} MiB with their WAL) in {built - started:.1f}s, "
          f"replicated ({1 + args.increments} syncs each) in {time.monotonic() - built:.1f}s", file=sys.stderr, flush=True)
    shutil.rmtree(work / "source" / "data")
    if cache:
        objects = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for o in page.get("Contents", []):
                resp = client.get_object(Bucket=BUCKET, Key=o["Key"])
                dest = cache / "objects" / o["Key"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(resp["Body"].read())
                objects.append({"key": o["Key"], "size": o["Size"], "metadata": resp.get("Metadata") or {}})
        (cache / "manifest.json").write_text(json.dumps({"rows": rows, "objects": objects}))
    return rows, None, cache


# --- what a restore needs ---------------------------------------------------------------------


def restore_objects(keys: list[str], endpoint: str) -> dict[str, list[tuple[str, int]]]:
    """Per database, the objects `litestream restore -dry-run` says it fetches (key, size)."""
    row_re = re.compile(r"^\s*(\d+)\s+([0-9a-f]{16}-[0-9a-f]{16}\.ltx)\s+[0-9a-f]{16}\s+[0-9a-f]{16}\s+(\d+)\s", re.M)

    def one(key: str):
        proc = subprocess.run([str(LITESTREAM), "restore", "-dry-run", "-o", "/nonexistent/dry-run.db", db_url(key, endpoint)],
                              env=base_env(), capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise SystemExit(f"dry-run {key}: {proc.stderr.strip()[-500:]}")
        found = [(f"{PREFIX}/{db_relpath(key)}/{int(level):04d}/{name}", int(size))
                 for level, name, size in row_re.findall(proc.stdout)]
        if not found:
            raise SystemExit(f"dry-run {key}: no files in {proc.stdout!r}")
        return key, found

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, keys))


# --- the methods ------------------------------------------------------------------------------


def job_list(keys: list[str], endpoint: str, out: Path, path: Path) -> Path:
    lines = []
    for key in keys:
        target = out / db_relpath(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines.append(f"{target} {db_url(key, endpoint)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def method_sequential(keys, endpoint, out, work, **_):
    jobs = job_list(keys, endpoint, out, work / "jobs.txt")
    script = f'set -e; while read -r out url; do "{LITESTREAM}" restore -o "$out" "$url"; done < "{jobs}"'
    return subprocess.run(["bash", "-c", script], env=base_env(), capture_output=True, text=True)


def method_xargs(keys, endpoint, out, work, parallel=8, **_):
    jobs = job_list(keys, endpoint, out, work / "jobs.txt")
    return subprocess.run(["bash", "-c", f'xargs -P {parallel} -L 1 "{LITESTREAM}" restore -o < "{jobs}"'],
                          env=base_env(), capture_output=True, text=True)


def latest_txids(endpoint: str) -> dict[str, str]:
    """Each database's newest txid from one paginated LIST of the whole replica (no delimiter)."""
    client = s3(endpoint)
    best: dict[str, int] = {}
    name_re = re.compile(rf"^{PREFIX}/(?:([^/]+)/)?([^/]+)/\d{{4}}/[0-9a-f]{{16}}-([0-9a-f]{{16}})\.ltx$")
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):
        for obj in page.get("Contents", []):
            m = name_re.match(obj["Key"])
            if not m:
                continue
            key = m.group(1) if m.group(1) else GLOBAL_KEY
            best[key] = max(best.get(key, 0), int(m.group(3), 16))
    return {k: f"{v:016x}" for k, v in best.items()}


def method_xargs_txid(keys, endpoint, out, work, parallel=8, **_):
    """Proposed for edgehost: learn every database's latest txid from one LIST of the replica, then
    `litestream restore -txid`, which skips two of litestream's four passes over the levels."""
    txids = latest_txids(endpoint)
    lines = []
    for key in keys:
        target = out / db_relpath(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines.append(f"{txids[key]} {target} {db_url(key, endpoint)}")
    jobs = work / "jobs-txid.txt"
    jobs.write_text("\n".join(lines) + "\n")
    return subprocess.run(["bash", "-c", f'xargs -P {parallel} -L 1 sh -c \'exec "$0" restore -txid "$1" -o "$2" "$3"\' '
                                         f'"{LITESTREAM}" < "{jobs}"'], env=base_env(), capture_output=True, text=True)


def method_raw(keys, endpoint, out, work, objects=None, threads=16, **_):
    client = s3(endpoint, threads)
    wanted = [o for key in keys for o in objects[key]]

    def get(obj):
        dest = out / obj[0]
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as f:
            shutil.copyfileobj(client.get_object(Bucket=BUCKET, Key=obj[0])["Body"], f, 1 << 20)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, wanted))
    return subprocess.CompletedProcess([], 0, "", "")


def method_edgehost(keys, endpoint, out, work, parallel=8, **_):
    home = work / "kit"
    if not (home / "litestream.yml").exists():
        litestream_config(home)
    env = {**base_env(), "EDGEHOST_HOME": str(home), "EDGEHOST_DATA_DIR": str(home / "data"),
           "EDGEHOST_REPLICA_URL": f"s3://{BUCKET}/{PREFIX}", "EDGEHOST_S3_ENDPOINT": endpoint,
           "EDGEHOST_S3_REGION": "us-east-1", "EDGEHOST_GLOBAL_DB_NAME": GLOBAL_NAME,
           "EDGEHOST_PROPERTY_DB_NAME": PROPERTY_NAME, "COLUMNS": "200"}
    return subprocess.run([str(EDGEHOST), "restore", "--all", "--parallel", str(parallel), "--to", str(out), "--json"],
                          env=env, capture_output=True, text=True)


# --- checks -----------------------------------------------------------------------------------


def verify_databases(out: Path, rows: dict[str, int], sample: int, seed: int) -> str:
    files = [p for p in out.rglob("*.db")]
    if len(files) != len(rows):
        return f"{len(files)} .db files, expected {len(rows)}"
    for key, expected in rows.items():
        path = out / db_relpath(key)
        if not path.exists():
            return f"{key}: missing"
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            got = conn.execute("SELECT count(*) FROM compliance_events").fetchone()[0]
        finally:
            conn.close()
        if got != expected:
            return f"{key}: {got} rows, expected {expected}"
    for key in random.Random(seed).sample(sorted(rows), min(sample, len(rows))):
        conn = sqlite3.connect(f"{(out / db_relpath(key)).as_uri()}?mode=ro", uri=True)
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
        if check != "ok":
            return f"{key}: integrity_check {check}"
    return f"ok: {len(rows)} DBs, all row counts, integrity {min(sample, len(rows))}"


def verify_objects(out: Path, objects: dict[str, list[tuple[str, int]]]) -> str:
    wanted = [o for objs in objects.values() for o in objs]
    for key, size in wanted:
        path = out / key
        if not path.exists() or path.stat().st_size != size:
            return f"{key}: missing or wrong size"
    return f"ok: {len(wanted)} objects, {sum(s for _, s in wanted) / 2**20:.0f} MiB"


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--_proxy":
        run_proxy(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--_moto":
        run_moto(int(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tenants", type=int, default=200)
    ap.add_argument("--min-mb", type=float, default=1.0)
    ap.add_argument("--max-mb", type=float, default=4.0)
    ap.add_argument("--increments", type=int, default=2,
                    help="small appends replicated after the first sync: LTX files per database = 1 + this")
    ap.add_argument("--delay-ms", type=float, default=30.0,
                    help="round-trip time the proxy adds for the second pass (0: loopback only)")
    ap.add_argument("--no-loopback", action="store_true", help="only the delayed pass")
    ap.add_argument("--parallel", type=int, default=8, help="xargs -P")
    ap.add_argument("--raw-threads", type=int, default=16)
    ap.add_argument("--edgehost-parallel", default="8,16",
                    help="comma-separated --parallel values; the first runs on every network, the others only "
                         "with the delay (on loopback moto's CPU, not parallelism, bounds them)")
    ap.add_argument("--methods", default="a,b,c,d",
                    help="a seq, b xargs, c raw lower bound, d edgehost, e xargs with -txid from one LIST (a proposed fix)")
    ap.add_argument("--sample", type=int, default=20, help="databases given PRAGMA integrity_check per method")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "edgehost-bench-cache"),
                    help="where the seeded bucket is kept between runs ('' disables)")
    ap.add_argument("--server", choices=("uvicorn", "werkzeug"), default="uvicorn",
                    help="what serves moto: uvicorn keeps connections alive; werkzeug (moto_server) closes each one")
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="restore-all-bench-"))
    procs: list[subprocess.Popen] = []
    results = []
    try:
        moto_port = free_port()
        log_path = work / "moto.log"
        server = ([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)] if args.server == "werkzeug"
                  else [sys.executable, __file__, "--_moto", str(moto_port)])
        procs.append(subprocess.Popen(server, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=base_env()))
        wait_port(moto_port)
        direct = f"http://127.0.0.1:{moto_port}"
        log = MotoLog(log_path)
        rows, objects, cache = seed_bucket(args, direct, work)
        keys = list(rows)  # the global DB and every tenant
        if objects is None:
            objects = restore_objects(keys, direct)
            if cache:
                manifest = json.loads((cache / "manifest.json").read_text())
                manifest["restore_objects"] = objects
                (cache / "manifest.json").write_text(json.dumps(manifest))
        per_db = collections.Counter(len(v) for v in objects.values())
        total_bytes = sum(s for v in objects.values() for _, s in v)
        print(f"{len(keys)} databases; LTX objects a restore fetches per database: {dict(per_db)}; "
              f"{total_bytes / 2**20:.0f} MiB in all", file=sys.stderr, flush=True)

        moto_pid = procs[0].pid
        proxy_pid = None
        networks = [] if args.no_loopback else [("loopback", direct)]
        if args.delay_ms > 0:
            proxy_port = free_port()
            procs.append(subprocess.Popen([sys.executable, __file__, "--_proxy", str(proxy_port), str(moto_port),
                                           str(args.delay_ms)], env=base_env()))
            proxy_pid = procs[-1].pid
            wait_port(proxy_port)
            networks.append((f"+{args.delay_ms:g}ms RTT", f"http://127.0.0.1:{proxy_port}"))

        methods = []
        chosen = set(args.methods.split(","))
        if "a" in chosen:
            methods.append(("a seq litestream", method_sequential, {}))
        if "b" in chosen:
            methods.append((f"b xargs -P{args.parallel}", method_xargs, {"parallel": args.parallel}))
        if "c" in chosen:
            methods.append((f"c raw boto3 x{args.raw_threads}", method_raw, {"objects": objects, "threads": args.raw_threads}))
        if "d" in chosen:
            for i, n in enumerate(int(x) for x in args.edgehost_parallel.split(",") if x):
                # values after the first run only with the delay, where parallelism is what counts
                methods.append((f"d edgehost -P{n}", method_edgehost, {"parallel": n, "delayed_only": i > 0}))
        if "e" in chosen:
            methods.append((f"e xargs -P{args.parallel} -txid", method_xargs_txid, {"parallel": args.parallel}))

        for net, endpoint in networks:
            for label, fn, kw in methods:
                kw = dict(kw)
                if kw.pop("delayed_only", False) and endpoint == direct and len(networks) > 1:
                    continue
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                mark = log.mark()
                cpu = {"moto": cpu_seconds(moto_pid), "proxy": cpu_seconds(proxy_pid) if proxy_pid else 0.0,
                       "clients": client_cpu(), "machine": machine_busy()}
                started = time.monotonic()
                proc = fn(keys, endpoint, out, work, **kw)
                seconds = time.monotonic() - started
                cpu = {"moto": cpu_seconds(moto_pid) - cpu["moto"],
                       "proxy": (cpu_seconds(proxy_pid) - cpu["proxy"]) if proxy_pid and endpoint != direct else 0.0,
                       "clients": client_cpu() - cpu["clients"], "machine": machine_busy() - cpu["machine"]}
                # what the rest of the machine (other processes, not this benchmark's) burned meanwhile
                cpu["others"] = max(0.0, cpu["machine"] - cpu["moto"] - cpu["proxy"] - cpu["clients"])
                counts = log.counts(mark)
                if proc.returncode != 0:
                    check = f"FAILED rc={proc.returncode}: {(proc.stderr or '').strip()[-300:]}"
                elif fn is method_raw:
                    check = verify_objects(out, objects)
                else:
                    check = verify_databases(out, rows, args.sample, args.seed)
                if fn is method_edgehost and proc.returncode == 0:
                    report = json.loads(proc.stdout)
                    per = sorted(r["seconds"] for r in report["results"])
                    check += (f"; edgehost says {report['seconds']:.1f}s, per DB median {per[len(per) // 2]:.2f}s"
                              f" max {per[-1]:.2f}s")
                row = {"network": net, "method": label, "seconds": round(seconds, 2), "requests": counts,
                       "moto_cpu": round(cpu["moto"], 1), "proxy_cpu": round(cpu["proxy"], 1),
                       "client_cpu": round(cpu["clients"], 1), "others_cpu": round(cpu["others"], 1), "check": check}
                results.append(row)
                print(f"  {net:14s} {label:20s} {seconds:8.2f}s  {counts}  cpu: moto {cpu['moto']:.1f}s"
                      f" proxy {cpu['proxy']:.1f}s clients {cpu['clients']:.1f}s others {cpu['others']:.1f}s  {check}", file=sys.stderr, flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{len(rows)} databases ({args.tenants} tenants of {args.min_mb:g}-{args.max_mb:g} MB + the global DB), "
          f"{total_bytes / 2**20:.0f} MiB of LTX; {os.cpu_count()} CPUs")
    print("| network | method | seconds | x lower bound | LIST | GET | other | TCP conns | CPU s moto | CPU s proxy | CPU s clients | CPU s others | check |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    bounds = {r["network"]: r["seconds"] for r in results if r["method"].startswith("c ")}
    for r in results:
        bound = bounds.get(r["network"])
        ratio = f"{r['seconds'] / bound:.1f}" if bound else "-"
        req = dict(r["requests"])
        lists, gets, conns = req.pop("LIST", 0), req.pop("GET", 0), req.pop("connections", "-")
        other = sum(req.values())
        print(f"| {r['network']} | {r['method']} | {r['seconds']:.1f} | {ratio} | {lists} | {gets} | {other} | {conns} | {r['moto_cpu']:.1f} | {r['proxy_cpu']:.1f} | {r['client_cpu']:.1f} | {r.get('others_cpu', 0):.1f} | {r['check']} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
