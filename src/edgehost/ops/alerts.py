"""Alerts: edge-triggered notices to ntfy and a JSON webhook, and a healthchecks-style dead-man's switch.

An incident is one key (``lag:acme``, ``service:portal``...). Its first report sends one alert; while
it lasts nothing more is sent; when it ends one recovery is sent. A key that comes back within the
cooldown after its recovery is held: the alert goes out only if the incident still lasts when the
cooldown ends, so a flapping database costs one alert and one recovery per cooldown, not one per flap.

Sending never blocks the caller: notices go through a bounded queue to one worker thread, which tries
each channel a few times with backoff and writes one log line when a channel fails. Channel URLs and
tokens are secrets: they appear in no log line, argv or generated file (a channel is named by its kind).

The active incidents, the cooldowns and the recent notices are kept in ``state/alerts.json``, so a
supervisor restarted by launchd neither repeats an alert nor forgets to send its recovery.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

import httpx

from edgehost.files import write_atomic
from edgehost.settings import Settings

# event -> severity of its alert (a recovery is always "info")
EVENTS: dict[str, str] = {
    "lag": "critical",                # a replica more than lag_alert_seconds behind its database
    "replication_error": "critical",  # litestream reports an error for a database
    "service_failed": "critical",     # a service crash-looped into FAILED
    "drill_failed": "critical",       # the newest drill did not pass
    "verify_failed": "critical",      # the newest verify did not pass
    "drill_overdue": "warning",       # no passing drill in alerts.drill_overdue_days
    "lease": "critical",              # the writer lease was lost, or another machine holds it
    "disk_low": "critical",           # free space on the data volume below alerts.disk_free_min_mb
    "final_sync": "critical",         # at the last stop some databases were not replicated
    "pitr_window": "warning",         # a database's point-in-time window is shorter than configured
    "promoted": "info",               # a standby took over as the primary (`edgehost promote`)
    "test": "info",                   # `edgehost alert test`
}

RECENT_KEPT = 100


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Notice:
    kind: str  # alert | recovery | test
    event: str
    severity: str
    host: str
    summary: str
    database: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON body."""
        return {"kind": self.kind, "event": self.event, "severity": self.severity, "host": self.host,
                "database": self.database, "summary": self.summary, "details": self.details, "time": _iso(self.at)}

    def title(self) -> str:
        word = {"alert": "ALERT", "recovery": "recovered", "test": "test"}.get(self.kind, self.kind)
        return f"edgehost {self.host}: {word} {self.event}" + (f" ({self.database})" if self.database else "")


# --- channels ------------------------------------------------------------------------------------

def _post(url: str, timeout: float = 10.0, **kwargs: Any) -> None:
    """The one network seam: POST, raising on a transport error or a non-2xx answer."""
    response = httpx.post(url, timeout=timeout, **kwargs)
    if not 200 <= response.status_code < 300:
        raise ChannelError(f"HTTP {response.status_code}")


class ChannelError(Exception):
    """A channel refused a notice (its text never holds the channel's URL)."""


def reason(exc: Exception) -> str:
    if isinstance(exc, ChannelError):
        return str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.HTTPError):
        return f"cannot connect ({type(exc).__name__})"  # httpx's message may quote the URL
    return type(exc).__name__


class Channel(Protocol):
    name: str

    def send(self, notice: Notice) -> None: ...


@dataclass(frozen=True)
class Ntfy:
    url: str
    token: str = ""
    name: str = "ntfy"

    def send(self, notice: Notice) -> None:
        priority = {"critical": "5", "warning": "4"}.get(notice.severity, "3") if notice.kind == "alert" else "3"
        tags = {"alert": "rotating_light", "recovery": "white_check_mark"}.get(notice.kind, "bell")
        headers = {"Title": notice.title(), "Priority": priority, "Tags": tags}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = notice.summary + "".join(f"\n{k}: {v}" for k, v in notice.details.items())
        _post(self.url, content=body.encode(), headers=headers)


@dataclass(frozen=True)
class Webhook:
    url: str
    name: str = "webhook"

    def send(self, notice: Notice) -> None:
        _post(self.url, json=notice.payload())


@dataclass(frozen=True)
class Healthchecks:
    """A healthchecks.io-style check: the URL on success, <url>/fail and <url>/start."""

    url: str
    name: str = "healthchecks"

    def ping(self, signal: str = "", body: str = "") -> None:
        url = self.url.rstrip("/") + (f"/{signal}" if signal else "")
        _post(url, content=body.encode()[:10_000])

    def send(self, notice: Notice) -> None:
        """A notice reaches the check as a success ping carrying its summary (`edgehost alert test`)."""
        self.ping("", notice.summary)


