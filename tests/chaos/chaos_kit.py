"""Tools for the chaos runs: counts, a writer that remembers what the portal acknowledged, a
switchable TCP proxy in front of the S3 endpoint, process hunting, the after-run checks
(`edgehost verify --all`, then a fresh `edgehost restore --all --to DIR` compared write by write),
and `chaos_run`, which wraps one fault in all of that.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from procs import Proc, edgehost, pid_alive, start_supervisor, supervisor_status, wait_until

FULL = os.environ.get("EDGEHOST_CHAOS_FULL", "") not in ("", "0")

# name: (reduced, full). Reduced is what CI runs (the default); EDGEHOST_CHAOS_FULL=1 runs the full counts,
# and EDGEHOST_CHAOS_COUNT_<NAME>=n overrides one of them.
COUNTS = {
    "litestream_kills": (3, 20),
    "portal_kills": (3, 20),
    "supervisor_kills": (1, 5),
    "s3_outage_seconds": (20, 300),
    "power_cuts": (1, 10),
    "disk_full_cycles": (1, 3),
}

# Litestream's sync interval (its default, which litestream.yml keeps): the documented loss window
# for a machine whose disk dies with it.
SYNC_INTERVAL = 1.0

# Fast restarts, and no crash-loop verdict: the kills are injected, not crashes the operator must see.
# (With the shipped policy, 5 kill -9 of one service within 60 s mark it FAILED and stop the
# supervisor with exit 4, by design; the backoff doubles to 60 s.)
CHAOS_TOML = """\
[restart]
initial_backoff = 0.2
max_backoff = 2.0
healthy_after = 5.0
crash_loop_failures = 10000
crash_loop_window = 60.0
"""


def count(name: str) -> int:
    override = os.environ.get(f"EDGEHOST_CHAOS_COUNT_{name.upper()}")
    if override:
        return int(override)
    reduced, full = COUNTS[name]
    return full if FULL else reduced


def rng(run: str) -> random.Random:
    """A seeded random source per run; EDGEHOST_CHAOS_SEED replays a run's moments."""
    seed = int(os.environ.get("EDGEHOST_CHAOS_SEED") or secrets.randbits(32))
    print(f"[chaos] {run}: seed {seed} (replay with EDGEHOST_CHAOS_SEED={seed})")
    return random.Random(seed)


# --- results ------------------------------------------------------------------------------------


@dataclass
class ChaosResult:
    fault: str
    injected: int
    unit: str  # what `injected` counts
    acked: int = 0
    lost: int = 0  # acknowledged writes missing (or different) in the fresh restore: must be 0
    in_window: int = 0  # acknowledged < 1 sync interval before a whole-machine cut and not yet in the replica then
    recover_seconds: float = 0.0  # worst case over the injections
    recover_mean: float = 0.0
    unacked_present: int = 0  # writes whose answer was lost in the fault but which did commit (harmless)
    verify_attempts: int = 0
    notes: str = ""

    def line(self) -> str:
        return (f"CHAOS RESULT fault={self.fault} injected={self.injected} {self.unit} acked={self.acked} "
                f"lost={self.lost} in_window={self.in_window} recover_max={self.recover_seconds:.2f}s "
                f"recover_mean={self.recover_mean:.2f}s unacked_present={self.unacked_present} "
                f"verify_attempts={self.verify_attempts}" + (f" notes={self.notes!r}" if self.notes else ""))


RESULTS: list[ChaosResult] = []


def record(result: ChaosResult) -> None:
    RESULTS.append(result)
    print(result.line())


def results_table(results: list[ChaosResult]) -> str:
    head = ("| fault | count injected | writes acknowledged | rows lost | in-window (not yet replicated at the cut) "
            "| time to recover (max / mean) | notes |")
    rows = [head, "|" + " --- |" * 7]
    for r in results:
        unit = r.unit[:-1] if r.injected == 1 and r.unit in ("kills", "cuts", "fills") else r.unit
        rows.append(f"| {r.fault} | {r.injected} {unit} | {r.acked} | {r.lost} | {r.in_window} | "
                    f"{r.recover_seconds:.2f} s / {r.recover_mean:.2f} s | {r.notes} |")
    return "\n".join(rows)


