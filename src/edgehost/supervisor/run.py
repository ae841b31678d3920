"""`edgehost up`: preflight, restore what is missing, then litestream -> portal -> cloudflared in order;
restart what crashes; on SIGTERM stop in reverse so Litestream's final sync lands."""

from __future__ import annotations

import os
import queue
import socket
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import httpx

from edgehost.engine import layout, litestream, loopback

from edgehost.ops import alerts as alerts_lib, provision, state, status
from edgehost.ops.restore import human_duration
from edgehost.ops.state import REPLICA_DRILLS_EVERY, drill_history
from edgehost.errors import BadInput, EdgehostError, EnvironmentProblem, ExitStatus
from edgehost.engine.schema import ensure_data_dir
from edgehost.engine.replica import ReplicaStore
from edgehost.settings import SECRET_NAMES, Settings
from edgehost.engine.sqlite import journal_mode
from edgehost.portal import DURABLE_PATH
from edgehost.supervisor import statuspage
from edgehost.supervisor.control import ControlServer, MetricsServer, Page
from edgehost.supervisor.final_sync import final_sync
from edgehost.supervisor.lease import LeaseHeld, LeaseLost, WriterLease, lease_clock, write_window
from edgehost.supervisor.logs import LogHub
from edgehost.supervisor.policy import Backoff
from edgehost.supervisor.service import Service, ServiceSpec

SOCKET_PATH_MAX = 103  # sun_path is 104 bytes on macOS, 108 on Linux


def _http_ok(url: str, writable: Callable[[], bool] = lambda: False) -> Callable[[], bool]:
    """200 from `url`; while `writable()`, also not a read-only portal (its /healthz says read_only)."""
    def check() -> bool:
        try:
            answer = loopback.get(url, timeout=1.0)
            return answer.status_code == 200 and not (writable() and answer.json().get("read_only"))
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    return check


def _without_secrets(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in SECRET_NAMES}


def claim_pid_file(pid_file: Path) -> None:
    """Write this process's pid, or refuse when another live edgehost process holds the file."""
    if pid_file.exists():
        try:
            other = int(pid_file.read_text().strip())
            os.kill(other, 0)
            if other != os.getpid():
                raise EnvironmentProblem(f"another edgehost supervisor is running (pid {other}, {pid_file})")
        except (ValueError, ProcessLookupError):
            pass  # stale: the previous supervisor died without cleaning up
        except PermissionError:
            raise EnvironmentProblem(f"{pid_file}: held by a process of another user") from None
    pid_file.write_text(f"{os.getpid()}\n")


def portal_spec(settings: Settings, **extra_env: str) -> ServiceSpec:
    """The portal as a service: its settings by environment, no secrets; `extra_env` on top (read-only)."""
    env = _without_secrets(
        {**settings.environ, "EDGEHOST_HOME": str(settings.home), "EDGEHOST_DATA_DIR": str(settings.data_dir),
         "EDGEHOST_PORTAL_HOST": settings.portal.host, "EDGEHOST_PORTAL_PORT": str(settings.portal.port), **extra_env}
    )
    return ServiceSpec("portal", settings.portal_argv(), env,
                       # A fenced primary's portal is restarted read-only by adding the variable to `env`.
                       ready=_http_ok(f"{settings.portal_url}{settings.app.health_path}",
                                      writable=lambda: "EDGEHOST_PORTAL_READ_ONLY" not in env),
                       ready_timeout=60, stop_timeout=settings.portal.stop_timeout, cwd=settings.home)


def service_plan(settings: Settings, ls: litestream.Litestream) -> list[ServiceSpec]:
    """The services in start order (stop order is the reverse)."""
    sock = ls.socket(timeout=1.0)
    plan = [
        ServiceSpec("litestream", [str(ls.binary), "replicate", "-config", str(settings.litestream_config)], ls.env,
                    ready=sock.alive, ready_timeout=30, stop_timeout=settings.litestream_stop_timeout,
                    cwd=settings.home),
        portal_spec(settings),
    ]
    if settings.tunnel.enabled:
        from edgehost.deploy import tunnel

        plan.append(ServiceSpec(
            "cloudflared", tunnel.cloudflared_argv(settings.tunnel.binary, settings.tunnel.config),
            _without_secrets(dict(settings.environ)),
            ready=_http_ok(tunnel.ready_url(f"127.0.0.1:{settings.tunnel.metrics_port}")),
            ready_timeout=60, stop_timeout=10, cwd=settings.home,
        ))
    return plan


@dataclass
class Preflight:
    litestream: litestream.Litestream  # binary checked, litestream.yml matched to the layout
    store: ReplicaStore
    tunnel_problem: str = ""  # why cloudflared cannot run; the rest runs without it

    @property
    def binary(self) -> Path:
        return self.litestream.binary

    @property
    def replication(self) -> litestream.Replication:
        return self.litestream.replication


def preflight(settings: Settings, handover: "Handover | None" = None) -> Preflight:
    """Refuse to start on anything that would make the run unsafe, with one line saying what.

    A promoted standby's `handover` brings its litestream (binary version-checked, config read), and
    its databases are the copies `restore -f` left, which litestream and the promoted portal put in
    WAL mode as they open them: neither the version check nor the journal-mode scan is done again."""
    ls = handover.litestream if handover is not None and handover.litestream is not None \
        else litestream.Litestream.from_settings(settings)
    repl = ls.replication
    sock = repl.config.socket_path
    if sock is None or sock.resolve() != settings.litestream_socket.resolve():
        raise BadInput(f"{repl.config.source}: socket must be enabled at ${{EDGEHOST_LITESTREAM_SOCKET}} "
                       f"({settings.litestream_socket}) so the supervisor can talk to litestream")
    for path in (settings.litestream_socket, settings.supervisor_socket):
        if len(str(path).encode()) > SOCKET_PATH_MAX:
            raise BadInput(f"{path}: socket path too long for a unix socket; use a shorter state_dir")
    ls.binary  # found and version-checked now: a missing or old binary stops the start here
    promoted = None  # read only when a database needs it: ops.follow is not imported on an ordinary start
    for ref in layout.local_databases(settings) if handover is None else []:
        mode = journal_mode(ref.path)
        if mode != "wal" or Path(f"{ref.path}-txid").exists():
            from edgehost.ops.follow import as_primary_copy, role

            if promoted is None:
                promoted = role(settings) == "primary"
            if promoted:
                # Promoted, then stopped before every copy was made the primary's: those are still as
                # `restore -f` left them (rollback mode, `-txid` beside them): finished here, not refused.
                as_primary_copy(ref.path)
                continue
        if mode != "wal":
            raise BadInput(f"{ref.path}: database is in '{mode}' journal mode, edgehost needs WAL; "
                           f"stop its writers and run: sqlite3 {ref.path} 'PRAGMA journal_mode=WAL'")
    store = ReplicaStore(repl.tenants_root, settings.s3_endpoint, settings.s3_region, dict(settings.environ))
    return Preflight(ls, store, tunnel_problem=tunnel_problem(settings))


