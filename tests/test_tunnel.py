"""cloudflared config: what render writes, the traps lint catches, the seam to cloudflared, the CLI's exit codes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import edgehost.cli.tunnel_cmd  # noqa: F401  (registers `edgehost tunnel` until cli/__init__ imports it)
from edgehost.deploy import tunnel
from edgehost.cli import main
from edgehost.errors import BadInput, ExitStatus
from edgehost.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
TUNNEL_ID = "6ff42ae2-765d-4adf-8112-31c55c1551ef"
AUD = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2"


def credentials(tmp_path: Path, mode: int = 0o600, tunnel_id: str = TUNNEL_ID) -> Path:
    path = tmp_path / f"{tunnel_id}.json"
    path.write_text(json.dumps({"AccountTag": "acct", "TunnelSecret": "c2VjcmV0", "TunnelID": tunnel_id}))
    path.chmod(mode)
    return path


def spec(tmp_path: Path, **changes) -> tunnel.TunnelSpec:
    values = dict(
        tunnel_id=TUNNEL_ID,
        credentials_file=credentials(tmp_path),
        hostnames=("portal.example.com", "admin.example.com"),
        team_name="acme",
        aud_tag=AUD,
        portal_port=8080,
        metrics_port=20241,
        protocol="quic",
    )
    values.update(changes)
    return tunnel.TunnelSpec(**values)


def codes(findings) -> dict[str, str]:
    return {f.name: {"fail": "error", "warn": "warning"}[f.level] for f in findings}


# ---------------------------------------------------------------- render


def test_render_guards_every_hostname_inside_its_rule(tmp_path):
    text = tunnel.render_config(spec(tmp_path))
    config = yaml.safe_load(text)
    assert config["tunnel"] == TUNNEL_ID
    assert config["credentials-file"] == str(tmp_path / f"{TUNNEL_ID}.json")
    assert config["metrics"] == "127.0.0.1:20241"
    assert config["no-autoupdate"] is True
    assert config["protocol"] == "quic"
    assert "originRequest" not in config  # the top-level place cloudflared ignores for access
    *rules, catch_all = config["ingress"]
    assert [r["hostname"] for r in rules] == ["portal.example.com", "admin.example.com"]
    for rule in rules:
        assert rule["service"] == "http://127.0.0.1:8080"
        assert rule["originRequest"]["access"] == {"required": True, "teamName": "acme", "audTag": [AUD]}
    assert catch_all == {"service": "http_status:404"}
    assert "TunnelSecret" not in text and "c2VjcmV0" not in text


def test_render_publishes_the_status_page_on_its_own_hostname_behind_the_same_access(tmp_path):
    import re

    config = yaml.safe_load(tunnel.render_config(spec(tmp_path, status_hostname="status.example.com", status_port=9464)))
    *rules, catch_all = config["ingress"]
    assert [r["hostname"] for r in rules] == ["portal.example.com", "admin.example.com", "status.example.com"]
    status = rules[-1]
    assert status["service"] == "http://127.0.0.1:9464"
    for rule in rules:  # Access inside every rule, the status page's too
        assert rule["originRequest"]["access"] == {"required": True, "teamName": "acme", "audTag": [AUD]}
    assert catch_all == {"service": "http_status:404"}
    # the page (/, /status?page=2) reaches the supervisor; its /metrics falls through to the 404
    paths = [p for p in ("/", "/status", "/metrics", "/status/x") if re.search(status["path"], p)]
    assert paths == ["/", "/status"]
    path = tmp_path / "config.yml"
    tunnel.write_config(tunnel.render_config(spec(tmp_path, status_hostname="status.example.com", status_port=9464)),
                        path)
    assert tunnel.lint_file(path, cloudflared=None).findings == []


@pytest.mark.parametrize(
    "change, words",
    [
        ({"status_hostname": "portal.example.com"}, "also a portal hostname"),
        ({"status_hostname": "https://status.example.com"}, "status hostname"),
        ({"status_hostname": "*.example.com"}, "wildcard"),
        ({"status_port": 0}, "status page is off"),
        ({"status_port": 8080}, "also the portal"),
    ],
)
def test_render_refuses_a_status_page_it_could_not_publish(tmp_path, change, words):
    values = {"status_hostname": "status.example.com", "status_port": 9464, **change}
    with pytest.raises(BadInput, match=words):
        tunnel.render_config(spec(tmp_path, **values))


def test_what_render_writes_passes_lint(tmp_path):
    path = tmp_path / "config.yml"
    tunnel.write_config(tunnel.render_config(spec(tmp_path)), path)
    report = tunnel.lint_file(path, cloudflared=None)
    assert report.findings == []
    assert report.ok


def test_the_annotated_template_has_no_errors():
    report = tunnel.lint_file(REPO / "cloudflared" / "config.yml", cloudflared=None)
    assert report.errors == []


@pytest.mark.parametrize(
    "change, words",
    [
        ({"tunnel_id": "my-tunnel"}, "UUID"),
        ({"hostnames": ("portal.example.com:443",)}, "port"),
        ({"hostnames": ("https://portal.example.com",)}, "scheme"),
        ({"hostnames": ()}, "hostname"),
        ({"team_name": "acme team"}, "team"),
        ({"aud_tag": "not an aud"}, "AUD"),
        ({"protocol": "h2mux"}, "protocol"),
        ({"metrics_port": 8080}, "different ports"),
    ],
)
def test_render_refuses_values_cloudflared_or_access_would_reject(tmp_path, change, words):
    with pytest.raises(BadInput, match=words):
        tunnel.render_config(spec(tmp_path, **change))


# ---------------------------------------------------------------- lint


@pytest.fixture
def good(tmp_path) -> dict:
    return yaml.safe_load(tunnel.render_config(spec(tmp_path)))


def _top_level_access(c):
    c["originRequest"] = {"access": c["ingress"][0]["originRequest"]["access"]}
    for rule in c["ingress"]:
        rule.pop("originRequest", None)


TRAPS = {
    "top-level-access": (_top_level_access, "error"),
    "access-missing": (lambda c: c["ingress"][1].pop("originRequest"), "error"),
    "localhost-origin": (lambda c: c["ingress"][0].update(service="http://localhost:8080"), "warning"),
    "catch-all-missing": (lambda c: c["ingress"].pop(), "error"),
    "catch-all-misplaced": (lambda c: c["ingress"].insert(0, {"service": "http_status:404"}), "error"),
    "hostname-port": (lambda c: c["ingress"][0].update(hostname="portal.example.com:8443"), "error"),
    "unknown-key": (lambda c: c["ingress"][0]["originRequest"].update(conectTimeout="10s"), "warning"),
    "secret-in-config": (lambda c: c.update(token="eyJhIjoiYiJ9"), "error"),
    "access-aud-not-list": (lambda c: c["ingress"][0]["originRequest"]["access"].update(audTag=AUD), "error"),
    "access-no-team": (lambda c: c["ingress"][0]["originRequest"]["access"].pop("teamName"), "error"),
    "metrics-exposed": (lambda c: c.update(metrics="0.0.0.0:20241"), "warning"),
    "bad-service": (lambda c: c["ingress"][0].update(service="127.0.0.1:8080"), "error"),
}


@pytest.mark.parametrize("code", sorted(TRAPS))
def test_lint_catches_each_trap(good, code):
    mutate, severity = TRAPS[code]
    config = copy.deepcopy(good)
    mutate(config)
    found = codes(tunnel.lint_config(config))
    assert found.get(code) == severity, found


def test_top_level_access_is_flagged_even_though_each_rule_is_also_reported(good):
    config = copy.deepcopy(good)
    _top_level_access(config)
    found = tunnel.lint_config(config)
    # The rules look guarded to a reader but are not: both facts are reported.
    assert [f.where for f in found if f.name == "access-missing"] == ["ingress[0]", "ingress[1]"]
    assert "#784" in next(f.message for f in found if f.name == "top-level-access")


def test_unknown_top_level_key_is_a_warning_and_real_keys_are_not(good):
    config = copy.deepcopy(good)
    config.update({"loglevel": "info", "edge-ip-version": "auto", "retries": 5, "grace-period": "30s",
                   "warp-routing": {"enabled": False}, "ingres": []})
    found = tunnel.lint_config(config)
    assert [(f.name, f.where) for f in found] == [("unknown-key", "ingres")]


def test_no_require_access_relaxes_only_the_access_rule(good):
    config = copy.deepcopy(good)
    for rule in config["ingress"]:
        rule.pop("originRequest", None)
    assert "access-missing" in codes(tunnel.lint_config(config))
    assert tunnel.lint_config(config, require_access=False) == []


def test_a_catch_all_to_the_portal_is_still_guarded(good):
    config = copy.deepcopy(good)
    config["ingress"][-1] = {"service": "http://127.0.0.1:8080"}
    found = codes(tunnel.lint_config(config))
    assert found["access-missing"] == "error"
    assert found["catch-all-to-origin"] == "warning"


def test_bad_yaml_is_bad_input(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text("ingress:\n  - service: [unclosed\n")
    with pytest.raises(BadInput, match="invalid YAML"):
        tunnel.lint_file(path, cloudflared=None)
    path.write_text("- just a list\n")
    with pytest.raises(BadInput, match="mapping"):
        tunnel.lint_file(path, cloudflared=None)


# ---------------------------------------------------------------- credentials


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_credentials_pass(tmp_path, mode):
    tunnel.check_credentials_file(credentials(tmp_path, mode))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o700])
def test_credentials_readable_by_others_are_refused(tmp_path, mode):
    path = credentials(tmp_path, mode)
    with pytest.raises(BadInput, match=f"{mode:04o}.*chmod 600"):
        tunnel.check_credentials_file(path)


def test_missing_credentials_are_refused(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        tunnel.check_credentials_file(tmp_path / "nope.json")


def test_lint_checks_the_credentials_file_without_revealing_it(tmp_path):
    path = tmp_path / "config.yml"
    tunnel.write_config(tunnel.render_config(spec(tmp_path)), path)
    creds = tmp_path / f"{TUNNEL_ID}.json"
    creds.chmod(0o644)
    report = tunnel.lint_file(path, cloudflared=None)
    assert codes(report.findings) == {"credentials-mode": "error"}
    creds.chmod(0o600)
    credentials(tmp_path, tunnel_id="0b1c0cb4-6f5b-4a5e-9d7c-4c8e4c1f2a3b")  # another tunnel's file...
    os.replace(tmp_path / "0b1c0cb4-6f5b-4a5e-9d7c-4c8e4c1f2a3b.json", creds)  # ...under this tunnel's name
    report = tunnel.lint_file(path, cloudflared=None)
    assert codes(report.findings) == {"credentials-mismatch": "error"}
    assert "c2VjcmV0" not in json.dumps(report.as_dict())


# ---------------------------------------------------------------- the cloudflared seam


def fake_cloudflared(bin_dir: Path, exit_code: int, message: str) -> Path:
    """A stand-in for the cloudflared binary (not installable here): records argv, prints, exits."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "cloudflared"
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{bin_dir}/argv"\necho "{message}"\nexit {exit_code}\n')
    path.chmod(0o755)
    return path