def write_summary(terminalreporter) -> None:
    """The session's results table at the end of pytest's summary (and in EDGEHOST_CHAOS_REPORT)."""
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


def stats(samples: list[float]) -> tuple[float, float]:
    return (round(max(samples), 2), round(sum(samples) / len(samples), 2)) if samples else (0.0, 0.0)


# --- the writer ---------------------------------------------------------------------------------


@dataclass
class Ack:
    key: object  # event id, or user id for the global DB
    content: tuple  # what must be found in the restored row
    at: float  # wall time the acknowledgement arrived


class AckWriter:
    """Writes through the portal in a thread and records every write it acknowledged, with its content.

    With a slug it appends compliance events (the append-only per-property DB); without one it
    creates one study user per write in the global DB. Nothing is retried: a write whose answer
    was lost in a fault may or may not be in the database, and only acknowledged ones must be.
    """

    def __init__(self, url: str, slug: str | None, pause: float = 0.01, pad: int = 0, name: str = ""):
        self.url, self.slug, self.pause, self.pad = url, slug, pause, pad
        self.name = name or slug or "global"
        self.acked: dict[object, Ack] = {}
        self.errors = 0
        self.last_ack = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"writer-{self.name}")
        self._run_id = secrets.token_hex(3)

    def _one(self, client: httpx.Client, i: int) -> Ack | None:
        token = f"{self._run_id}-{i}-{secrets.token_hex(4)}"
        if self.slug:
            payload = {"i": i, "t": token}
            if self.pad:
                payload["pad"] = "x" * self.pad
            resp = client.post(f"{self.url}/properties/{self.slug}/events", json={"kind": "chaos", "payload": payload})
            if resp.status_code != 201:
                return None
            body = resp.json()
            return Ack(body["id"], ("chaos", json.dumps(payload, sort_keys=True)), time.time())
        uid = f"u-{token}"
        resp = client.put(f"{self.url}/study/users/{uid}",
                          json={"email": f"{token}@chaos.test", "display_name": str(i)})
        if resp.status_code != 200:
            return None
        return Ack(uid, (f"{token}@chaos.test", str(i)), time.time())

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            i = 0
            while not self._stop.is_set():
                try:
                    ack = self._one(client, i)
                except httpx.HTTPError:
                    ack = None
                    time.sleep(0.05)
                if ack is None:
                    self.errors += 1
                else:
                    self.acked[ack.key] = ack
                    self.last_ack = ack.at
                i += 1
                if self.pause:
                    time.sleep(self.pause)

    def start(self) -> "AckWriter":
        self._thread.start()
        return self

    def stop(self) -> "AckWriter":
        self._stop.set()
        self._thread.join(15)
        return self

    def count(self) -> int:
        return len(self.acked)

    def wait_acks(self, more: int, timeout: float = 30) -> None:
        """Wait until this writer has `more` further acknowledgements."""
        target = len(self.acked) + more
        wait_until(lambda: len(self.acked) >= target, timeout, interval=0.05, what=f"{self.name}: {more} more writes")

    # what must be in a restored copy of this writer's database
    def relpath(self, settings) -> str:
        return f"{self.slug}/{settings.property_db_name}" if self.slug else settings.global_db_name

    def read_rows(self, db: Path) -> dict[object, tuple]:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            if self.slug:
                return {r[0]: (r[1], json.dumps(json.loads(r[2]), sort_keys=True))
                        for r in conn.execute("SELECT id, kind, payload FROM compliance_events")
                        if r[1] == "chaos"}
            return {r[0]: (r[1], r[2]) for r in conn.execute(
                "SELECT user_id, email, display_name FROM study_users WHERE user_id LIKE 'u-%'")}
        finally:
            conn.close()