def tunnel_problem(settings: Settings) -> str:
    """Why cloudflared cannot run, or "": a tunnel problem is reported, never a reason to stop replicating."""
    if not settings.tunnel.enabled:
        return ""
    from edgehost.deploy import tunnel

    if not settings.tunnel.config.is_file():
        return f"{settings.tunnel.config}: cloudflared config not found (tunnel is enabled)"
    try:
        tunnel.check_config_for_supervisor(settings.tunnel.config, metrics_port=settings.tunnel.metrics_port)
    except EdgehostError as exc:
        return str(exc)
    return tunnel.cloudflared_problem(settings) or ""


def _caught_up(db: status.DatabaseStatus) -> bool:
    return (not db.error and db.local_txid is not None and db.replicated_txid is not None
            and db.replicated_txid >= db.local_txid)


def _replicating(db: status.DatabaseStatus, limit: float) -> bool:
    """Caught up, or uploading again: a busy database is a sync behind most of the time, but its last
    upload is recent (within half the lag threshold). A lag that merely stopped growing is neither."""
    return _caught_up(db) or (not db.error and db.lag_seconds is not None and db.lag_seconds <= limit / 2)


@dataclass
class Handover:
    """What a standby promoted in place (ops/follow.py) hands to the `up` it becomes.

    Its final listing found every database of the replica on disk at the newest txid, so `up` lists
    nothing before it starts; it holds the writer lease already; its litestream binary is checked;
    its databases go to WAL mode as litestream and the portal open them; and its read-only portal
    keeps serving reads: once litestream replicates, SIGUSR1 makes it writable (no restart)."""

    lease: WriterLease
    portal: Service | None = None
    litestream: litestream.Litestream | None = None


