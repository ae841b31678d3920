"""Alerts: edge-triggered with recoveries and a cooldown, delivered by a worker with retries, to a real
local HTTP receiver standing in for ntfy, a webhook and healthchecks."""

from __future__ import annotations

import json
import subprocess

import pytest

from edgehost.ops import alerts
from procs import Receiver, edgehost_argv, wait_until


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def _alerter(kit_home, receiver, tmp_path, clock=None, **extra):
    env = {"EDGEHOST_WEBHOOK_URL": f"{receiver.url}/hook", "EDGEHOST_NTFY_URL": f"{receiver.url}/topic-secret",
           "EDGEHOST_NTFY_TOKEN": "tk_secret_token", **extra}
    settings = kit_home.settings(**env)
    lines: list[str] = []
    delivery = alerts.Delivery(lines.append, attempts=3, backoff=0.01)
    a = alerts.Alerter(settings, lines.append, delivery, state_path=tmp_path / "alerts.json", clock=clock or Clock())
    return a, lines


def test_one_alert_and_one_recovery_per_incident_on_every_channel(kit_home, receiver, tmp_path):
    a, _ = _alerter(kit_home, receiver, tmp_path)
    for _ in range(5):  # the same incident seen on five polls
        a.raise_("lag:acme", "lag", "acme: replica is 90s behind (threshold 60s)", database="acme")
    a.clear("lag:acme", "acme: replica caught up")
    a.clear("lag:acme", "acme: replica caught up")
    assert a.flush(10)
    hooks = receiver.notices()
    assert [(n["kind"], n["event"], n["database"]) for n in hooks] == [("alert", "lag", "acme"), ("recovery", "lag", "acme")]
    assert set(hooks[0]) >= {"event", "severity", "host", "database", "summary", "details", "time"}
    assert hooks[0]["severity"] == "critical" and hooks[1]["severity"] == "info"
    ntfy = receiver.got("/topic-secret")
    assert len(ntfy) == 2
    assert ntfy[0]["headers"]["Authorization"] == "Bearer tk_secret_token"
    assert ntfy[0]["headers"]["Priority"] == "5" and "ALERT lag (acme)" in ntfy[0]["headers"]["Title"]
    assert ntfy[0]["body"].decode().startswith("acme: replica is 90s behind")


def test_a_flapping_incident_is_held_by_the_cooldown(kit_home, receiver, tmp_path):
    clock = Clock()
    a, lines = _alerter(kit_home, receiver, tmp_path, clock)
    a.raise_("lag:acme", "lag", "behind")
    clock.now += 10
    a.clear("lag:acme", "caught up")
    for _ in range(10):  # flaps within the 600 s cooldown: nothing more is sent
        clock.now += 5
        a.raise_("lag:acme", "lag", "behind")
        a.tick()
        clock.now += 5
        a.clear("lag:acme", "caught up")
    assert a.flush(10)
    assert [n["kind"] for n in receiver.notices()] == ["alert", "recovery"]
    # Still behind when the cooldown ends: the held alert goes out then, and its recovery later.
    a.raise_("lag:acme", "lag", "behind again")
    a.tick()
    assert a.flush(10) and len(receiver.notices()) == 2
    clock.now += 600
    a.tick()
    a.clear("lag:acme", "caught up")
    assert a.flush(10)
    assert [n["kind"] for n in receiver.notices()] == ["alert", "recovery", "alert", "recovery"]


def test_state_survives_a_restart_so_nothing_is_repeated_or_forgotten(kit_home, receiver, tmp_path):
    clock = Clock()
    a, _ = _alerter(kit_home, receiver, tmp_path, clock)
    a.raise_("service:portal", "service_failed", "portal FAILED")
    assert a.flush(10)
    b, _ = _alerter(kit_home, receiver, tmp_path, clock)  # the supervisor restarted
    b.raise_("service:portal", "service_failed", "portal FAILED")
    b.clear("service:portal", "portal running again")
    assert b.flush(10)
    assert [n["kind"] for n in receiver.notices()] == ["alert", "recovery"]
    assert b.recent_notices()[0]["kind"] == "recovery" and b.recent_notices()[1]["kind"] == "alert"