# Pause between one writer's writes: the full runs write as fast as 2 cores allow with 3 writers,
# the reduced ones at about half that, to leave CI's CPU to the processes under test.
WRITER_PAUSE = 0.01 if FULL else 0.03


def start_writers(url: str, slugs: list[str], pause: float = WRITER_PAUSE, pad: int = 0) -> list[AckWriter]:
    """One writer per property (append-only events) and one on the global DB (a new study user per write)."""
    writers = [AckWriter(url, s, pause, pad) for s in slugs] + [AckWriter(url, None, pause * 2)]
    for w in writers:
        w.start()
    return writers


def create_properties(url: str, slugs: list[str]) -> None:
    for slug in slugs:
        httpx.post(f"{url}/properties", json={"slug": slug}, timeout=10).raise_for_status()


# --- the after-run checks -----------------------------------------------------------------------


@dataclass
class Comparison:
    acked: int = 0
    lost: list = field(default_factory=list)  # (writer, key, ack time)
    changed: list = field(default_factory=list)  # present with other content
    unacked_present: int = 0


def compare(writers: list[AckWriter], root: Path, settings) -> Comparison:
    """Every acknowledged write must be in the restored copy under `root`, with its content."""
    cmp = Comparison()
    for w in writers:
        db = root / w.relpath(settings)
        got = w.read_rows(db) if db.exists() else {}
        cmp.acked += len(w.acked)
        for key, ack in w.acked.items():
            if key not in got:
                cmp.lost.append((w.name, key, ack.at))
            elif got[key] != ack.content:
                cmp.changed.append((w.name, key, ack.content, got[key]))
        cmp.unacked_present += len(set(got) - set(w.acked))
    return cmp


def fresh_restore(home, dest: Path) -> dict:
    """`edgehost restore --all --to DEST --json`, which must succeed."""
    proc = edgehost(home, "restore", "--all", "--to", str(dest), "--json", timeout=300)
    assert proc.returncode == 0, f"restore --all failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(proc.stdout)
    assert report["ok"], report
    return report


def verify_passes(home, attempts: int = 3, pause: float = 3.0) -> int:
    """`edgehost verify --all --json` passes; retried a little while the system settles. Returns attempts used."""
    last = None
    for attempt in range(1, attempts + 1):
        proc = edgehost(home, "verify", "--all", "--json", timeout=300)
        if proc.returncode == 0:
            return attempt
        last = proc
        why = _verify_failures(proc.stdout) or proc.stderr[-500:]
        print(f"[chaos] verify attempt {attempt} exit {proc.returncode}: {why}")
        time.sleep(pause)
    raise AssertionError(f"edgehost verify --all never passed; last exit {last.returncode}:\n"
                         f"{last.stdout}\n{last.stderr}\n{_logs_of_failed(home, last.stdout)}")


def _logs_of_failed(home, stdout: str) -> str:
    """The supervisor's and litestream's log lines naming a database verify failed, for the report."""
    try:
        names = [r["name"] for r in json.loads(stdout)["results"] if not r["ok"]]
    except (ValueError, KeyError):
        return ""
    logs = home.settings().log_dir
    out = []
    for log in ("litestream.log", "edgehost.log"):
        try:
            lines = (logs / log).read_text(errors="replace").splitlines()
        except OSError:
            continue
        hits = [line for line in lines if any(f"/{n}/" in line or f" {n}" in line for n in names)]
        out += [f"--- {log}, lines naming {', '.join(names)} (last 40 of {len(hits)}):"] + hits[-40:]
    return "\n".join(out)


def _verify_failures(stdout: str) -> str:
    try:
        report = json.loads(stdout)
    except ValueError:
        return ""
    return "; ".join(f"{r['name']}: {r['failed_check']}: {r['detail']}" for r in report["results"] if not r["ok"])