def test_lint_includes_cloudflareds_own_validation(tmp_path):
    path = tmp_path / "config.yml"
    tunnel.write_config(tunnel.render_config(spec(tmp_path)), path)
    binary = fake_cloudflared(tmp_path / "bin", 0, "OK")
    report = tunnel.lint_file(path, cloudflared=str(binary))
    assert report.ok and report.cloudflared.ok
    assert (tmp_path / "bin" / "argv").read_text().split() == ["tunnel", "--config", str(path), "ingress", "validate"]

    binary = fake_cloudflared(tmp_path / "bin", 1, "Validation failed: Rule #2 has an invalid regex")
    report = tunnel.lint_file(path, cloudflared=str(binary))
    assert not report.ok
    assert report.cloudflared.returncode == 1
    assert "invalid regex" in next(f.message for f in report.errors if f.name == "cloudflared-validate")


def test_lint_without_cloudflared_installed_says_so(tmp_path):
    path = tmp_path / "config.yml"
    tunnel.write_config(tunnel.render_config(spec(tmp_path)), path)
    assert tunnel.lint_file(path, cloudflared=str(tmp_path / "no-such-binary")).cloudflared is None


# ---------------------------------------------------------------- what the supervisor calls


def test_cloudflared_argv_runs_the_config_in_the_foreground():
    argv = tunnel.cloudflared_argv("/opt/homebrew/bin/cloudflared", Path("/kit/cloudflared/config.yml"))
    assert argv == ["/opt/homebrew/bin/cloudflared", "tunnel", "--no-autoupdate", "--config",
                    "/kit/cloudflared/config.yml", "run"]