class Supervisor:
    """Runs the services in order and keeps them up until told to stop."""

    TICK = 0.1
    START_TICK = 0.01
    STATUS_EVERY = 5.0
    COST_EVERY = 300.0
    DRILLS_RETRY = 60.0  # seconds before the replica's drills are read again after a failed read

    def __init__(self, settings: Settings, stream: TextIO | None = None, take_over: bool = False,
                 handover: Handover | None = None):
        self.settings = settings
        self.take_over = take_over
        self.handover = handover
        self.lease: WriterLease | None = handover.lease if handover else None
        secrets = [v for k, v in settings.environ.items() if k in SECRET_NAMES]
        a = settings.alerts
        secrets += [v for v in (a.ntfy_url, a.ntfy_token, a.webhook_url, a.healthchecks_url) if v]
        self.hub = LogHub(settings.log_dir, secrets=secrets, stream=stream or sys.stdout)
        self.services: list[Service] = []
        self.stopping = threading.Event()
        self._signal_work: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.hurry = threading.Event()
        # The final sync stops retrying: hurried, fenced, or litestream killed for want of a lease.
        self._give_up_sync = threading.Event()
        self.exit_status = ExitStatus.OK
        self.started_wall = time.time()
        self.phase = "starting"
        self.db_status: list[status.DatabaseStatus] = []
        self._positions = status.PositionCache()  # an idle database costs the status poll no call
        self._status_sock = litestream.ControlSocket(settings.litestream_socket)  # one kept connection for the poll
        self.alerts = alerts_lib.Alerter(settings, self.log, state_path=settings.state_dir / "alerts.json")
        self.deadman = alerts_lib.DeadMansSwitch(alerts_lib.healthchecks(settings), self.alerts.delivery,
                                                 settings.alerts.healthchecks_every)
        self.pitr: dict[str, float | None] = {}  # seconds `restore --at` reaches back, per database
        self.checks: dict[str, Any] = {}  # the newest drill and verify (state.last_checks)
        self.durable: dict[str, Any] | None = None  # the portal's durable-ack figures (docs/durable.md)
        self._commands: queue.Queue[tuple[str, str, threading.Event, dict]] = queue.Queue()
        self._control: ControlServer | None = None
        self._metrics: MetricsServer | None = None
        self._store: ReplicaStore | None = None
        self.fenced = False  # another machine took the writer lease: never write to the replica again
        # Renewals go on through the stop until litestream is gone: a final sync may outlast
        # `_may_replicate`'s window after the last renewal (37.5 s with a 15 s renewal and a 60 s ttl).
        self._lease_done = threading.Event()
        self._lease_thread: threading.Thread | None = None
        self._lease_wait = False  # litestream kept stopped: the writer lease is not confirmed (`_may_replicate`)
        self._lease_wait_since: float | None = None
        self.cost_summary: dict[str, Any] | None = None  # the month's estimated bill (edgehost cost), when known
        # The newest drill, the replica's included, read once an hour: `edgehost status` adds this
        # machine's own and asks the bucket nothing (None until the first read).
        self.last_drills: list[dict[str, Any]] | None = None
        self._drills = statuspage.CachedDrills(lambda: drill_history(settings, limit=statuspage.DRILLS_CHARTED,
                                                                     replica=False))

    def log(self, text: str) -> None:
        self.hub.line("edgehost", text)

    # --- signals ----------------------------------------------------------------------------

    # A handler runs on the main thread between two bytecodes, possibly while that thread holds the
    # log hub's lock: it only sets events and hands its work to the `signals` thread through a
    # SimpleQueue, whose put is safe there. (Logging here directly deadlocked a stop.)

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping.is_set():
            self.hurry.set()
            self._give_up_sync.set()
            self._signal_work.put(("log", f"{signal.Signals(signum).name} again: hurrying the stop"))
        else:
            self.stopping.set()
            self._signal_work.put(("log", f"{signal.Signals(signum).name}: stopping in reverse order"))

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self._signal_work.put(("reopen", "SIGHUP: log files reopened"))

    def _signal_worker(self) -> None:
        while True:
            what, text = self._signal_work.get()
            if what == "reopen":
                self.hub.reopen()
            self.log(text)

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> int:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(s.state_dir, 0o700)
        self._claim_pid_file()
        threading.Thread(target=self._signal_worker, daemon=True, name="signals").start()
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            self.log(f"edgehost up (pid {os.getpid()}), home {s.home}")
            pre = preflight(s, self.handover)
            self._store = pre.store
            self.log(f"preflight ok: litestream {pre.litestream.version}, replica {s.replica_url}")
            for note in pre.litestream.env_notes:
                self.log(note)
            if s.env_file:
                self.log(f"secrets from {s.env_file} pass to children by environment")
            ensure_data_dir(s)
            self.phase = "restoring"
            if self.handover is not None:
                self.log("promoted standby: every database is on disk at the replica's newest txid")
            elif not self._restore_or_wait(pre):
                return int(self.exit_status)
            provision.forget_state_of_old_replica(s, self.log)
            for spec in service_plan(s, pre.litestream):
                self.services.append(Service(spec, Backoff(s.restart), self.hub))
            if self.handover is not None and self.handover.portal is not None:
                self._adopt(self.handover.portal)
            if pre.tunnel_problem:
                cloudflared = next(svc for svc in self.services if svc.name == "cloudflared")
                cloudflared.state, cloudflared.reason = Service.FAILED, pre.tunnel_problem
                self.log(f"!!! cloudflared not started: {pre.tunnel_problem}")
                self.log("!!! the tunnel stays down; replication and the portal run without it")
            self._start_servers()
            self.phase = "running"
            self._loop()
        except EdgehostError as exc:
            self.exit_status = exc.status
            self.log(f"error: {exc}")
            if isinstance(exc, LeaseHeld):
                self.alerts.raise_("lease", "lease", f"not started: {exc}")
            raise
        finally:
            self.phase = "stopping"
            self.stopping.set()  # also when an error ended the run: the lease thread and the watchdog ask
            self._stop_all()
            if self._end_renewals():
                self._release_lease()
            elif self.lease is not None and self.lease.held and not self.fenced:
                self.log(f"writer lease not released: a renewal is still in flight; it goes stale "
                         f"{self.settings.lease_ttl_seconds:.0f}s after it")
            self._close_servers()
            if not self.alerts.flush(10.0):
                self.log("warning: some alerts were still being sent when the supervisor stopped")
            self.log(f"stopped (exit {int(self.exit_status)})")
            s.pid_file.unlink(missing_ok=True)
            self.hub.close()
        return int(self.exit_status)

    RETRY_MAX = 60.0

    def _restore_or_wait(self, pre: Preflight) -> bool:
        """Restore what the replica holds and the disk lacks, waiting out an unreachable replica.

        After a power cut the network is often late. With the global DB on disk this machine has
        run before: start at once; the portal serves, and litestream starts once the replica answers
        and the writer lease is this machine's (`_guard_replication`). Without it, nothing may be
        created before the replica has been listed, so wait and ask again. False when told to stop
        meanwhile.
        """
        s, delay = self.settings, 1.0
        while not self.stopping.is_set():
            try:
                pre.store.reachable()
                self._take_lease(pre.store, self.take_over)
                if self.stopping.is_set():
                    return False
                provision.restore_then_create(s, pre.litestream, self.log)
                return True
            except EnvironmentProblem as exc:
                if s.global_db.exists():
                    self.log(f"warning: {exc}; the databases are on disk: starting now, litestream once the "
                             f"replica answers and the writer lease is this machine's")
                    return True
                self.log(f"{exc}; nothing is started or created until the replica answers: "
                         f"asking again in {delay:.0f}s")
            self.stopping.wait(delay)
            delay = min(delay * 2, self.RETRY_MAX)
        return False

    def _take_lease(self, store: ReplicaStore, take_over: bool) -> None:
        """Become the one writer of this replica, or raise LeaseHeld naming the machine that is."""
        s = self.settings
        if self.lease is None:
            self.lease = WriterLease.of_this_machine(store, s)
        if self.lease.held:
            return
        previous = self.lease.acquire(take_over=take_over)
        if previous is not None:
            # The old holder stops writing at its next renewal, or, cut off from the bucket, before
            # its lease could go stale: give it that long, by its own settings (`quiet_after`).
            wait = max(0.0, previous.quiet_after(s.lease_renew_seconds, s.lease_ttl_seconds) - (previous.age_seconds or 0.0))
            self.log(f"writer lease taken over from {previous.describe()}; waiting {wait:.0f}s for it to stop writing")
            if self.stopping.wait(wait):
                self.lease.confirmed_at = None  # told to stop before the old holder surely stopped: never write
                return
            self.lease.renew()  # confirmed anew after the wait: litestream may write from now
        self.log(f"writer lease held by this machine (renewed every {s.lease_renew_seconds:.0f}s)")
        self.alerts.clear("lease", "this machine holds the writer lease")

    def _keep_lease(self) -> None:
        """Renew the lease on a slow timer; a machine that lost it stops writing at once."""
        s = self.settings
        failing = False
        # Ask often while the lease is not held or the replica is away, so a take-over is seen as
        # soon as it answers.
        quick = min(5.0, s.lease_renew_seconds)

        def due() -> float:  # a renewal lease_renew_seconds after the last one that landed
            lease = self.lease
            confirmed = lease.confirmed_at if lease is not None and lease.held else None  # read once
            if confirmed is None:
                return quick
            return max(0.05, confirmed + s.lease_renew_seconds - lease_clock())

        interval = due()
        while not self._lease_done.wait(interval):
            if self.stopping.is_set() and (self.lease is None or not self.lease.held):
                return  # a stop renews what it holds, and takes nothing
            try:
                if self.lease is not None and self.lease.held:
                    self.lease.renew()
                elif self._store is not None:
                    self._take_lease(self._store, take_over=False)  # the replica was down at boot
                if failing:
                    self.log("writer lease renewed: the replica answers again")
                failing, interval = False, due()
            except (LeaseHeld, LeaseLost) as exc:
                self._fence(str(exc))
                return
            except EdgehostError as exc:
                if not failing:
                    self.log(f"warning: cannot renew the writer lease ({exc}); trying every {quick:.0f}s")
                failing, interval = True, quick

    @property
    def _litestream(self) -> Service | None:
        return next((svc for svc in self.services if svc.name == "litestream"), None)

    def _may_replicate(self) -> bool:
        """Whether litestream may write to the replica: this machine holds the writer lease, and its
        newest renewal that landed is recent enough that nobody can have found it stale.

        A machine cut off from the bucket cannot renew, and another may take the lease once it is
        ttl old. Litestream must be stopped before that: when the network comes back it would
        upload this machine's backlog over the new writer's history before the next renewal finds
        the lease lost. The limit is halfway between the renewal due and the ttl (with the defaults,
        10 minutes without a renewal; the lease goes stale after 15).
        """
        lease, s = self.lease, self.settings
        if self.fenced or lease is None or not lease.held:
            return False
        confirmed = lease.confirmed_at  # read once: the lease thread may clear it meanwhile
        return confirmed is not None and lease_clock() < confirmed + write_window(s.lease_renew_seconds, s.lease_ttl_seconds)

    def _guard_replication(self) -> None:
        """Keep litestream stopped (at once, no final sync) while `_may_replicate` says no, and let it
        start again when a renewal lands: the conditional write proves nobody took the lease meanwhile."""
        ls = self._litestream
        if ls is None or self.fenced:
            return
        if self._may_replicate():
            if self._lease_wait:
                self._lease_wait, self._lease_wait_since = False, None
                if ls.state == Service.HELD and ls.reason.startswith(self.LEASE_WAIT):
                    ls.state, ls.reason = Service.STOPPED, ""
                self.log("writer lease confirmed: litestream may write to the replica")
                self.alerts.clear("lease_wait", "writer lease confirmed: litestream replicates")
            return
        if self._lease_wait:
            waited = time.monotonic() - (self._lease_wait_since or time.monotonic())
            if waited > self.settings.lag_alert_seconds:  # a boot with the replica away: say so too
                self.alerts.raise_("lease_wait", "lease", f"litestream not started for {waited:.0f}s: "
                                                          f"{ls.reason}; writes stay on this disk")
            return
        self._lease_wait, self._lease_wait_since = True, time.monotonic()
        confirmed = self.lease.confirmed_at if self.lease is not None else None  # read once, as in _may_replicate
        if confirmed is not None:
            why = f"not renewed for {lease_clock() - confirmed:.0f}s (the replica does not answer)"
        else:
            why = "not taken yet (the replica does not answer)"
        if ls.state in (Service.STARTING, Service.RUNNING):
            code = ls.stop(0, graceful=False)
            self.log(f"!!! litestream stopped (exit {code}): the writer lease was {why}; another machine may take "
                     f"it once it is {self.settings.lease_ttl_seconds:.0f}s old, and this one must not write "
                     f"over its history. Writes stay on this disk until a renewal lands")
            self.alerts.raise_("lease_wait", "lease", f"writer lease {why}: litestream stopped, writes stay on "
                                                      f"this disk until the replica answers and the lease is renewed")
        # An operator's hold keeps its own reason and stays held after; a crash-looped litestream stays
        # FAILED (not restarted when the lease is confirmed again, nor alerted about anew).
        if ls.state not in (Service.HELD, Service.FAILED):
            ls.state, ls.reason = Service.HELD, f"{self.LEASE_WAIT}: {why}"

    LEASE_WAIT = "waiting for the writer lease"

    def _lease_watchdog(self) -> None:
        """SIGKILL a litestream that runs without a confirmed lease, from its own thread: the main
        loop can be busy for tens of seconds (a restart's stop, the final sync) and must not be what
        stands between a lapsed lease and a write to the replica. The main loop records the state."""
        while not self.hurry.wait(0.2):
            ls = self._litestream
            if ls is not None and ls.proc is not None and ls.proc.poll() is None and not self._may_replicate():
                ls.signal(signal.SIGKILL)
                if self.stopping.is_set():
                    self._give_up_sync.set()  # a final sync under way would retry a dead socket until its budget

    def _fence(self, why: str) -> None:
        """Another machine is the writer now: stop replicating, make the portal read-only, say so loudly."""
        self.fenced = True
        self.exit_status = ExitStatus.LEASE_HELD
        self.log(f"!!! {why}")
        self.log("!!! this machine no longer writes to the replica: litestream stopped, portal read-only. "
                 "Writes made here since the last upload stay on this disk only")
        self.alerts.raise_("lease", "lease", f"writer lease lost: {why}; this machine stopped writing to the replica")
        if self.stopping.is_set():
            self._give_up_sync.set()
            return  # the stop runs no commands: it kills litestream itself, as the watchdog does, once fenced
        done = threading.Event()
        self._commands.put(("fence", why, done, {}))
        deadline = time.monotonic() + self.settings.litestream_stop_timeout + 30
        while not done.wait(0.2) and time.monotonic() < deadline:
            if self.stopping.is_set():  # the main loop ended before running it: the stop does it
                self._give_up_sync.set()
                return

    def _claim_pid_file(self) -> None:
        claim_pid_file(self.settings.pid_file)

    def _start_servers(self) -> None:
        self._control = ControlServer(self.settings.supervisor_socket, self._handle_control)
        self._control.start()
        if self.settings.metrics_port:
            try:
                self._metrics = MetricsServer(self.settings.metrics_port, self._handle_metrics)
                self._metrics.start()
                self.log(f"metrics on http://127.0.0.1:{self.settings.metrics_port}/metrics")
            except OSError as exc:
                self.log(f"metrics endpoint disabled: port {self.settings.metrics_port}: {exc.strerror}")
        threading.Thread(target=self._watch_replication, daemon=True, name="lag").start()
        self._lease_thread = threading.Thread(target=self._keep_lease, daemon=True, name="lease")
        self._lease_thread.start()
        threading.Thread(target=self._lease_watchdog, daemon=True, name="lease-watchdog").start()
        threading.Thread(target=self._watch_health, daemon=True, name="health").start()

    def _close_servers(self) -> None:
        for server in (self._control, self._metrics):
            if server is not None:
                server.close()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            now = time.monotonic()
            self._run_commands()
            self._guard_replication()
            for i, svc in enumerate(self.services):
                self._tend(svc, now, gate_open=all(self._passed(prev) for prev in self.services[:i]))
            # While a service starts, look often: each readiness step would otherwise wait a tick.
            starting = any(svc.state == Service.STARTING for svc in self.services)
            time.sleep(self.START_TICK if starting else self.TICK)

    def _passed(self, svc: Service) -> bool:
        """Whether the services after `svc` may start: it was ready once, or it is a litestream kept
        stopped until the writer lease is this machine's (the portal serves meanwhile)."""
        return svc.ready_once or (svc.name == "litestream" and self._lease_wait)

    def _adopt(self, running: Service) -> None:
        """Take over a promoted standby's read-only portal as this run's portal, still read-only:
        `_tend` sends it SIGUSR1 once litestream is ready, and it counts as ready once writable."""
        svc = next(svc for svc in self.services if svc.name == "portal")
        if running.pid is None:
            return  # not running: started afresh, as usual
        running.hub = self.hub  # its output pump goes on, into this run's logs
        svc.proc, svc._pump, svc.child_pid = running.proc, running._pump, running.child_pid
        svc.starts, svc.state, svc.started_at, svc.started_wall = 1, Service.STARTING, time.monotonic(), time.time()
        svc.adopted = True
        # Ready once it says it takes writes. Its /healthz would open every database again: it has
        # served them for as long as it followed, and the health watch goes on probing it.
        svc.adopted_ready = _http_ok(f"{self.settings.portal_url}{DURABLE_PATH}", writable=lambda: True)
        self.log(f"portal (pid {svc.child_pid}) kept running read-only: writable once litestream replicates")

    def _tend(self, svc: Service, now: float, gate_open: bool) -> None:
        if svc.name == "litestream" and not self._may_replicate():
            return  # fenced meanwhile, or the lease lapsed: `_guard_replication` or the fence takes it next
        if svc.adopted and gate_open and svc.pid is not None:
            svc.adopted = False
            os.kill(svc.pid, signal.SIGUSR1)  # the portal only: its guard would die of it
            self.log(f"{svc.name}: litestream replicates, taking writes")
        if svc.state == Service.STOPPED and gate_open:
            self.log(f"starting {svc.name}")
            svc.start()
        elif svc.state in (Service.STARTING, Service.RUNNING):
            code = svc.poll()
            if code is not None:
                self._exited(svc, code, now)
            elif svc.state == Service.STARTING:
                if (svc.adopted_ready or svc.spec.ready)():
                    svc.state = Service.RUNNING
                    svc.ready_once = True
                    self.log(f"{svc.name} ready in {now - svc.started_at:.2f}s (pid {svc.pid})")
                elif now - svc.started_at > svc.spec.ready_timeout:
                    self.log(f"{svc.name} not ready after {svc.spec.ready_timeout:.0f}s: stopping it")
                    self._exited(svc, svc.stop(5), now)
        elif svc.state == Service.BACKOFF and now >= svc.next_start_at:
            self.log(f"restarting {svc.name} (restart #{svc.restarts + 1})")
            svc.start()
        elif svc.state == Service.FAILED and not svc.reason and svc.name != "litestream" and now >= svc.next_start_at:
            self.log(f"retrying failed {svc.name} (restart #{svc.restarts + 1})")
            svc.start()

    def _exited(self, svc: Service, code: int | None, now: float) -> None:
        ran_for = now - svc.started_at
        svc.last_exit = code
        svc.stop(1)  # sweep the group: nothing of the old instance may linger
        decision = svc.backoff.on_exit(now, ran_for)
        if decision.failed:
            was_failed = svc.state == Service.FAILED
            svc.state = Service.FAILED
            p = self.settings.restart
            why = f"{svc.name} FAILED: {p.crash_loop_failures} exits within {p.crash_loop_window:.0f}s (last exit code {code})"
            if not was_failed:
                self.alerts.raise_(f"service:{svc.name}", "service_failed", why)
            if svc.name != "litestream":
                # Replication is the core: a crash-looping portal or tunnel never takes litestream down.
                svc.next_start_at = now + p.max_backoff
                if not was_failed:
                    self.log(f"!!! {why}; retrying every {p.max_backoff:.0f}s, litestream keeps replicating")
                return
            self.log(f"!!! {why}; not restarting it")
            if p.exit_on_failure:
                self.exit_status = ExitStatus.SERVICE_FAILED
                self.stopping.set()
            return
        svc.state = Service.BACKOFF
        svc.next_start_at = now + decision.restart_in
        self.log(f"{svc.name} exited with code {code} after {ran_for:.1f}s; restarting in {decision.restart_in:.1f}s")

    def _stop_all(self) -> None:
        timeouts = {"portal": self.settings.portal.stop_timeout}
        for svc in reversed(self.services):
            stop_timeout = timeouts.get(svc.name, svc.spec.stop_timeout)
            if svc.name == "litestream":
                # The writers (portal, tunnel) are stopped by now: push every database out first.
                spent = self._final_sync(svc)
                stop_timeout = max(5.0, stop_timeout - spent)
            if svc.proc is None:
                continue
            started = time.monotonic()
            if svc.name == "litestream" and not self._may_replicate():
                code = svc.stop(0, graceful=False)  # its shutdown sync would write without the lease
            elif self.hurry.is_set():
                code = svc.stop(0)
            else:
                code = svc.stop(stop_timeout, self.hurry)
            svc.state = Service.STOPPED
            self.log(f"{svc.name} stopped (exit {code}) in {time.monotonic() - started:.2f}s")

    def _end_renewals(self) -> bool:
        """Stop renewing (litestream is gone). False while a renewal is still in flight (a slow
        endpoint, or a hurried stop): the release, another conditional write on the same lease,
        must not race it."""
        self._lease_done.set()
        thread, started = self._lease_thread, time.monotonic()
        while thread is not None and thread.is_alive() and \
                time.monotonic() - started < (0.5 if self.hurry.is_set() else 10.0):
            thread.join(0.1)
        return thread is None or not thread.is_alive()

    def _release_lease(self) -> None:
        """Hand the lease back after a clean stop, so the next machine needs no --take-over.

        Kept when the final sync did not land: the replica lacks this machine's newest writes, so
        nobody else should start from it until this machine has pushed them (or the lease goes stale).
        """
        if self.lease is None or not self.lease.held or self.fenced:
            return
        if self.exit_status == ExitStatus.FINAL_SYNC_FAILED:
            self.log("writer lease kept: the final sync did not land")
            return
        try:
            self.lease.release()
            self.log("writer lease released")
        except EdgehostError as exc:
            self.log(f"warning: writer lease not released ({exc}); it goes stale in {self.settings.lease_ttl_seconds:.0f}s")

    def _final_sync(self, ls: Service) -> float:
        """Sync every database on disk and check the replica reached its local txid; returns the seconds spent."""
        started = time.monotonic()
        if self.fenced:
            self.log("final sync skipped: another machine holds the writer lease")
            return 0.0
        refs = layout.local_databases(self.settings)
        if not refs:
            return 0.0
        if not self._may_replicate():
            self.exit_status = ExitStatus.FINAL_SYNC_FAILED
            self.log(f"!!! final sync skipped: {ls.reason or 'the writer lease is not confirmed'}; the newest writes "
                     f"are only on this disk until `edgehost up` runs with the replica reachable")
            return 0.0
        if not self.hurry.is_set():
            self._give_up_sync.clear()  # a lapse earlier in the stop that a renewal has since ended
        budget = max(5.0, self.settings.litestream_stop_timeout - 5.0)
        if ls.state not in (Service.RUNNING, Service.STARTING) or ls.poll() is not None:
            # Backoff, held or crashed: run litestream once more, or the newest writes stay on this disk.
            self.log(f"final sync: litestream is {ls.state}; starting it for the final sync")
            if ls.proc is not None:
                ls.stop(1)
            ls.start()
        sock = litestream.ControlSocket(self.settings.litestream_socket, timeout=5.0)
        while not sock.alive() and ls.poll() is None and time.monotonic() - started < budget:
            if self._give_up_sync.wait(0.05):
                break
        results = final_sync(sock, refs, budget - (time.monotonic() - started), self._give_up_sync)
        missing = [r for r in results if not r.landed]
        took = time.monotonic() - started
        if missing:
            if not self.fenced:  # fenced during the stop: exit 6 says why, and the lease is not ours to keep
                self.exit_status = ExitStatus.FINAL_SYNC_FAILED
            for r in missing:
                self.log(f"!!! final sync did not land for {r.describe()}; its newest writes are only on this disk")
            self.log(f"!!! final sync: {len(missing)} of {len(results)} database(s) not replicated "
                     f"(exit {int(ExitStatus.FINAL_SYNC_FAILED)}); start `edgehost up` again to push them")
            names = ", ".join(r.describe() for r in missing[:5]) + (" ..." if len(missing) > 5 else "")
            self.alerts.raise_("final_sync", "final_sync",
                               f"final sync at stop did not land for {len(missing)} database(s): {names}; "
                               f"their newest writes are only on this disk until `edgehost up` runs again")
        else:
            self.log(f"final sync: {len(results)} database(s) replicated up to their local txid in {took:.2f}s")
        return took

    # --- control socket ---------------------------------------------------------------------

    def _handle_control(self, method: str, path: str) -> tuple[int, Any]:
        if method == "GET" and path == "/status":
            # The positions the status poll read: `edgehost status` reuses those of idle databases.
            return 200, {**self.describe(), "positions": self._positions.export(), "last_drills": self.last_drills}
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) == 3 and parts[0] == "services" and parts[2] in ("hold", "release"):
            if parts[1] not in {s.name for s in self.services}:
                return 404, {"error": f"no service named {parts[1]!r}"}
            done, reply = threading.Event(), {}
            self._commands.put((parts[2], parts[1], done, reply))
            if not done.wait(180):
                return 504, {"error": f"{parts[2]} of {parts[1]} did not finish in time"}
            return (200 if reply.get("ok") else 409), reply
        return 404, {"error": "unknown endpoint"}

    def _run_commands(self) -> None:
        while True:
            try:
                verb, name, done, reply = self._commands.get_nowait()
            except queue.Empty:
                return
            if verb == "fence":
                self._apply_fence(name)
                done.set()
                continue
            svc = next(s for s in self.services if s.name == name)
            if name == "litestream" and verb in ("restart", "release") and not self._may_replicate():
                why = "fenced: another machine holds the writer lease" if self.fenced else svc.reason or self.LEASE_WAIT
                reply.update(ok=False, state=svc.state, error=why)
                done.set()
                continue
            if verb == "restart":
                if svc.state in (Service.STARTING, Service.RUNNING):
                    self.log(f"stopping {name} for a restart (up to {svc.spec.stop_timeout:.0f}s)")
                    code = svc.stop(svc.spec.stop_timeout)
                    svc.state, svc.next_start_at = Service.BACKOFF, time.monotonic()
                    self.log(f"{name} stopped for a restart (exit {code})")
                reply.update(ok=True, state=svc.state)
                done.set()
            elif verb == "hold":
                if svc.state in (Service.STARTING, Service.RUNNING):
                    code = svc.stop(svc.spec.stop_timeout)
                    self.log(f"{name} stopped on request (exit {code}); held until released")
                svc.state, svc.reason = Service.HELD, "held on request"
                reply.update(ok=True, state=svc.state)
                done.set()
            else:
                if svc.state != Service.HELD:
                    reply.update(ok=svc.state == Service.RUNNING, state=svc.state, error=f"{name} is not held")
                    done.set()
                    continue
                self.log(f"{name} released: starting")
                svc.reason = ""
                svc.start()
                threading.Thread(target=self._await_ready, args=(svc, done, reply), daemon=True).start()

    def _apply_fence(self, why: str) -> None:
        for svc in self.services:
            if svc.name == "litestream":
                # SIGKILL, not SIGTERM: on SIGTERM litestream pushes what it has in a final sync.
                code = svc.stop(0, graceful=False) if svc.state in (Service.STARTING, Service.RUNNING) else None
                svc.state, svc.reason = Service.HELD, "fenced: another machine holds the writer lease"
                self.log(f"litestream stopped (exit {code}): fenced")
            elif svc.name == "portal":
                svc.spec.env["EDGEHOST_PORTAL_READ_ONLY"] = why
                if svc.state in (Service.STARTING, Service.RUNNING):
                    svc.stop(svc.spec.stop_timeout)
                    svc.state, svc.next_start_at = Service.BACKOFF, time.monotonic()
                self.log("portal restarting read-only")

    def _await_ready(self, svc: Service, done: threading.Event, reply: dict) -> None:
        deadline = time.monotonic() + svc.spec.ready_timeout + 5
        while time.monotonic() < deadline and svc.state == Service.STARTING:
            time.sleep(0.05)
        reply.update(ok=svc.state == Service.RUNNING, state=svc.state)
        if not reply["ok"]:
            reply["error"] = f"{svc.name} did not come back (state {svc.state})"
        done.set()

    def recent_alerts(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest alerts and recoveries sent, newest first."""
        return self.alerts.recent_notices(limit)

    def describe(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "phase": self.phase,
            "started_at": self.started_wall,
            "uptime_seconds": round(time.time() - self.started_wall, 1),
            "services": [s.describe() for s in self.services],
            "lag_alert_seconds": self.settings.lag_alert_seconds,
            "alerts": sorted({k.partition(":")[2] for k in self.alerts.keys("lag:") + self.alerts.keys("error:")}),
            "incidents": sorted(self.alerts.keys()),
            "lease": {"held": bool(self.lease and self.lease.held), "fenced": self.fenced,
                      "machine_id": self.lease.machine_id if self.lease else None},
        }

    # --- replication lag --------------------------------------------------------------------

    def _watch_replication(self) -> None:
        poll_failing = False
        while not self.stopping.is_set():
            ls = self._litestream
            # Not while a service makes its first start (for at most a minute): the first poll of a
            # thousand databases would take the CPU (and the GIL) the portal's start needs.
            starting = (time.time() - self.started_wall < 60
                        and any(s.state == Service.STARTING and not s.ready_once for s in self.services))
            if ls is not None and ls.state == Service.RUNNING and not starting:
                try:
                    self.db_status = status.replication_status(self.settings, self._status_sock, cache=self._positions)
                    if poll_failing:
                        self.log("status poll answers again")
                    poll_failing = False
                except EdgehostError as exc:
                    if not poll_failing:
                        self.log(f"warning: status poll failed ({exc}); lags are estimated from the last answer")
                    poll_failing = True
                    self.db_status = status.aged(self.settings, self.db_status, time.time(),
                                                 since=time.time() - ls.uptime())
                if self.stopping.is_set():
                    return  # litestream was stopped under the poll: its errors say nothing about replication
                self._alert()
                self._unstick(ls)
                portal = next((s for s in self.services if s.name == "portal"), None)
                if portal is not None and portal.state == Service.RUNNING:
                    from edgehost.ops import durable_acks

                    self.durable = durable_acks.fetch(self.settings)
            self.stopping.wait(self.STATUS_EVERY)

    def _unstick(self, ls: Service) -> None:
        """Restart litestream when replication has stalled although the replica answers.

        litestream 0.5.17's S3 client has no response timeout: after an endpoint that accepted
        connections and never answered comes back, uploads stay parked on the dead connections and
        every database stays behind until litestream restarts (docs/reliability.md, F1).
        """
        if self.fenced:
            return
        limit = max(60.0, 4 * self.settings.lag_alert_seconds)
        # A database whose local state litestream cannot upload stays stuck after a restart (and each
        # stop waits out the shutdown sync): it is reported by status, not restarted over.
        worst = max((d.lag_seconds or 0.0 for d in self.db_status if not d.error), default=0.0)
        if worst <= limit or ls.uptime() <= limit or self._store is None:
            return
        try:
            self._store.reachable()
        except EdgehostError:
            return  # the replica itself is down: a restart would not help
        self.log(f"litestream restarted: replication stalled {worst:.0f}s while the replica answers")
        done = threading.Event()
        self._commands.put(("restart", "litestream", done, {}))
        done.wait(self.settings.litestream_stop_timeout + 10)

    def _alert(self) -> None:
        limit = self.settings.lag_alert_seconds
        names = set()
        for db in self.db_status:
            names.add(db.name)
            if db.error:
                self.alerts.raise_(f"error:{db.name}", "replication_error", f"{db.name}: litestream reports: {db.error}",
                                   database=db.name)
            if db.lag_seconds is not None and db.lag_seconds > limit:
                self.alerts.raise_(f"lag:{db.name}", "lag",
                                   f"{db.name}: replica is {db.lag_seconds:.0f}s behind (threshold {limit:.0f}s)",
                                   database=db.name)
            elif _replicating(db, limit):
                how = (f"replicated txid {db.replicated_txid:016x} = local txid" if _caught_up(db) else
                       f"uploads land again, last {db.lag_seconds:.0f}s ago")
                for key in (f"lag:{db.name}", f"error:{db.name}"):
                    self.alerts.clear(key, f"{db.name}: replica caught up, {how}")
        for key in self.alerts.keys("lag:") + self.alerts.keys("error:"):
            if key.partition(":")[2] not in names:
                self.alerts.clear(key, f"{key.partition(':')[2]}: no longer on this machine")
        if self.db_status and all(_replicating(db, limit) for db in self.db_status):
            self.alerts.clear("final_sync", "every database is replicated up to its local txid")

    # --- health checks: services, disk, drills, the PITR window, the dead-man's switch ------------

    def _watch_health(self) -> None:
        a = self.settings.alerts
        next_pitr = time.monotonic() + min(a.pitr_check_every, 300.0)  # not in the first minutes of a start
        next_cost = time.monotonic() + 10.0  # then every COST_EVERY; an early estimate says its window is short
        next_drills = time.monotonic() + 10.0  # then every REPLICA_DRILLS_EVERY
        while not self.stopping.wait(min(a.check_every, 5.0)):
            try:
                self._check_services()
                self._check_disk()
                self._check_drills()
                if time.monotonic() >= next_pitr:
                    next_pitr = time.monotonic() + a.pitr_check_every
                    self._check_pitr()
                if time.monotonic() >= next_cost:
                    from edgehost.ops import cost

                    next_cost = time.monotonic() + self.COST_EVERY
                    self.cost_summary = cost.summary(self.settings)  # litestream's counters: one local request
                self.alerts.tick()
                self.deadman.beat([i.summary for i in self.alerts.active.values() if i.severity == "critical"])
            except Exception as exc:  # a check must never take the supervisor down; say it once a round
                self.log(f"warning: health check failed: {type(exc).__name__}: {exc}")
            if time.monotonic() >= next_drills:  # last: it may wait REPLICA_TIMEOUT for the bucket
                try:
                    self.last_drills = drill_history(self.settings, limit=1, strict=True)  # one LIST
                    next_drills = time.monotonic() + REPLICA_DRILLS_EVERY
                except Exception:  # noqa: BLE001 - status reads the replica itself until a read succeeds
                    next_drills = time.monotonic() + self.DRILLS_RETRY

    def _check_services(self) -> None:
        for svc in self.services:
            if svc.state == Service.RUNNING and svc.uptime() >= self.settings.restart.healthy_after:
                self.alerts.clear(f"service:{svc.name}", f"{svc.name} running again for {svc.uptime():.0f}s")

    def _check_disk(self) -> None:
        need = self.settings.alerts.disk_free_min_mb * (1 << 20)
        if not need:
            return
        free = shutil.disk_usage(self.settings.data_dir).free
        if free < need:
            self.alerts.raise_("disk", "disk_low", f"{free / (1 << 20):.0f} MB free on the data volume "
                                                   f"({self.settings.data_dir}), below {need >> 20} MB")
        elif free >= need * 1.05:  # a margin, so a disk at the edge does not flap
            self.alerts.clear("disk", f"{free / (1 << 20):.0f} MB free on the data volume")

    def _check_drills(self) -> None:
        self.checks = last = state.last_checks(self.settings)
        for kind in ("drill", "verify"):
            run = last[kind]
            if run is not None and run["status"] != "pass":
                self.alerts.raise_(f"{kind}", f"{kind}_failed",
                                   f"the last {kind} ({run['finished_at']}) {run['status']}ed: {run['failed']} database(s) failed")
            elif run is not None:
                self.alerts.clear(kind, f"the last {kind} ({run['finished_at']}) passed")
        days = self.settings.alerts.drill_overdue_days
        since = litestream.epoch(last["drill_passed_at"]) or self.alerts.first_seen("home")
        age = time.time() - since
        if age > days * 86400:
            what = f"the last passing drill was {age / 86400:.0f} days ago" if last["drill_passed_at"] else \
                f"no drill has passed since this machine started {age / 86400:.0f} days ago"
            self.alerts.raise_("drill_overdue", "drill_overdue", f"{what} (drill_overdue_days {days:g}): run `edgehost drill`")
        else:
            self.alerts.clear("drill_overdue", "a drill passed")

    def _check_pitr(self) -> None:
        """Each database's point-in-time window against snapshot.retention (one listing)."""
        from datetime import datetime, timezone
        from edgehost.ops.recovery import pitr_windows

        if self.fenced or not self.services:
            return
        ls = litestream.Litestream.from_settings(self.settings)
        retention = ls.replication.config.snapshot_retention.total_seconds()
        interval = ls.replication.config.snapshot_interval.total_seconds()
        refs = layout.local_databases(self.settings)
        try:
            self.pitr = windows = pitr_windows(self.settings, ls, refs, datetime.now(timezone.utc))
        except EdgehostError as exc:
            self.log(f"PITR window not checked: {exc}")
            return
        now = time.time()
        for ref in refs:
            window = windows.get(ref.label)
            # A database can only reach back as far as this machine has replicated it.
            expected = min(retention, now - self.alerts.first_seen(f"db:{ref.label}"))
            # Litestream drops a snapshot once a newer one is past retention: allow one interval.
            short = window is not None and window < expected - interval - max(5.0, 0.05 * expected)
            if short:
                self.alerts.raise_(f"pitr:{ref.label}", "pitr_window",
                                   f"{ref.label}: point-in-time window is {human_duration(window)}, shorter than "
                                   f"snapshot.retention ({human_duration(retention)})", database=ref.label)
            elif window is not None:
                self.alerts.clear(f"pitr:{ref.label}", f"{ref.label}: point-in-time window is {human_duration(window)}")

    def page_model(self) -> dict[str, Any]:
        """What the status page shows: no settings or environment values, only what the supervisor observed."""
        model = statuspage.build_model(self.describe(), list(self.db_status), self._drills.get(), self.recent_alerts(),
                                       self.cost_summary, socket.gethostname(), time.time())
        for row in model["databases"]:
            row["pitr_seconds"] = self.pitr.get(row["name"])  # from the last PITR check (alerts.pitr_check_every)
        from edgehost.ops import durable_acks

        model["durable"] = durable_acks.summary_rows(self.durable)
        return model

    def _handle_metrics(self, method: str, path: str) -> tuple[int, Any]:
        if method == "GET" and path == "/metrics":
            from itertools import chain

            from edgehost.ops import durable_acks, metrics

            d = self.describe()
            return 200, metrics.render(chain(
                metrics.families(self.db_status, d["services"], checks=self.checks or None, alerts=self.alerts,
                                 lease=d["lease"], pitr=self.pitr or None),
                durable_acks.families(self.durable)))
        route, _, query = path.partition("?")
        if method == "GET" and route in ("/", "/status"):
            return 200, Page(statuspage.render(self.page_model(), page=statuspage.page_number(query)))
        return 404, {"error": "try /metrics or /status"}