def final_checks(home, writers: list[AckWriter], dest: Path, result: ChaosResult) -> Comparison:
    """Verify (once recovered), then a fresh restore of everything compared with every acknowledged write."""
    for w in writers:
        w.stop()
    t0 = time.monotonic()
    result.verify_attempts = verify_passes(home)
    t1 = time.monotonic()
    fresh_restore(home, dest)
    t2 = time.monotonic()
    cmp = compare(writers, dest, home.settings())
    print(f"[chaos] {result.fault}: verify {t1 - t0:.1f}s, restore --all {t2 - t1:.1f}s, "
          f"compare {time.monotonic() - t2:.1f}s")
    result.acked = cmp.acked
    result.lost = len(cmp.lost) + len(cmp.changed)
    result.unacked_present = cmp.unacked_present
    return cmp


def assert_nothing_lost(cmp: Comparison) -> None:
    assert not cmp.changed, f"acknowledged writes restored with other content: {cmp.changed[:5]}"
    assert not cmp.lost, f"{len(cmp.lost)} acknowledged writes missing from the restore, e.g. {cmp.lost[:5]}"


# --- one run: the stack, the writers, a fault, the checks ---------------------------------------

SLUGS = ["alpha", "bravo"]


@dataclass
class ChaosRun:
    """What a test injects its fault into; a test that restarts the supervisor assigns `up`."""

    home: object
    settings: object
    result: ChaosResult
    up: Proc | None = None
    writers: list[AckWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.settings.portal_url

    def stop(self) -> int | None:
        """Stop the writers, then `edgehost up` (SIGTERM, as launchd would); its exit code."""
        for w in self.writers:
            w.stop()
        return self.up.stop(90) if self.up is not None else None


@contextmanager
def chaos_run(home, dest: Path, fault: str, injected: int, unit: str, pad: int = 0) -> Iterator[ChaosRun]:
    """`edgehost up`, the properties and their writers around one fault; then the final checks, a clean
    stop and the result recorded. Fails if an acknowledged write is lost or `up` does not exit 0.

    Settings are read on entry, so environment changes the fault needs go in before the `with`.
    """
    run = ChaosRun(home, home.settings(), ChaosResult(fault, injected, unit))
    cmp = code = None
    try:
        run.up = start_supervisor(home)
        create_properties(run.url, SLUGS)
        run.writers = start_writers(run.url, SLUGS, pad=pad)
        yield run
        cmp = final_checks(home, run.writers, dest, run.result)
    finally:
        code = run.stop()
        record(run.result)
    assert_nothing_lost(cmp)
    assert code == 0, run.up.output()[-3000:]


# --- services and processes ---------------------------------------------------------------------


def services(settings) -> dict[str, dict]:
    return {s["name"]: s for s in supervisor_status(settings)["services"]}


def wait_all_running(settings, timeout: float = 60, exclude_pids: dict[str, int] | None = None) -> None:
    """Every service running (and, for those named in exclude_pids, with a new pid)."""
    exclude_pids = exclude_pids or {}

    def ready():
        svc = services(settings)
        return all(s["state"] == "running" and s["pid"] and s["pid"] != exclude_pids.get(name)
                   for name, s in svc.items())

    wait_until(ready, timeout, interval=0.05, what="every service running")


def portal_serves(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def home_processes(home) -> list[int]:
    """Every live process started for this kit home (they all carry EDGEHOST_HOME in their environment)."""
    marker = f"EDGEHOST_HOME={home.path}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if marker in env and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def db_holders(data_dir: Path) -> dict[int, list[str]]:
    """Processes with a file under the data dir open: {pid: [paths]}."""
    prefix = str(data_dir.resolve())
    holders: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry.name}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix) and pid_alive(int(entry.name)):
                holders.setdefault(int(entry.name), []).append(target)
    return holders