def test_supervisor_preflight_refuses_what_would_run_unguarded_or_leak(tmp_path, good):
    path = tmp_path / "config.yml"
    tunnel.write_config(tunnel.render_config(spec(tmp_path)), path)
    assert tunnel.check_config_for_supervisor(path, metrics_port=20241).ok
    with pytest.raises(BadInput, match="supervisor probes port 20999"):
        tunnel.check_config_for_supervisor(path, metrics_port=20999)

    (tmp_path / f"{TUNNEL_ID}.json").chmod(0o644)
    with pytest.raises(BadInput, match="chmod 600"):
        tunnel.check_config_for_supervisor(path)
    (tmp_path / f"{TUNNEL_ID}.json").unlink()
    with pytest.raises(BadInput, match="not found"):
        tunnel.check_config_for_supervisor(path)

    bad = copy.deepcopy(good)
    _top_level_access(bad)
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(BadInput, match=r"originRequest\.access.*#784.*and 2 more"):
        tunnel.check_config_for_supervisor(path)


@pytest.mark.parametrize(
    "address, url",
    [
        ("127.0.0.1:20241", "http://127.0.0.1:20241/ready"),
        ("localhost:20241", "http://127.0.0.1:20241/ready"),
        ("0.0.0.0:20241", "http://127.0.0.1:20241/ready"),
        (":20241", "http://127.0.0.1:20241/ready"),
        (20241, "http://127.0.0.1:20241/ready"),
        ("[::1]:20241", "http://[::1]:20241/ready"),
    ],
)
def test_ready_url(address, url):
    assert tunnel.ready_url(address) == url


