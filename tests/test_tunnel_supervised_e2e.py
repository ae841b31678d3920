"""cloudflared under the supervisor. The real cloudflared cannot run here (no Cloudflare edge), so a
stand-in on PATH plays its process contract: `tunnel --config FILE run`, metrics with /ready, SIGTERM."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from edgehost.deploy.tunnel import TunnelSpec, render_config
from procs import free_port
from procs import Proc, edgehost_argv, service, start_supervisor, supervisor_status, wait_until

pytestmark = pytest.mark.e2e

STAND_IN = textwrap.dedent("""\
    #!{python}
    # Plays cloudflared's process contract for the supervisor: nothing here talks to Cloudflare.
    import http.server, signal, sys, yaml
    args = sys.argv[1:]
    if args == ["--version"]:
        print("cloudflared version 2026.1.0 (stand-in)"); sys.exit(0)
    if "ingress" in args:
        print("Validating rules from", args[args.index("--config") + 1]); print("OK"); sys.exit(0)
    assert args[:2] == ["tunnel", "--no-autoupdate"] and args[-1] == "run", args
    config = yaml.safe_load(open(args[args.index("--config") + 1]))
    host, port = config["metrics"].rsplit(":", 1)
    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/ready" else 404); self.end_headers()
        def log_message(self, *a): pass
    server = http.server.HTTPServer((host, int(port)), Ready)
    signal.signal(signal.SIGTERM, lambda *a: (print("stand-in cloudflared: SIGTERM", flush=True), sys.exit(0)))
    print("stand-in cloudflared: serving", config["ingress"][0]["hostname"], flush=True)
    server.serve_forever()
""")


def _tunnel_home(kit_home, creds_mode=0o600):
    bin_dir = kit_home.path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "cloudflared"
    stand_in.write_text(STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    creds = kit_home.path / "tunnel-creds.json"
    creds.write_text('{"AccountTag":"x","TunnelSecret":"c2VjcmV0","TunnelID":"6ff42ae2-765d-4adf-8112-31c55c1551ef"}')
    creds.chmod(creds_mode)
    metrics = free_port()
    portal_port = int(kit_home.env["EDGEHOST_PORTAL_PORT"])
    spec = TunnelSpec("6ff42ae2-765d-4adf-8112-31c55c1551ef", creds, ("portal.example.com",), "myteam",
                      "a" * 64, portal_port, metrics)
    config = kit_home.path / "cloudflared.yml"
    config.write_text(render_config(spec))
    (kit_home.path / "edgehost.toml").write_text(
        f"[tunnel]\nenabled = true\nconfig = '{config}'\nbinary = '{stand_in}'\nmetrics_port = {metrics}\n")
    kit_home.env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    return kit_home


def test_cloudflared_starts_last_and_stops_first(kit_home):
    home = _tunnel_home(kit_home)
    up = start_supervisor(home)
    try:
        settings = home.settings()
        names = [s["name"] for s in supervisor_status(settings)["services"]]
        assert names == ["litestream", "portal", "cloudflared"]
        assert service(settings, "cloudflared")["state"] == "running"
    finally:
        assert up.stop() == 0
    log = up.output()
    assert log.index("portal ready") < log.index("starting cloudflared") < log.index("cloudflared ready")
    assert log.index("cloudflared stopped") < log.index("portal stopped") < log.index("litestream stopped")
    assert "[cloudflared] stand-in cloudflared: SIGTERM" in log


def test_readable_tunnel_credentials_keep_the_tunnel_down_not_replication(kit_home):
    home = _tunnel_home(kit_home, creds_mode=0o644)
    up = start_supervisor(home, wait=False)
    settings = home.settings()
    try:
        wait_until(lambda: service(settings, "portal")["state"] == "running", 60, what="the portal")
        assert service(settings, "litestream")["state"] == "running"
        tunnel = service(settings, "cloudflared")
        assert tunnel["state"] == "failed" and "chmod 600" in tunnel["reason"]
        assert "cloudflared not started" in up.output()
    finally:
        assert up.stop() == 0


def test_a_missing_cloudflared_is_reported_and_the_rest_runs(kit_home):
    home = _tunnel_home(kit_home)
    toml = home.path / "edgehost.toml"
    toml.write_text(toml.read_text().replace(f"binary = '{home.path / 'bin' / 'cloudflared'}'",
                                             "binary = 'cloudflared-not-installed'"))
    up = start_supervisor(home, wait=False)
    settings = home.settings()
    try:
        wait_until(lambda: service(settings, "portal")["state"] == "running", 60, what="the portal")
        assert service(settings, "litestream")["state"] == "running"
        tunnel = service(settings, "cloudflared")
        assert tunnel["state"] == "failed" and "cloudflared" in tunnel["reason"]
        assert "brew install cloudflared" in up.output()
        assert up.alive()
    finally:
        assert up.stop() == 0


def test_a_crash_looping_cloudflared_never_stops_litestream(kit_home):
    home = _tunnel_home(kit_home)
    (home.path / "bin" / "cloudflared").write_text(
        "#!/bin/sh\ncase \"$*\" in *--version*) echo 'cloudflared version 2026.1.0'; exit 0;; *ingress*) echo OK; exit 0;; esac\n"
        "echo tunnel broke; exit 1\n")
    toml = home.path / "edgehost.toml"
    toml.write_text(toml.read_text() + "[restart]\ninitial_backoff = 0.05\nmax_backoff = 0.5\ncrash_loop_failures = 3\n")
    up = start_supervisor(home, wait=False)
    settings = home.settings()
    try:
        wait_until(lambda: service(settings, "cloudflared")["state"] == "failed", 60, what="cloudflared to fail")
        assert service(settings, "litestream")["state"] == "running"
        assert service(settings, "portal")["state"] == "running"
        time.sleep(1.5)
        assert up.alive() and service(settings, "litestream")["state"] == "running"
    finally:
        assert up.stop() == 0