def power_cut(pids: list[int]) -> None:
    """Every process stops at the same instant: freeze all first, then SIGKILL all."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def reap_home(home) -> None:
    """Last resort in a teardown: nothing of a run may outlive it."""
    left = home_processes(home)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        print(f"[chaos] reaped leftover processes {left}")


# --- a switchable TCP proxy in front of the S3 endpoint ---------------------------------------


class SwitchableProxy:
    """A TCP proxy on 127.0.0.1 that forwards to the S3 endpoint, or plays an outage.

    Modes: ``up`` forwards; ``refuse`` closes the listening socket, so connects get ECONNREFUSED;
    ``blackhole`` accepts connections and never answers (a dropped network, from the client's side).
    Switching away from ``up`` cuts every open connection, so keep-alive sessions die too.
    ``upload_bps``: bytes a second each connection may send upstream (a slow uplink: small requests
    pass at once, a large upload takes its time); None is no limit.
    """

    def __init__(self, upstream: str):
        host, port = upstream.rsplit("//", 1)[-1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self.mode = "up"
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        self._listener: socket.socket | None = None
        self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.bytes_forwarded = 0
        self.upload_bps: float | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self, port: int) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(128)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True, name="proxy-accept").start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self.mode
                self._conns.add(client)
            if mode == "up":
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()
            elif mode == "refuse":  # accepted just before the listener closed
                self._drop(client)
            # blackhole: keep it open, never read or answer (cut when the mode changes)

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
        except OSError:
            self._drop(client)
            return
        with self._lock:
            self._conns.add(upstream)
        t = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        t.start()
        self._pump(client, upstream, upload=True)
        t.join()

    def _pump(self, src: socket.socket, dst: socket.socket, upload: bool = False) -> None:
        try:
            while True:
                bps = self.upload_bps if upload else None
                data = src.recv(4096 if bps else 65536)
                if not data:
                    break
                if bps and len(data) > 1024:  # headers and small bodies pass at once
                    time.sleep(len(data) / bps)
                dst.sendall(data)
                self.bytes_forwarded += len(data)
        except OSError:
            pass
        finally:
            self._drop(src)
            self._drop(dst)

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def _cut_all(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            self._drop(s)

    def set_mode(self, mode: str, cut: bool = True) -> None:
        """Switch; every open connection is cut (as a network that drops, then comes back, resets them).

        ``cut=False`` keeps them: a blackholed connection then stays open and silent after the
        endpoint is back (a hung server or middlebox rather than a network outage).
        """
        assert mode in ("up", "refuse", "blackhole"), mode
        with self._lock:
            old, self.mode = self.mode, mode
        if old == mode:
            return
        if cut:
            self._cut_all()
        if mode == "refuse" and self._listener is not None:
            self._listener.close()
            self._listener = None
        elif mode != "refuse" and self._listener is None:
            self._listen(self.port)

    @contextmanager
    def outage(self, mode: str, cut_on_return: bool = True) -> Iterator["SwitchableProxy"]:
        """The endpoint in `mode` for the block, and up again after it, whatever happened inside."""
        self.set_mode(mode)
        try:
            yield self
        finally:
            self.set_mode("up", cut=cut_on_return)

    def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.close()
        self._cut_all()


# --- the data disk --------------------------------------------------------------------------


def mount_tmpfs(path: Path, size: str) -> str:
    """Mount a tmpfs of `size` at `path`; '' on success, else why it cannot be done here."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "not root: cannot mount a small filesystem for the data dir"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return f"mount -t tmpfs failed here (a container without CAP_SYS_ADMIN?): {proc.stderr.strip()}"
    return ""


def umount(path: Path) -> None:
    import subprocess

    for _ in range(20):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(path: Path, reserve: int = 0) -> Path:
    """Write a ballast file until the filesystem at `path` is full (leaving `reserve` bytes)."""
    ballast = path / "ballast.bin"
    chunk = b"\0" * (1 << 20)
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            free = free_bytes(path)
            if free <= reserve:
                break
            try:
                os.write(fd, chunk[: max(4096, min(len(chunk), free - reserve))])
            except OSError:  # ENOSPC: full
                break
    finally:
        os.close(fd)
    return ballast


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