def test_metrics_address_is_read_from_the_config(tmp_path):
    path = tmp_path / "config.yml"
    tunnel.write_config(tunnel.render_config(spec(tmp_path, metrics_port=20299)), path)
    assert tunnel.metrics_address(path) == "127.0.0.1:20299"
    path.write_text("tunnel: x\n")
    assert tunnel.metrics_address(path) is None
    path.write_text("metrics: nonsense\n")
    with pytest.raises(BadInput):
        tunnel.metrics_address(path)


# ---------------------------------------------------------------- CLI


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    monkeypatch.setenv("EDGEHOST_HOME", str(home))
    for name in ("EDGEHOST_ACCESS_TEAM", "EDGEHOST_ACCESS_AUD", "EDGEHOST_TUNNEL_ID", "EDGEHOST_TUNNEL_CONFIG",
                 "EDGEHOST_TUNNEL_CREDENTIALS", "EDGEHOST_TUNNEL_HOSTNAMES", "EDGEHOST_PORTAL_PORT",
                 "EDGEHOST_METRICS_PORT", "EDGEHOST_TUNNEL_STATUS_HOSTNAME"):
        monkeypatch.delenv(name, raising=False)
    return home


def render_args(home: Path, *extra: str) -> list[str]:
    creds = credentials(home)
    return ["tunnel", "render", "--tunnel-id", TUNNEL_ID, "--credentials-file", str(creds),
            "--hostname", "portal.example.com", "--team", "acme", "--aud", AUD, *extra]


