"""`edgehost promote` finds this home's follower: at once where the default settings put its socket
(the request names the home, and a follower of another home refuses it), through the settings
otherwise. Real processes and a real unix-socket HTTP server standing in for the follower."""

from __future__ import annotations

import http.server
import json
import signal
import socketserver
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest

from procs import edgehost, edgehost_argv, wait_until
from edgehost.errors import EnvironmentProblem
from edgehost.ops.follow import Follower, PromoteReport
from edgehost.ops.promotion import DEFAULT_SOCKET, MISDIRECTED, _quick_args


class StandIn:
    """A follower's control socket: records each request; `answer(query) -> (status, body)`."""

    def __init__(self, path: Path, answer):
        self.requests: list[dict[str, list[str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                url = urlparse(self.path)
                query = parse_qs(url.query)
                outer.requests.append({"path": [url.path], **query})
                status, body = answer(query)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def get_request(self):
                conn, _ = super().get_request()
                return conn, ("unix", 0)

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)  # a command that hung up (Ctrl-C) is no error

        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self.server = Server(str(path), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


REPORT = {"ok": True, "steps": {"lease": 0.01, "catch_up": 0.2}, "databases": 3, "total_seconds": 0.21,
          "previous_primary": "mini-a"}


@pytest.fixture
def stand_in():
    made = []

    def make(path, answer):
        made.append(StandIn(path, answer))
        return made[-1]
    yield make
    for s in made:
        s.close()


def test_promote_reaches_the_follower_at_the_default_socket_naming_this_home(kit_home, stand_in):
    settings = kit_home.settings()
    assert settings.supervisor_socket == settings.home / DEFAULT_SOCKET  # the quick path's guess
    follower = stand_in(settings.supervisor_socket, lambda q: (200, REPORT))
    proc = edgehost(kit_home, "promote", "--no-wait", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == REPORT
    [asked] = follower.requests
    assert asked == {"path": ["/promote"], "no_wait": ["1"], "home": [str(settings.home)],
                     "socket": [str(settings.supervisor_socket)]}

    failed = dict(REPORT, ok=False, error="2 database(s) did not apply the replica's newest txid within 120s")
    follower.close()
    stand_in(settings.supervisor_socket, lambda q: (500, failed))
    proc = edgehost(kit_home, "promote", timeout=60)
    assert proc.returncode == 1
    assert "promote failed" in proc.stderr and "did not apply" in proc.stderr


def test_a_follower_serving_another_home_refuses_and_the_command_uses_this_homes_settings(kit_home, stand_in):
    """A socket at the default place that answers 421 to the quick request (another home's follower)
    is asked nothing more by it; the settings then decide, here a state dir configured elsewhere."""
    (kit_home.path / "edgehost.toml").write_text('state_dir = "standby-state"\n')
    settings = kit_home.settings()
    squatter = stand_in(kit_home.path / DEFAULT_SOCKET, lambda q: (MISDIRECTED, {"error": "another home"}))
    ours = stand_in(settings.supervisor_socket, lambda q: (200, REPORT))
    proc = edgehost(kit_home, "promote", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    assert [r.get("home") for r in squatter.requests] == [[str(settings.home)]]
    assert ours.requests == [{"path": ["/promote"], "socket": [str(settings.supervisor_socket)]}]  # the full command's


def test_the_full_command_names_its_socket_and_a_refusal_is_one_line(kit_home, stand_in):
    """The full command's request names the socket its settings give; a follower listening there by
    other settings refuses (421), and the command says so in one line, exit 3, without asking again."""
    elsewhere = kit_home.path / "shared-state"
    (kit_home.path / "edgehost.toml").write_text(f'state_dir = "{elsewhere}"\n')
    other = stand_in(elsewhere / "supervisor.sock",
                     lambda q: (MISDIRECTED, {"error": "this follower serves /Users/b/edgehost on ..."}))
    proc = edgehost(kit_home, "promote", "--no-wait", "--json", timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "is not this home's" in proc.stderr and "nothing was promoted" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and json.loads(proc.stdout)["ok"] is False
    assert [sorted(r) for r in other.requests] == [["no_wait", "path", "socket"]]


def test_promote_where_up_runs_says_so_and_a_state_dir_in_the_environment_is_honoured(kit_home, stand_in):
    settings = kit_home.settings()
    up = stand_in(settings.supervisor_socket, lambda q: (404, {"error": "unknown endpoint"}))
    proc = edgehost(kit_home, "promote", "--no-wait", timeout=60)
    assert proc.returncode == 2 and "this machine is not following" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert len(up.requests) == 2  # the quick request, then the full command's

    elsewhere = kit_home.path / "env-state"
    ours = stand_in(elsewhere / "supervisor.sock", lambda q: (200, REPORT))
    kit_home.env["EDGEHOST_STATE_DIR"] = str(elsewhere)
    proc = edgehost(kit_home, "promote", "--no-wait", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(up.requests) == 2 and [r["socket"] for r in ours.requests] == [[str(elsewhere / "supervisor.sock")]]


def test_the_follower_answers_only_requests_for_its_own_home_and_socket(kit_home, monkeypatch):
    settings = kit_home.settings()
    follower = Follower(settings)
    asked = []
    monkeypatch.setattr(follower, "promote", lambda no_wait=False: asked.append(no_wait) or PromoteReport(ok=True))
    own = {"home": settings.home, "socket": settings.supervisor_socket}
    for wrong in ({"home": "/elsewhere"}, {"socket": f"{settings.home}/other-state/supervisor.sock"}):
        status, body = follower._handle_control("POST", "/promote?" + urlencode({**own, **wrong}))
        assert status == MISDIRECTED and str(settings.home) in body["error"]
    assert asked == [] and not follower.promoting.is_set()
    status, body = follower._handle_control("POST", "/promote?" + urlencode({**own, "no_wait": "1"}))
    assert status == 200 and body["ok"] and asked == [True]
    # The same files spelled otherwise (a symlink here; letter case on a Mac's disk) are its own.
    alias = settings.home.parent / f"{settings.home.name}-alias"
    alias.symlink_to(settings.home)
    settings.supervisor_socket.parent.mkdir(parents=True, exist_ok=True)
    settings.supervisor_socket.touch()  # where its control server listens when it runs
    follower.promoting.clear()
    status, _ = follower._handle_control("POST", "/promote?" + urlencode(
        {"home": alias, "socket": alias / settings.supervisor_socket.relative_to(settings.home)}))
    assert status == 200 and asked == [True, False]


def test_ctrl_c_while_the_follower_works_exits_130_without_a_traceback(kit_home, stand_in):
    settings = kit_home.settings()
    answered = threading.Event()
    follower = stand_in(settings.supervisor_socket, lambda q: (answered.wait(30), (200, REPORT))[1])
    proc = subprocess.Popen(edgehost_argv("promote"), env=kit_home.environ(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: follower.requests, 30, what="the promote request")  # the follower takes its time
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        answered.set()
    assert proc.returncode == 130 and "Traceback" not in err, err


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_timeout_that_is_not_a_positive_number_is_refused_before_anything_is_sent(kit_home, stand_in, value):
    follower = stand_in(kit_home.settings().supervisor_socket, lambda q: (200, REPORT))
    proc = edgehost(kit_home, "promote", "--timeout", value, timeout=60)
    assert proc.returncode == 2 and "--timeout must be a positive number" in proc.stderr, proc.stderr
    assert follower.requests == []


@pytest.mark.parametrize("argv, parsed", [
    (["promote"], (False, False, 3600.0)),
    (["promote", "--no-wait", "--json", "--timeout", "30"], (True, True, 30.0)),
    (["--home", "/h", "promote", "--timeout=2.5"], (False, False, 2.5)),
    (["promote", "--help"], None),
    (["promote", "--timeout", "soon"], None),
    (["promote", "--timeout"], None),
    (["status", "promote"], None),
    (["promote", "--jsonn"], None),
    (["--home", "", "promote"], (False, False, 3600.0)),  # typer: the current directory
    (["promote", "--"], None),
    (["promote", "--timeout", "0"], None),
    (["promote", "--timeout", "-1"], None),
    (["promote", "--timeout", "nan"], None),
    (["promote", "--timeout", "inf"], None),
])
def test_only_a_plain_promote_command_line_takes_the_quick_path(argv, parsed, monkeypatch):
    monkeypatch.setenv("EDGEHOST_HOME", "/another-home")  # an explicit --home wins, even an empty one
    got = _quick_args(argv)
    assert (got if got is None else got[1:]) == parsed
    if argv[0] == "--home" and got:
        assert got[0] == (Path("/h") if argv[1] else Path.cwd().resolve())


def test_a_promotion_whose_final_listing_stays_incomplete_fails_and_gives_the_lease_back(kit_home, monkeypatch):
    """One root's listing failing (a replica root of its own for the global database, a GET of a new
    file failing) left databases compared against the previous round: promoted behind the replica.
    A round with errors is listed again once; incomplete twice, the promotion fails, writes nothing."""
    settings = kit_home.settings()
    follower = Follower(settings)
    monkeypatch.setattr("edgehost.ops.follow.RELIST_PAUSE", 0.01)
    incomplete = {"at": 0, "listed": 12, "fetched": 0, "seconds": 0.01,
                  "errors": ["replica s3://bucket/global: list failed: SlowDown"],
                  "missed": ["replica s3://bucket/global: list failed: SlowDown"]}
    whole = dict(incomplete, fetched=1, errors=[], missed=[])
    rounds: list[dict] = []

    def rounds_of(*answers):
        queue = list(answers)
        return lambda cancel=None: (rounds.append(queue[0]), queue.pop(0) if len(queue) > 1 else queue[0])[1]

    monkeypatch.setattr(follower, "mirror_round", rounds_of(incomplete))
    monkeypatch.setattr(follower, "_catch_up", lambda timeout: pytest.fail("caught up on an incomplete listing"))
    follower.promoting.set()
    report = follower.promote(no_wait=True)
    assert not report.ok and "incomplete twice" in report.error and "SlowDown" in report.error
    assert len(rounds) == 2 and not follower.handed_over.is_set() and not follower.promoting.is_set()
    holder = follower._own_lease().read()
    assert holder is not None and holder.released  # the old primary starts again without --take-over

    # A blip: the second round is whole, and the promotion goes on to catch up with it.
    rounds.clear()
    monkeypatch.setattr(follower, "mirror_round", rounds_of(incomplete, whole))

    def caught_up(timeout):
        raise EnvironmentProblem("stop here: caught up on the second round")

    monkeypatch.setattr(follower, "_catch_up", caught_up)
    follower.promoting.set()
    report = follower.promote(no_wait=True)
    assert "caught up on the second round" in report.error and rounds == [incomplete, whole]


def test_the_final_round_counts_as_missed_only_what_this_standby_follows(kit_home, monkeypatch):
    """A root not listed, or a followed database whose new file did not arrive, is missed; a stray
    object of the bucket that maps to no database here (a lifecycle-archived or corrupt key) is an
    error of the round, not a reason to refuse every promotion."""
    from edgehost.ops.mirror import MirrorReport

    follower = Follower(kit_home.settings())
    report = MirrorReport("mirror", "replica", listed=30)
    report.missed = [(follower.mirror, "notaslug!/other.db", "notaslug!/other.db: InvalidObjectState"),
                     (follower.mirror, "acme/honestcam.db", "acme/honestcam.db: SlowDown")]
    report.errors = [why for _, _, why in report.missed]
    monkeypatch.setattr("edgehost.ops.follow.mirror_once", lambda *a, **kw: report)
    round_ = follower.mirror_round()
    assert round_["missed"] == ["acme/honestcam.db: SlowDown"] and len(round_["errors"]) == 2
    report.missed = report.missed[:1]
    assert follower.mirror_round()["missed"] == []
    report.missed = [(follower.mirror, "", "list failed: SlowDown")]
    assert follower.mirror_round()["missed"] == ["list failed: SlowDown"]
