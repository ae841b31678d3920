"""`edgehost follow` and `edgehost promote`: a warm standby on a second machine, and its failover.

The follower keeps a local mirror of the whole replica current with one listing per interval (the
mirror of `edgehost mirror`: only new files are downloaded), and one `litestream restore -f` per
database applies what arrives in the mirror to the database under the data dir. Litestream decides
what is applied; it polls the local mirror, so following costs the bucket one listing per interval
for every tenant together, never a LIST storm per database. The portal runs read-only on the
followed databases: reads are served, writes get 503 naming the primary.

`edgehost promote` asks the running follower (over its control socket) to take over: it takes the
writer lease (the old primary, should it come back, is fenced or refused), waits until every
database has applied the replica's newest txid, stops following, and runs as the primary (`up`):
litestream replicating, the portal writable, an alert saying who is primary now. `state/role`
remembers it, so a restarted `edgehost follow` (launchd) runs as the primary from then on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO
from urllib.parse import parse_qs

from edgehost.engine import layout, litestream
from edgehost.engine.bucket import Listing, ListingCancelled
from edgehost.engine.replica import ReplicaStore
from edgehost.errors import BadInput, EdgehostError, EnvironmentProblem, ExitStatus
from edgehost.files import write_atomic
from edgehost.ops.mirror import mirror_once
from edgehost.ops.promotion import MISDIRECTED
from edgehost.ops.recovery import mirror_roots
from edgehost.settings import Settings
from edgehost.supervisor.control import ControlServer
from edgehost.supervisor.lease import WriterLease
from edgehost.supervisor.logs import LogHub
from edgehost.supervisor.policy import Backoff
from edgehost.supervisor.service import Service

ROLE_FILE = "role"  # under state_dir: "follower" or "primary"
MIRROR_DIR = "standby-mirror"  # under state_dir
APPLY_INTERVAL = "250ms"  # how often each `restore -f` looks at the local mirror (no bucket cost)
FROZEN_SECONDS = 5.0  # a promotion's stopped `restore -f` are killed once the primary is ready, or after this


def role(settings: Settings) -> str:
    try:
        return (settings.state_dir / ROLE_FILE).read_text().strip()
    except FileNotFoundError:
        return ""


def set_role(settings: Settings, value: str) -> None:
    # fsync: a promoted machine that loses power must come back as the primary, not follow again.
    write_atomic(settings.state_dir / ROLE_FILE, value + "\n", fsync=True)


@dataclass
class Followed:
    """One database the follower applies: its `restore -f` process and its positions."""

    label: str
    out: Path
    source: str  # file:// URL of the database in the mirror
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    replica_txid: int = 0  # newest txid in the replica's listing
    replica_since: float | None = None  # when the follower first saw a txid it had not applied
    applied_txid: int = 0

    def applied(self) -> int:
        """The txid `restore -f` has applied (it keeps it in <db>-txid)."""
        try:
            return int((self.out.parent / f"{self.out.name}-txid").read_text().strip() or "0", 16)
        except (FileNotFoundError, ValueError):
            return 0

    def lag(self, now: float) -> float:
        if self.applied_txid >= self.replica_txid or self.replica_since is None:
            return 0.0
        return round(max(0.0, now - self.replica_since), 2)

    def describe(self, now: float) -> dict[str, Any]:
        return {"name": self.label, "path": str(self.out), "replica_txid": f"{self.replica_txid:016x}",
                "applied_txid": f"{self.applied_txid:016x}", "lag_seconds": self.lag(now),
                "caught_up": self.applied_txid >= self.replica_txid, "restarts": self.restarts,
                "running": self.proc is not None and self.proc.poll() is None}


@dataclass
class PromoteReport:
    ok: bool = False
    host: str = field(default_factory=socket.gethostname)
    previous_primary: str = ""
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    databases: int = 0
    # The final listing's round: its seconds, objects listed, files fetched, and how many databases
    # then had a newer txid to apply (what catch_up waited for besides the listing).
    final_round: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "host": self.host, "previous_primary": self.previous_primary, "steps": self.steps,
                "total_seconds": round(sum(self.steps.values()), 3), "databases": self.databases,
                "final_round": self.final_round, "error": self.error, "notes": self.notes}


RELIST_PAUSE = 1.0  # seconds before a promotion lists again after an incomplete final round


class Follower:
    """Follows the replica into the data dir and serves it read-only until promoted."""

    TICK = 0.1

    def __init__(self, settings: Settings, interval: float = 1.0, stream: TextIO | None = None):
        from edgehost.settings import SECRET_NAMES

        self.settings = settings
        self.interval = interval
        secrets = [v for k, v in settings.environ.items() if k in SECRET_NAMES]
        self.hub = LogHub(settings.log_dir, secrets=secrets, stream=stream)
        self.ls = litestream.Litestream.from_settings(settings)
        self.mirror = settings.state_dir / MIRROR_DIR
        self.followed: dict[str, Followed] = {}
        self.stopping = threading.Event()
        self.promoting = threading.Event()
        self.handed_over = threading.Event()  # following stopped: the main thread runs `up` now
        self.portal: Service | None = None
        self.primary = "the primary"
        self.rounds = 0
        self.last_round: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._tending = threading.Lock()  # the main loop's tending and a promotion's stop never interleave
        self._follow_log = None
        self._control: ControlServer | None = None
        self.promotion: PromoteReport | None = None
        self._lease: WriterLease | None = None  # built at start: a promotion takes it with a warm client
        self._frozen: list[list[tuple[subprocess.Popen[bytes], Path]]] = []  # stopped by a promotion, not yet killed
        self.promoted_ready = threading.Event()
        # Where the global DB sits in the mirror, and under which name: it has its own root when it is
        # not beside the tenants.
        repl = self.ls.replication
        glob_root, _, self._global_leaf = repl.global_entry.replica_url.rstrip("/").rpartition("/")
        self._global_local = mirror_roots(repl, self.mirror)[glob_root]

    def log(self, text: str) -> None:
        self.hub.line("edgehost", text)

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> int:
        from edgehost.supervisor.run import claim_pid_file

        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(s.state_dir, 0o700)
        claim_pid_file(s.pid_file)  # no other follow or up of this home runs: what follows its data dir is stray
        strays = kill_stray_followers(s.data_dir)
        if strays:
            self.log(f"killed {len(strays)} `litestream restore -f` left by an earlier run (pids {', '.join(map(str, strays[:5]))}"
                     f"{', ...' if len(strays) > 5 else ''})")
        if role(s) == "primary" and not self._failed_back_from():
            self.log("state/role says this machine was promoted: running as the primary (edgehost up)")
            return self._run_primary()
        try:
            self._check_not_the_writer()
        except BaseException:
            s.pid_file.unlink(missing_ok=True)
            raise
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        set_role(s, "follower")
        self.log(f"edgehost follow (pid {os.getpid()}): following {s.replica_url} into {s.data_dir}, "
                 f"one listing every {self.interval:g}s")
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self._follow_log = open(s.log_dir / "follow.log", "ab")
        self._control = ControlServer(s.supervisor_socket, self._handle_control, poll_interval=0.05)
        self._control.start()
        threading.Thread(target=self._mirror_loop, daemon=True, name="mirror").start()
        try:
            while not self.stopping.is_set() and not self.handed_over.is_set():
                with self._tending:
                    if not self.promoting.is_set():
                        self._tend()
                self.handed_over.wait(self.TICK)  # a promotion's hand-over is taken at once
        finally:
            if not self.handed_over.is_set():
                with self._tending:
                    self._stop_following()
                self._release_frozen()  # a promotion under way stopped some: they must not outlive us
                self._close_control()
                s.pid_file.unlink(missing_ok=True)
        if self.handed_over.is_set():
            try:
                return self._run_primary()
            finally:
                self._release_frozen()  # `up` stopped before its services were ready
        self.log("stopped following")
        self.hub.close()
        return int(ExitStatus.OK)

    def _failed_back_from(self) -> bool:
        """A promoted machine whose lease another machine holds now was failed back from: with its
        data dir moved aside (docs/standby.md, Failback) it follows again, with it in place it
        refuses (its writes that never reached the replica are there). A replica that cannot be read
        says nothing: run as the primary, whose `up` waits for the lease."""
        s = self.settings
        try:
            lease = self._own_lease()
            holder = lease.read()
        except EdgehostError:
            return False
        if holder is None or holder.released or holder.machine_id == lease.machine_id:
            return False
        if layout.local_databases(s):
            s.pid_file.unlink(missing_ok=True)
            raise BadInput(f"this machine was promoted, but {holder.describe()} holds the writer lease now: "
                           f"to follow it, move {s.data_dir} aside (this machine's writes that never reached "
                           f"the replica are in it) and start again; if that machine is gone, `edgehost up "
                           f"--take-over` makes this one the primary again")
        self.log(f"this machine was the primary; {holder.describe()} holds the writer lease now: following it")
        set_role(s, "follower")
        return True

    def _own_lease(self) -> WriterLease:
        """This machine's lease object, built once: the start-up checks read it, a promotion takes it
        with the same warm client."""
        if self._lease is None:
            self._lease = WriterLease.of_this_machine(ReplicaStore.from_settings(self.settings), self.settings)
        return self._lease

    def _check_not_the_writer(self) -> None:
        """A machine that holds the writer lease is the primary: following would overwrite its data."""
        s = self.settings
        lease = self._own_lease()
        try:
            current = lease.read()
        except EdgehostError as exc:
            raise EnvironmentProblem(f"cannot read the replica {s.replica_url}: {exc}") from None
        if current is not None and current.machine_id == lease.machine_id and not current.released:
            raise BadInput("this machine holds the writer lease: it is the primary; run `edgehost up`, "
                           "not `edgehost follow`")
        if current is not None:
            self.primary = current.describe()
        if role(s) != "follower" and layout.local_databases(s):
            raise BadInput(f"{s.data_dir} holds databases and this machine has never followed: move them aside "
                           f"(they would be overwritten by the replica's) and start again")

    # --- following --------------------------------------------------------------------------------

    def _mirror_loop(self) -> None:
        failing = False
        while not self.stopping.is_set() and not self.handed_over.is_set():
            started = time.monotonic()
            if self.promoting.is_set():  # the promotion makes the final round itself
                self.stopping.wait(0.05)
                continue
            try:
                # A promotion stops this round's listing once its page in flight arrives: on a
                # server that answers one request at a time, the rest would slow the promotion's own.
                self.mirror_round(cancel=self.promoting.is_set)
                if failing:
                    self.log("the replica answers again")
                failing = False
            except ListingCancelled:
                continue
            except EdgehostError as exc:
                if not failing:
                    self.log(f"warning: mirror round failed ({exc}); retrying every {self.interval:g}s")
                failing = True
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def mirror_round(self, cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        """One listing of the replica, its new files fetched into the mirror, each database's newest txid noted."""
        # A promotion's final round may overlap the loop's last one until `cancel` stops that one's
        # listing (ListingCancelled, raised here): files are written under unique temporary names, and
        # a listing only ever raises a database's newest txid.
        report = mirror_once(self.settings, self.ls, self.mirror, grace=3600, on_listing=self._listed, cancel=cancel)
        if report.cancelled:
            raise ListingCancelled("; ".join(report.errors[:3]))
        if report.errors and not report.listed:
            raise EnvironmentProblem("; ".join(report.errors[:3]))
        self.rounds += 1
        # What this standby would be behind on: a root not listed, or a database it follows whose
        # new files did not arrive (not a stray object of the bucket that maps to no database here).
        missed = [why for local, db, why in report.missed if not db or self._ref(local, db) is not None]
        done = {"at": time.time(), "listed": report.listed, "fetched": report.fetched,
                "seconds": report.seconds, "errors": report.errors[:5], "missed": missed[:5]}
        self.last_round = done
        return done

    def _listed(self, local: Path, listing: Listing) -> None:
        now = time.time()
        for db, files in listing.dbs.items():
            ref = self._ref(local, db)
            if ref is None or not files:
                continue
            newest = max(f.max_txid for f in files)
            with self._lock:
                item = self.followed.get(ref.label)
                if item is None:
                    item = self.followed[ref.label] = Followed(ref.label, ref.path, (local / db).as_uri())
                    self.log(f"following {ref.label}")
                if newest > item.replica_txid:
                    if item.applied_txid >= item.replica_txid:
                        item.replica_since = now  # it was caught up: behind from now on
                    item.replica_txid = newest

    def _ref(self, local: Path, db: str) -> layout.DatabaseRef | None:
        """The database under the data dir that a database of the mirror (`db` under root `local`) is."""
        s = self.settings
        if local == self._global_local and db == self._global_leaf:
            return layout.global_db(s)
        slug, _, name = db.partition("/")
        if name != s.property_db_name or not layout.is_slug(slug) or local != self.mirror:
            return None
        return layout.property_db(s, slug)

    def _tend(self) -> None:
        now, mono = time.time(), time.monotonic()
        with self._lock:
            items = list(self.followed.values())
        for item in items:
            if item.proc is not None and item.proc.poll() is not None:
                code = item.proc.returncode
                item.proc = None
                item.restarts += 1
                item.next_start = mono + min(30.0, 2.0 ** min(item.restarts, 5))
                self.log(f"litestream restore -f for {item.label} exited {code}; again in "
                         f"{item.next_start - mono:.0f}s")
            if item.proc is None and mono >= item.next_start and not self.promoting.is_set():
                self._start(item)
            # Only a database behind the listing can have applied more: the others cost no read.
            applied = item.applied() if item.applied_txid < item.replica_txid else item.applied_txid
            if applied > item.applied_txid:
                item.applied_txid = applied
                if applied >= item.replica_txid:
                    item.replica_since = None
                elif item.replica_since is not None:
                    item.replica_since = now  # part of the way: behind since this apply
        self._tend_portal()

    def _start(self, item: Followed) -> None:
        item.out.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-txid"):  # a restart restores whole again (resume needs a snapshot)
            Path(f"{item.out}{suffix}").unlink(missing_ok=True)
        argv = [str(self.ls.binary), "restore", "-f", "-follow-interval", APPLY_INTERVAL, "-o", str(item.out),
                item.source]
        item.applied_txid = 0
        item.proc = subprocess.Popen(argv, env=self.ls.env, stdin=subprocess.DEVNULL, stdout=self._follow_log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def _tend_portal(self) -> None:
        s = self.settings
        if self.portal is None:
            glob = self.followed.get("global")
            if glob is None or glob.applied_txid == 0:
                return  # the portal needs the global database
            from edgehost.supervisor.run import portal_spec

            spec = portal_spec(s, EDGEHOST_PORTAL_READ_ONLY=f"this machine is a standby; writes go to {self.primary}")
            self.portal = Service(spec, Backoff(s.restart), self.hub)
            self.log("starting the read-only portal")
            self.portal.start()
            return
        svc, mono = self.portal, time.monotonic()
        if svc.state in (Service.STARTING, Service.RUNNING):
            code = svc.poll()
            if code is not None:
                svc.last_exit = code
                svc.stop(1)
                svc.state, svc.next_start_at = Service.BACKOFF, mono + svc.backoff.on_exit(mono, svc.uptime()).restart_in
                self.log(f"portal exited {code}; restarting")
            elif svc.state == Service.STARTING and svc.spec.ready():
                svc.state, svc.ready_once = Service.RUNNING, True
                self.log(f"portal ready (read-only) in {mono - svc.started_at:.2f}s")
        elif svc.state == Service.BACKOFF and mono >= svc.next_start_at:
            svc.start()

    def _stop_following(self, now: bool = False, keep_portal: bool = False) -> None:
        """Stop every `restore -f`, and the portal unless `keep_portal` (a promotion hands it over to `up`).

        Normally SIGTERM, each waited for. With `now` (a promotion): SIGSTOP, which takes effect at
        once and costs nothing, and the stopped processes are killed one at a time only once the
        primary is ready (`_release_frozen`): a kill of 200 at once had the kernel tear them down
        (0.2-0.3 s of CPU on two cores) while litestream and the portal were starting. `restore -f`
        writes pages straight into the database file, and stopping it mid-apply would tear it: the
        stop comes only after catch-up, when each has applied the newest txid the final listing found,
        and that listing saw at least every file a mirror round still in flight can fetch (that round
        listed earlier), so none has anything left to apply. A stopped process holds no SQLite lock and
        runs none of its own code again; whatever opens a database next takes SQLite's locks.
        """
        with self._lock:
            items = list(self.followed.values())
        procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        if now:
            with self._lock:
                self._frozen.append(procs)  # each registered before it is stopped: nothing escapes the kill
        for item in items:
            if item.proc is not None:
                procs.append((item.proc, item.out))
                if item.proc.poll() is None:
                    _signal_group(item.proc.pid, signal.SIGSTOP if now else signal.SIGTERM)
                item.proc = None
        if now:
            threading.Thread(target=self._release_frozen, args=(procs, FROZEN_SECONDS), daemon=True,
                             name="reap").start()
        else:
            _reap(procs, time.monotonic() + 10)
        if self.portal is not None and self.portal.proc is not None and not keep_portal:
            self.portal.stop(self.settings.portal.stop_timeout)
            self.portal.state = Service.STOPPED
        if self._follow_log is not None:
            self._follow_log.close()
            self._follow_log = None

    def _release_frozen(self, batch: list | None = None, wait: float | None = None) -> None:
        """Kill the `restore -f` processes a promotion stopped, one at a time so their teardown never
        competes with the new primary's start, and, when the promotion handed over, make each database
        the primary's (`as_primary_copy`). `batch`: one promotion's (its thread waits first, with
        `wait`, until the primary is ready); None: every batch not yet killed (a failed promotion
        before following resumes, and this process on its way out). Each batch is killed once."""
        if wait is not None:
            self.promoted_ready.wait(wait)
        with self._lock:
            if batch is None:
                batches, self._frozen = self._frozen, []
            else:
                batches = [b for b in self._frozen if b is batch]
                self._frozen = [b for b in self._frozen if b is not batch]
        promoted = self.handed_over.is_set()
        for procs in batches:
            for proc, out in procs:
                _signal_group(proc.pid, signal.SIGKILL)  # a stopped process dies of it too
                _reap([(proc, out)], None, promoted, self.log)

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    # --- status and promotion ------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            dbs = [item.describe(now) for item in self.followed.values()]
        return {"role": "follower", "pid": os.getpid(), "replica": self.settings.replica_url,
                "primary": self.primary, "interval_seconds": self.interval, "rounds": self.rounds,
                "last_round": self.last_round, "databases": dbs,
                "services": [self.portal.describe()] if self.portal else []}

    def _handle_control(self, method: str, path: str) -> tuple[int, Any]:
        route, _, query = path.partition("?")
        if method == "GET" and route == "/status":
            return 200, self.describe()
        if method == "POST" and route == "/promote":
            asked = parse_qs(query)
            home, sock = asked.get("home", [""])[0], asked.get("socket", [""])[0]
            if (home and not _same_file(home, self.settings.home)) or (sock and not _same_file(sock, self.settings.supervisor_socket)):
                # a quick `edgehost promote` guessed this socket from its home alone: not ours to answer
                return MISDIRECTED, {"error": f"this follower serves {self.settings.home} on {self.settings.supervisor_socket}"}
            if self.promoting.is_set():
                return 409, {"error": "a promotion is already under way"}
            self.promoting.set()
            report = self.promote(no_wait=asked.get("no_wait") == ["1"])
            return (200 if report.ok else 500), report.as_dict()
        return 404, {"error": "unknown endpoint"}

    def promote(self, no_wait: bool = False, catch_up_timeout: float = 120.0) -> PromoteReport:
        """Take the lease, catch up, stop following, hand over to `up`; wait until the portal is writable."""
        s, report = self.settings, PromoteReport()
        self.promotion = report
        t = time.monotonic()

        def step(name: str) -> None:
            nonlocal t
            report.steps[name] = round(time.monotonic() - t, 3)
            t = time.monotonic()

        try:
            lease = self._own_lease()

            pool = ThreadPoolExecutor(1)
            listing = pool.submit(self.mirror_round)  # the final listing, while the lease is taken
            previous = lease.acquire(take_over=True)
            current = lease.found
            report.previous_primary = (previous or current).describe() if (previous or current) else ""
            if previous is not None and not no_wait:
                # A primary alive somewhere stops writing at its next renewal, or, cut off from the
                # bucket, before its lease could go stale: give it that long, by its own settings.
                wait = max(0.0, previous.quiet_after(s.lease_renew_seconds, s.lease_ttl_seconds)
                           - (previous.age_seconds or 0.0))
                if wait:
                    report.notes.append(f"waited {wait:.0f}s for the old primary to stop writing: its next lease "
                                        f"renewal, or its own stop when cut off (--no-wait when it is known to be down)")
                    self.log(f"promote: waiting {wait:.0f}s for the old primary to stop writing")
                    if self.stopping.wait(wait):
                        raise EnvironmentProblem("the follower was told to stop while waiting for the old primary")
                    lease.renew()  # confirmed anew: the primary's litestream may write from now
            step("lease")
            final = listing.result()
            pool.shutdown()
            if previous is not None and not no_wait:
                final = self.mirror_round()  # after the wait: what the old primary uploaded meanwhile
            final = self._whole(final)
            waited_for = self._catch_up(catch_up_timeout)
            report.final_round = {"seconds": final["seconds"], "listed": final["listed"],
                                  "fetched": final["fetched"], "databases_behind": waited_for}
            report.databases = len(self.followed)
            step("catch_up")
            with self._tending:
                self._stop_following(now=True, keep_portal=True)
            step("stop_following")
            try:
                set_role(s, "primary")
            except OSError as exc:
                raise EnvironmentProblem(f"cannot record the role in {s.state_dir}: {exc.strerror}") from None
            self.handed_over.set()  # the main thread runs `up` now
            if not self.promoted_ready.wait(180):
                raise EnvironmentProblem("the primary did not get every service running within 180s")
            step("primary_ready")
            report.ok = True
            self.log(f"promoted in {sum(report.steps.values()):.2f}s: this machine is the primary now")
        except EdgehostError as exc:
            report.error = str(exc)
            self.log(f"!!! promote failed: {exc}")
        except Exception as exc:  # not ours: reported like one, and the standby goes on following
            report.error = f"{type(exc).__name__}: {exc}"
            self.log(f"!!! promote failed: {report.error}")
        finally:
            if not report.ok:
                if not self.handed_over.is_set():
                    self._release_frozen()  # before following resumes and restores those databases anew
                    self._give_back_lease()
                self.promoting.clear()
        return report

    def _whole(self, final: dict[str, Any]) -> dict[str, Any]:
        """The final round, complete: every root listed and every new file fetched. A database whose
        newest files the round missed (one root's listing failed, a GET failed) would be promoted
        behind the replica, and its litestream would then write a history of its own over the end
        of the old primary's. One more round for a blip; then the promotion fails."""
        if not final.get("missed"):
            return final
        self.log(f"promote: the final round was incomplete ({final['missed'][0]}); listing again in {RELIST_PAUSE:g}s")
        if self.stopping.wait(RELIST_PAUSE):  # a throttled endpoint gets a moment
            raise EnvironmentProblem("the follower was told to stop during the promotion")
        final = self.mirror_round()
        if final.get("missed"):
            raise EnvironmentProblem(f"the final listing of the replica was incomplete twice: "
                                     f"{'; '.join(final['missed'][:3])}")
        return final

    def _give_back_lease(self) -> None:
        """A failed promotion wrote nothing under the lease it took: mark it released, so the old
        primary (fenced by the take-over) starts again without --take-over, or the next promotion
        takes it at once."""
        if self._lease is None or not self._lease.held:
            return
        try:
            self._lease.release()
            self.log("promote failed: the writer lease is released again (nothing was written under it)")
        except EdgehostError as exc:
            self.log(f"warning: the writer lease taken by the failed promotion was not released ({exc})")

    def _catch_up(self, timeout: float) -> int:
        """Wait until every database has applied the replica's newest txid; how many were behind."""
        deadline, first = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            with self._lock:
                items = list(self.followed.values())
            with self._tending:
                for item in items:
                    if item.proc is None:  # new in the final listing, or in its restart backoff: no waiting
                        self._start(item)
            with self._lock:
                behind = [i.label for i in self.followed.values() if i.applied() < i.replica_txid]
            first = len(behind) if first is None else first
            if not behind:
                return first
            time.sleep(0.05)
        raise EnvironmentProblem(f"{len(behind)} database(s) did not apply the replica's newest txid within "
                                 f"{timeout:.0f}s: {', '.join(behind[:5])}")

    def _run_primary(self) -> int:
        """Run as the primary (`edgehost up`) in this process."""
        from edgehost.supervisor.run import Handover, Supervisor

        self._close_control()
        self.settings.pid_file.unlink(missing_ok=True)
        handover = None
        if self.handed_over.is_set() and self._lease is not None and self._lease.held:
            portal = self.portal if self.portal is not None and self.portal.pid is not None else None
            handover = Handover(self._lease, portal, self.ls)
        sup = Supervisor(self.settings, stream=self.hub.stream, handover=handover)
        if self.promotion is not None or self.handed_over.is_set():
            threading.Thread(target=self._await_primary, args=(sup,), daemon=True, name="promoted").start()
        return sup.run()

    def _await_primary(self, sup: Any) -> None:
        while not sup.stopping.is_set():
            if sup.services and all(svc.state == Service.RUNNING for svc in sup.services
                                    if svc.name != "cloudflared"):
                sup.alerts.announce("promoted", f"{socket.gethostname()} is the primary now (promoted from "
                                                f"standby); previous primary: {self._previous()}")
                self.promoted_ready.set()
                return
            time.sleep(0.02)

    def _previous(self) -> str:
        report = self.promotion
        return report.previous_primary if report is not None and report.previous_primary else "unknown"


def _same_file(named: str, ours: Path) -> bool:
    """Whether a path a request names is this follower's (the same file: a case-insensitive disk or a
    symlink spells it otherwise); by the spelling when either is missing."""
    try:
        return os.path.samefile(named, ours)
    except OSError:
        return Path(named) == ours


def _signal_group(pid: int, sig: int) -> None:
    """Signal a follower's process group (it leads its own session); gone already is fine. macOS
    answers EPERM for a group left with only a zombie: then the process itself."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _reap(procs: list[tuple[subprocess.Popen[bytes], Path]], deadline: float | None = None,
          promoted: bool = False, log: Any = None) -> None:
    """Wait for each process (past `deadline`, SIGKILL its group first). With `promoted`, then make its
    database the primary's (`as_primary_copy`: WAL mode, then no `-txid`), which litestream or the
    portal may have done already; off the promotion's critical path, and never leaving a copy in
    rollback mode without the `-txid` that tells a restart to finish it."""
    for proc, out in procs:
        try:
            try:
                proc.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            if promoted:
                as_primary_copy(out)
        except Exception as exc:  # one database must not leave the others unreaped; a restart finishes it
            if log is not None:
                log(f"warning: {out}: {exc}")


def kill_stray_followers(data_dir: Path) -> list[int]:
    """SIGKILL every `litestream restore -f` writing under `data_dir`; their pids.

    Called by a follower that holds the home's pid file, so none of them is its own: they are left by
    an earlier `edgehost follow` that was killed (kill -9, a crash), running on (applying into files
    a new run replaces) or stopped (a promotion stops them until the primary is ready).
    """
    follower, into = " restore -f ", f" -o {data_dir}{os.sep}"
    killed = []
    for pid, line in _command_lines():
        if pid == os.getpid() or follower not in f" {line} " or into not in f" {line}":
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return killed


def _command_lines() -> list[tuple[int, str]]:
    """Every process's pid and command line, its arguments joined by spaces: from /proc where there
    is one (Linux: the exact bytes), else from `ps` (macOS, which may escape non-ASCII bytes)."""
    proc = Path("/proc")
    if (proc / "self" / "cmdline").exists():
        found = []
        for entry in proc.iterdir():
            if entry.name.isdigit():
                try:
                    raw = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                found.append((int(entry.name), os.fsdecode(raw.rstrip(b"\0").replace(b"\0", b" "))))
        return found
    try:
        listing = subprocess.run(["ps", "-A", "-ww", "-o", "pid=,args="], capture_output=True, text=True,
                                 errors="replace", timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in listing.splitlines():
        pid, _, args = line.strip().partition(" ")
        if pid.isdigit():
            found.append((int(pid), args))
    return found


def as_primary_copy(path: Path) -> None:
    """A followed database made the primary's, after a promotion (by the reaper, or by `up`'s preflight
    when the machine stopped before the reaper was done): `restore -f` leaves it in rollback-journal
    mode with its applied txid beside it; WAL mode and no sidecar is what a plain restore leaves, and
    litestream replicate then continues the replica's history from it ("database behind replica")."""
    import sqlite3

    from edgehost.engine.sqlite import journal_mode

    if journal_mode(path) != "wal":  # a header read: litestream or the portal may have done it already
        conn = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
    Path(f"{path}-txid").unlink(missing_ok=True)  # last: until then a restart finds it and does this again


def follow(settings: Settings, interval: float) -> int:
    if interval < 0.2:
        raise BadInput(f"--interval {interval:g}s: at least 0.2s (each round lists the whole replica)")
    return Follower(settings, interval).run()