def test_cli_render_then_lint(home, capsys):
    out = home / "cloudflared" / "config.yml"
    assert main(render_args(home, "-o", str(out))) == ExitStatus.OK
    assert main(["tunnel", "lint", "--skip-cloudflared"]) == ExitStatus.OK  # the settings' default path
    capsys.readouterr()
    assert main(["tunnel", "lint", str(out), "--json", "--skip-cloudflared"]) == ExitStatus.OK
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["errors"] == 0 and report["findings"] == []


def test_cli_render_adds_the_status_page_on_the_kits_metrics_port(home, capsys, monkeypatch):
    monkeypatch.setenv("EDGEHOST_METRICS_PORT", "9555")
    assert main(render_args(home, "--status-hostname", "status.example.com")) == ExitStatus.OK
    rules = yaml.safe_load(capsys.readouterr().out)["ingress"]
    status = next(r for r in rules if r.get("hostname") == "status.example.com")
    assert status["service"] == "http://127.0.0.1:9555"
    assert all(r["originRequest"]["access"]["required"] is True for r in rules[:-1])
    assert main(render_args(home)) == ExitStatus.OK
    assert "status.example.com" not in capsys.readouterr().out  # off unless asked
    monkeypatch.setenv("EDGEHOST_METRICS_PORT", "0")
    assert main(render_args(home, "--status-hostname", "status.example.com")) == ExitStatus.BAD_INPUT


def test_cli_render_refuses_to_overwrite_without_force(home):
    out = home / "config.yml"
    out.write_text("# hand-edited\n")
    assert main(render_args(home, "-o", str(out))) == ExitStatus.BAD_INPUT
    assert out.read_text() == "# hand-edited\n"
    assert main(render_args(home, "-o", str(out), "--force")) == ExitStatus.OK
    assert yaml.safe_load(out.read_text())["tunnel"] == TUNNEL_ID


def test_cli_render_to_stdout_reads_access_from_the_environment(home, capsys, monkeypatch):
    monkeypatch.setenv("EDGEHOST_ACCESS_TEAM", "acme")
    monkeypatch.setenv("EDGEHOST_ACCESS_AUD", AUD)
    monkeypatch.setenv("EDGEHOST_PORTAL_PORT", "8123")
    args = ["tunnel", "render", "--tunnel-id", TUNNEL_ID, "--credentials-file", str(credentials(home)),
            "--hostname", "portal.example.com"]
    assert main(args) == ExitStatus.OK
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["ingress"][0]["service"] == "http://127.0.0.1:8123"
    assert config["ingress"][0]["originRequest"]["access"]["teamName"] == "acme"
    monkeypatch.delenv("EDGEHOST_ACCESS_AUD")
    assert main(args) == ExitStatus.BAD_INPUT


def test_cli_lint_exit_codes(home, capsys, good):
    path = home / "config.yml"
    bad = copy.deepcopy(good)
    _top_level_access(bad)
    path.write_text(yaml.safe_dump(bad))
    assert main(["tunnel", "lint", str(path), "--skip-cloudflared"]) == ExitStatus.CHECK_FAILED
    assert main(["tunnel", "lint", str(path), "--json", "--skip-cloudflared"]) == ExitStatus.CHECK_FAILED
    report = json.loads(capsys.readouterr().out)
    assert {f["name"] for f in report["findings"]} >= {"top-level-access", "access-missing"}

    warn_only = copy.deepcopy(good)
    warn_only["ingress"][0]["service"] = "http://localhost:8080"
    path.write_text(yaml.safe_dump(warn_only))
    assert main(["tunnel", "lint", str(path), "--skip-cloudflared"]) == ExitStatus.OK

    path.write_text("ingress: [\n")
    assert main(["tunnel", "lint", str(path), "--skip-cloudflared"]) == ExitStatus.BAD_INPUT
    assert main(["tunnel", "lint", str(home / "missing.yml"), "--skip-cloudflared"]) == ExitStatus.BAD_INPUT