def channels(settings: Settings) -> list[Channel]:
    a = settings.alerts
    out: list[Channel] = []
    if a.ntfy_url:
        out.append(Ntfy(a.ntfy_url, a.ntfy_token))
    if a.webhook_url:
        out.append(Webhook(a.webhook_url))
    return out


def healthchecks(settings: Settings) -> Healthchecks | None:
    return Healthchecks(settings.alerts.healthchecks_url) if settings.alerts.healthchecks_url else None


# --- delivery --------------------------------------------------------------------------------------

class Delivery:
    """One worker thread sends what is queued; the caller never waits on the network."""

    def __init__(self, log: Callable[[str], None], attempts: int = 3, backoff: float = 1.0, maxsize: int = 1000):
        self.log = log
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._queue: queue.Queue[tuple[str, Callable[[], None]] | None] = queue.Queue(maxsize)
        self._idle = threading.Condition()
        self._pending = 0
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self._worker = threading.Thread(target=self._run, daemon=True, name="alerts")
        self._worker.start()

    def submit(self, channel: str, send: Callable[[], None]) -> None:
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait((channel, send))
        except queue.Full:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
            self.failed[channel] += 1
            self.log(f"alert to {channel} dropped: {self._queue.maxsize} notices already waiting")

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            channel, send = job
            try:
                self._deliver(channel, send)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _deliver(self, channel: str, send: Callable[[], None]) -> bool:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                send()
                self.sent[channel] += 1
                return True
            except Exception as exc:  # any failure of a channel is reported, never raised into the supervisor
                if attempt == self.attempts:
                    self.failed[channel] += 1
                    self.log(f"alert to {channel} failed after {attempt} attempt(s): {reason(exc)}")
                    return False
            time.sleep(delay)
            delay *= 2
        return False

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued was sent or given up on; False when `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def send_now(self, channel: Channel, notice: Notice) -> str:
        """Send one notice synchronously (with the retries); "" when it went out, else why not."""
        errors: list[str] = []

        def send() -> None:
            try:
                channel.send(notice)
            except Exception as exc:
                errors.append(reason(exc))
                raise

        ok = self._deliver(channel.name, send)
        return "" if ok else (errors[-1] if errors else "failed")


# --- incidents -------------------------------------------------------------------------------------

@dataclass
class Incident:
    key: str
    event: str
    severity: str
    summary: str
    database: str | None
    since: float
    notified: bool = False  # the alert went out (False: held by the cooldown)
    details: dict[str, Any] = field(default_factory=dict)


class Alerter:
    """Edge-triggered alerts with recoveries and a cooldown; state kept in `state_path`."""

    def __init__(self, settings: Settings, log: Callable[[str], None], delivery: Delivery | None = None,
                 state_path: Path | None = None, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.log = log
        self.host = socket.gethostname()
        self.channels = channels(settings)
        self.delivery = delivery or Delivery(log, attempts=settings.alerts.attempts,
                                             backoff=settings.alerts.retry_backoff_seconds)
        self.cooldown = settings.alerts.cooldown_seconds
        self.clock = clock
        self.state_path = state_path
        self._lock = threading.RLock()
        self.active: dict[str, Incident] = {}
        self.recovered_at: dict[str, float] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_KEPT)
        self.counts: Counter[tuple[str, str]] = Counter()  # (event, kind) -> notices sent
        self._first_seen: dict[str, float] = {}
        self._load()

    # persistence

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            data = json.loads(self.state_path.read_text())
            self.active = {k: Incident(**v) for k, v in data.get("active", {}).items()}
            self.recovered_at = {k: float(v) for k, v in data.get("recovered_at", {}).items()}
            self.recent.extend(data.get("recent", []))
            self._first_seen = {k: float(v) for k, v in data.get("first_seen", {}).items()}
        except (OSError, ValueError, TypeError) as exc:
            self.log(f"warning: {self.state_path} unreadable ({type(exc).__name__}); alert state starts empty")

    def _save(self) -> None:
        if self.state_path is None:
            return
        horizon = self.clock() - self.cooldown
        data = {"active": {k: asdict(v) for k, v in self.active.items()},
                "recovered_at": {k: v for k, v in self.recovered_at.items() if v > horizon},
                "recent": list(self.recent), "first_seen": self._first_seen}
        try:
            write_atomic(self.state_path, json.dumps(data, indent=1))
        except OSError as exc:  # a full disk must not stop the supervisor; the disk alert says why
            self.log(f"warning: cannot save alert state to {self.state_path}: {exc.strerror}")

    # the two edges

    def raise_(self, key: str, event: str, summary: str, database: str | None = None,
               details: dict[str, Any] | None = None, severity: str | None = None) -> None:
        with self._lock:
            if key in self.active:
                return
            now = self.clock()
            incident = Incident(key, event, severity or EVENTS[event], summary, database, now, details=details or {})
            self.active[key] = incident
            if now - self.recovered_at.get(key, float("-inf")) >= self.cooldown:
                self._notify(incident, "alert")
            else:
                left = self.cooldown - (now - self.recovered_at[key])
                self.log(f"alert {key} held for {left:.0f}s: it recovered less than the cooldown ago")
            self._save()

    def clear(self, key: str, summary: str) -> None:
        with self._lock:
            incident = self.active.pop(key, None)
            if incident is None:
                return
            if incident.notified:
                self._notify(incident, "recovery", summary)
                self.recovered_at[key] = self.clock()
            self._save()

    def first_seen(self, what: str) -> float:
        """When this machine first asked about `what` (the home, a database): kept across restarts."""
        with self._lock:
            if what not in self._first_seen:
                self._first_seen[what] = self.clock()
                self._save()
            return self._first_seen[what]

    def is_active(self, key: str) -> bool:
        return key in self.active

    def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [k for k in self.active if k.startswith(prefix)]

    def tick(self) -> None:
        """Send the alerts the cooldown held, for incidents that still last after it."""
        with self._lock:
            now, changed = self.clock(), False
            for key, incident in self.active.items():
                if not incident.notified and now - self.recovered_at.get(key, float("-inf")) >= self.cooldown:
                    self._notify(incident, "alert")
                    changed = True
            if changed:
                self._save()

    def _notify(self, incident: Incident, kind: str, summary: str | None = None) -> None:
        notice = Notice(kind, incident.event, incident.severity if kind == "alert" else "info", self.host,
                        summary or incident.summary, incident.database, incident.details, self.clock())
        if kind == "alert":
            incident.notified = True
        self.counts[(incident.event, kind)] += 1
        self.recent.appendleft({"time": _iso(notice.at), "kind": kind, "event": notice.event,
                                "severity": notice.severity, "database": notice.database, "summary": notice.summary})
        self.log(f"{'ALERT' if kind == 'alert' else 'RECOVERED'} [{incident.event}] {notice.summary}")
        for channel in self.channels:
            self.delivery.submit(channel.name, lambda c=channel: c.send(notice))

    def announce(self, event: str, summary: str) -> None:
        """One notice that is not an incident (nothing to recover from): who is primary now."""
        with self._lock:
            self._notify(Incident(event, event, EVENTS[event], summary, None, self.clock()), "alert")
            self._save()

    def recent_notices(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.recent)[:limit]

    def flush(self, timeout: float) -> bool:
        return self.delivery.flush(timeout)


# --- the dead-man's switch ----------------------------------------------------------------------------

class DeadMansSwitch:
    """Pings the healthchecks URL on a schedule while all is well, and its /fail while not."""

    def __init__(self, check: Healthchecks | None, delivery: Delivery, every: float):
        self.check = check
        self.delivery = delivery
        self.every = every
        self._last = float("-inf")

    def beat(self, problems: list[str], now: float | None = None) -> None:
        if self.check is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last < self.every:
            return
        self._last = now
        signal = "fail" if problems else ""
        body = "\n".join(problems) if problems else "all databases within the lag threshold; last drill passed"
        check = self.check
        self.delivery.submit(check.name, lambda: check.ping(signal, body))


def send_test(settings: Settings, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """`edgehost alert test`: one test notice to every channel and a ping of the check; each result."""
    delivery = Delivery(log, attempts=1)
    notice = Notice("test", "test", "info", socket.gethostname(),
                    "edgehost test notice: this channel receives the kit's alerts")
    check = healthchecks(settings)
    results = []
    for channel in channels(settings) + ([check] if check is not None else []):
        error = delivery.send_now(channel, notice)
        results.append({"channel": channel.name, "ok": not error, "error": error})
    return results