def test_a_failing_channel_is_retried_then_one_line_without_its_url(kit_home, receiver, tmp_path):
    a, lines = _alerter(kit_home, receiver, tmp_path)
    receiver.fail_next = 2  # the first two tries (of the first channel) get 500
    a.raise_("disk", "disk_low", "10 MB free")
    assert a.flush(10)
    assert len(receiver.notices()) == 1 and len(receiver.got("/topic-secret")) == 1
    receiver.fail_next = 100
    a.raise_("final_sync", "final_sync", "final sync did not land")
    assert a.flush(10)
    failures = [line for line in lines if "failed after" in line]
    assert sorted(failures) == ["alert to ntfy failed after 3 attempt(s): HTTP 500",
                                "alert to webhook failed after 3 attempt(s): HTTP 500"]
    assert not any("topic-secret" in line or "tk_secret" in line or "/hook" in line for line in lines)


def test_sending_never_blocks_the_caller(kit_home, tmp_path):
    # A channel that never answers (a socket that accepts and stays silent): raise_ returns at once.
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        settings = kit_home.settings(EDGEHOST_WEBHOOK_URL=f"http://127.0.0.1:{silent.getsockname()[1]}/hook")
        a = alerts.Alerter(settings, lambda _l: None, alerts.Delivery(lambda _l: None, attempts=1),
                           state_path=tmp_path / "alerts.json")
        started = time.monotonic()
        for i in range(20):
            a.raise_(f"lag:db{i}", "lag", "behind")
        assert time.monotonic() - started < 1.0
    finally:
        silent.close()


def test_alert_test_reports_each_channel(kit_home, receiver):
    env = {**kit_home.environ(), "EDGEHOST_WEBHOOK_URL": f"{receiver.url}/hook",
           "EDGEHOST_HEALTHCHECKS_URL": f"{receiver.url}/ping/uuid-secret", "EDGEHOST_NTFY_URL": "http://127.0.0.1:9/t"}
    done = subprocess.run(edgehost_argv("alert", "test", "--json"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    out = json.loads(done.stdout)
    assert {r["channel"]: r["ok"] for r in out["channels"]} == {"ntfy": False, "webhook": True, "healthchecks": True}
    assert receiver.notices()[0]["kind"] == "test"
    assert len(receiver.got("/ping/uuid-secret")) == 1
    assert "uuid-secret" not in done.stdout + done.stderr and "127.0.0.1:9" not in done.stdout + done.stderr
    env.pop("EDGEHOST_NTFY_URL")
    ok = subprocess.run(edgehost_argv("alert", "test"), env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "webhook: sent" in ok.stderr and "healthchecks: sent" in ok.stderr


def test_alert_test_without_channels_is_one_line_and_exit_2(kit_home):
    done = subprocess.run(edgehost_argv("alert", "test"), env=kit_home.environ(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no alert channel is configured" in done.stderr


def test_channel_urls_are_secrets_in_config_check_and_errors(kit_home):
    env = {**kit_home.environ(), "EDGEHOST_WEBHOOK_URL": "https://hooks.example/T0/B0/very-secret"}
    done = subprocess.run(edgehost_argv("config", "check"), env=env, capture_output=True, text=True, timeout=60)
    assert "very-secret" not in done.stdout + done.stderr and "(a secret)" in done.stderr
    env["EDGEHOST_WEBHOOK_URL"] = "ftp://very-secret"
    bad = subprocess.run(edgehost_argv("config", "check"), env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "very-secret" not in bad.stdout + bad.stderr
    assert "EDGEHOST_WEBHOOK_URL: must be an http:// or https:// URL" in bad.stderr