def test_cli_lint_runs_cloudflared_from_path(home, monkeypatch, good, tmp_path):
    path = home / "config.yml"
    path.write_text(yaml.safe_dump(good))
    fake_cloudflared(tmp_path / "bin", 1, "Validation failed: boom")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert main(["tunnel", "lint", str(path)]) == ExitStatus.CHECK_FAILED
    assert main(["tunnel", "lint", str(path), "--skip-cloudflared"]) == ExitStatus.OK



# ---------------------------------------------------------------- render, lint and `up` agree on the metrics port
# A user rendered with --metrics-port 20300: lint said 0 errors and `edgehost up` refused the config.


def run_cli(home: Path, *args: str, env: dict | None = None):
    """`edgehost ARGS` as a user runs it: a real process in the kit's home."""
    environ = {**os.environ, "EDGEHOST_HOME": str(home), **(env or {})}
    for name in ("EDGEHOST_TUNNEL_CONFIG", "EDGEHOST_SETTINGS", "EDGEHOST_ENV_FILE", "EDGEHOST_PORTAL_PORT"):
        environ.pop(name, None)
    return subprocess.run([sys.executable, "-m", "edgehost", *args], cwd=home, env=environ, capture_output=True,
                          text=True, timeout=120)


def test_render_lint_and_the_supervisor_agree_on_the_metrics_port(home):
    out = home / "cloudflared" / "config.yml"
    args = render_args(home, "-o", str(out))[:]

    refused = run_cli(home, *args, "--metrics-port", "20300")
    assert refused.returncode == ExitStatus.BAD_INPUT
    message = refused.stderr.strip()
    assert "\n" not in message, message  # one line
    assert message.startswith("error: --metrics-port 20300 is not tunnel.metrics_port (20241)")
    assert "set metrics_port = 20300 in the tunnel section of edgehost.toml" in message and "drop --metrics-port" in message
    assert "EDGEHOST_METRICS_PORT is the kit's own metrics server" in message  # the env var that is NOT it
    assert not out.exists()

    # The same port as the setting is accepted; so is no flag at all (the default is the setting).
    assert run_cli(home, *args, "--metrics-port", "20241").returncode == ExitStatus.OK
    assert yaml.safe_load(out.read_text())["metrics"] == "127.0.0.1:20241"
    assert run_cli(home, "tunnel", "lint", "--skip-cloudflared").returncode == ExitStatus.OK

    # Change the setting instead, as the message says: render follows it, and the old config no longer lints.
    (home / "edgehost.toml").write_text("[tunnel]\nmetrics_port = 20300\n")
    linted = run_cli(home, "tunnel", "lint", "--skip-cloudflared", "--json")
    assert linted.returncode == ExitStatus.CHECK_FAILED
    finding = next(f for f in json.loads(linted.stdout)["findings"] if f["name"] == "metrics-port-mismatch")
    assert finding["level"] == "fail" and finding["where"] == "metrics"
    # ... in the very words `edgehost up` refuses it with.
    with pytest.raises(BadInput) as refusal:
        tunnel.check_config_for_supervisor(out, metrics_port=20300)
    assert str(refusal.value) == f"{out}: {finding['message']}"
    assert finding["message"] == ("metrics is 127.0.0.1:20241, but the supervisor probes port 20300 "
                                  "(tunnel.metrics_port); set metrics: 127.0.0.1:20300")
    human = run_cli(home, "tunnel", "lint", "--skip-cloudflared")
    assert human.returncode == ExitStatus.CHECK_FAILED and "1 error(s)" in human.stderr

    assert run_cli(home, *args, "--force", "--metrics-port", "20300").returncode == ExitStatus.OK
    assert yaml.safe_load(out.read_text())["metrics"] == "127.0.0.1:20300"
    assert run_cli(home, "tunnel", "lint", "--skip-cloudflared").returncode == ExitStatus.OK
    tunnel.check_config_for_supervisor(out, metrics_port=20300)


def test_lint_with_the_settings_makes_a_missing_metrics_address_an_error(good):
    config = copy.deepcopy(good)
    del config["metrics"]
    assert codes(tunnel.lint_config(config)) == {"no-metrics": "warning"}  # no settings: only a warning
    found = tunnel.lint_config(config, metrics_port=20241)
    assert codes(found) == {"no-metrics": "error"}  # the supervisor refuses it
    assert found[0].message == "metrics is not set, but the supervisor probes port 20241 (tunnel.metrics_port); " \
                               "set metrics: 127.0.0.1:20241"
    config["metrics"] = "0.0.0.0:20241"  # exposed, but where the probe finds it
    assert codes(tunnel.lint_config(config, metrics_port=20241)) == {"metrics-exposed": "warning"}


# ---------------------------------------------------------------- a missing cloudflared with the tunnel enabled


def tunnel_settings(home: Path, binary: str, path: str, enabled: bool = True):
    (home / "edgehost.toml").write_text(f"[tunnel]\nenabled = {'true' if enabled else 'false'}\nbinary = '{binary}'\n")
    return load_settings(home, {"EDGEHOST_HOME": str(home), "PATH": path})


def stand_in(bin_dir: Path, body: str, mode: int = 0o755) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "cloudflared"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


def test_cloudflared_problem_names_what_is_wrong_in_one_line(home, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    settings = tunnel_settings(home, "cloudflared", str(bin_dir))
    problem = tunnel.cloudflared_problem(settings)
    assert problem == (f"cloudflared not found: tunnel.binary is 'cloudflared' and no such program is on PATH ({bin_dir}); "
                       f"the tunnel stays down until it is fixed: {tunnel.CLOUDFLARED_FIX}")
    assert "brew install cloudflared" in problem and "\n" not in problem

    # The tunnel disabled: nothing to say, whatever the binary.
    assert tunnel.cloudflared_problem(tunnel_settings(home, "cloudflared", str(bin_dir), enabled=False)) is None

    binary = stand_in(bin_dir, 'echo "cloudflared version 2025.1.0 (built 2025-01-10)"', mode=0o644)
    assert tunnel.cloudflared_problem(settings).startswith(f"cloudflared at {binary} (tunnel.binary) is not an executable")

    binary.chmod(0o755)
    assert tunnel.cloudflared_problem(settings) is None
    assert tunnel.check_cloudflared(settings) == (binary, "cloudflared version 2025.1.0 (built 2025-01-10)")

    stand_in(bin_dir, 'echo "dyld: Library not loaded: libresolv" >&2; exit 134')
    assert tunnel.cloudflared_problem(settings).startswith(
        f"`{binary} --version` exited 134: dyld: Library not loaded: libresolv;")

    binary.write_bytes(b"\xcf\xfa\xed\xfe not a program for this machine")  # e.g. the wrong architecture
    assert "cannot run" in tunnel.cloudflared_problem(settings)

    # A path in tunnel.binary: absolute, or relative to the kit's home (as the supervisor runs it).
    assert tunnel.cloudflared_problem(tunnel_settings(home, "/opt/nowhere/cloudflared", str(bin_dir))).startswith(
        "cloudflared not found: tunnel.binary is /opt/nowhere/cloudflared, which does not exist;")
    stand_in(home / "bin", 'echo "cloudflared version 2025.1.0"')
    assert tunnel.cloudflared_problem(tunnel_settings(home, "bin/cloudflared", "")) is None
