"""systemd units for Linux and `edgehost systemd render|install` through the systemctl seam."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgehost.cli.systemd_cmd  # noqa: F401  (registers `edgehost systemd`)
from edgehost.deploy import systemd
from edgehost.cli import main
from edgehost.deploy.launchd import Deployment

SECRET = "s3cr3t-value-that-must-not-leak"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}} (keys may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"key outside a section: {line}"
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture
def home_env(kit_home, monkeypatch):
    env_file = kit_home.path / "edgehost.env"
    env_file.write_text(f"AWS_SECRET_ACCESS_KEY={SECRET}\n")
    env_file.chmod(0o600)
    for key, value in kit_home.env.items():
        monkeypatch.setenv(key, value)
    return kit_home


def _dep(home, user: str = "edgehost", group: str | None = None) -> Deployment:
    return Deployment.from_settings(home.settings(), user, group)


def test_supervisor_unit_follows_the_rules(home_env):
    settings = home_env.settings()
    dep = _dep(home_env)
    text = systemd.supervisor_unit(dep)
    unit = parse_unit(text)
    svc = unit["Service"]
    assert svc["Restart"] == ["on-failure"]
    assert int(svc["TimeoutStopSec"][0]) >= 60
    assert svc["KillMode"] == ["mixed"]  # SIGTERM to the supervisor only; it stops its children in order
    assert svc["NoNewPrivileges"] == ["yes"]
    assert svc["ProtectSystem"] == ["strict"]
    writable = svc["ReadWritePaths"][0].split()
    replica_dir = settings.data_dir.parent / "replica"  # the default file:// replica
    assert writable == [str(settings.data_dir), str(settings.state_dir), str(settings.log_dir), str(replica_dir)]
    assert svc["EnvironmentFile"] == [str(settings.env_file)]
    assert f"EDGEHOST_ENV_FILE={settings.env_file}" in svc["Environment"]
    assert f"EDGEHOST_HOME={settings.home}" in svc["Environment"]
    assert svc["User"] == ["edgehost"] and svc["Group"] == ["edgehost"]
    assert svc["ExecStart"] == [f"{dep.program} up"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert SECRET not in text


def test_an_s3_replica_adds_no_writable_path(s3_home):
    settings = s3_home.settings()
    svc = parse_unit(systemd.supervisor_unit(_dep(s3_home)))["Service"]
    assert svc["ReadWritePaths"][0].split() == [str(settings.data_dir), str(settings.state_dir), str(settings.log_dir)]
    assert "EnvironmentFile" not in svc  # no env file in this home: nothing to point at


def test_drill_timer_and_service(home_env):
    settings = home_env.settings()
    dep = _dep(home_env)
    timer = parse_unit(systemd.drill_timer())
    assert timer["Timer"]["OnCalendar"] == ["*-*-01 03:30:00"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Timer"]["Unit"] == [systemd.DRILL_SERVICE]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    svc = parse_unit(systemd.drill_service(dep))["Service"]
    assert svc["Type"] == ["oneshot"]
    assert svc["ExecStart"] == [f"{dep.program} drill --report {settings.state_dir / 'drills' / 'latest.md'}"]
    assert svc["ProtectSystem"] == ["strict"] and svc["NoNewPrivileges"] == ["yes"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_analyze_verify_accepts_the_units(home_env, tmp_path):
    for name, text in systemd.render(_dep(home_env)).items():
        (tmp_path / name).write_text(text)
    names = [str(tmp_path / n) for n in systemd.render(_dep(home_env))]
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *names], capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for problem in ("Unknown key", "Unknown section", "Failed to parse", "Invalid", "not executable"):
        assert problem not in output, output


def test_render_command_writes_the_units(home_env, tmp_path, capsys):
    assert main(["systemd", "render", "--out", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(Path(f["path"]).name for f in data["files"]) == sorted(
        [systemd.SUPERVISOR_UNIT, systemd.DRILL_SERVICE, systemd.DRILL_TIMER])
    assert {f["installs_to"] for f in data["files"]} >= {"/etc/systemd/system/edgehost.service"}
    for f in data["files"]:
        assert SECRET not in Path(f["path"]).read_text()


def _args(tmp_path: Path) -> list[str]:
    return ["--user", "nobody", "--group", "nogroup", "--unit-dir", str(tmp_path / "units")]


def test_install_dry_run_prints_the_commands_in_order(home_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(systemd, "systemctl", lambda *a: pytest.fail(f"systemctl {a} ran in a dry run"))
    assert main(["systemd", "install", "--dry-run", *_args(tmp_path)]) == 0
    lines = capsys.readouterr().err.splitlines()
    units = tmp_path / "units"
    assert lines[-5:] == [
        f"write {units}/edgehost.service (mode 0644)",
        f"write {units}/edgehost-drill.service (mode 0644)",
        f"write {units}/edgehost-drill.timer (mode 0644)",
        "systemctl daemon-reload",
        "systemctl enable --now edgehost.service edgehost-drill.timer",
    ]
    assert all(ln.startswith("install -d -m 0700 -o nobody -g nogroup ") for ln in lines[:-5])
    assert not units.exists()


def test_install_writes_units_then_reloads_and_enables(home_env, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(systemd, "systemctl", lambda *a: calls.append(a) or (0, ""))
    assert main(["systemd", "install", *_args(tmp_path)]) == 0
    assert calls == [("daemon-reload",), ("enable", "--now", "edgehost.service", "edgehost-drill.timer")]
    unit = tmp_path / "units" / "edgehost.service"
    assert unit.stat().st_mode & 0o777 == 0o644
    assert parse_unit(unit.read_text())["Service"]["User"] == ["nobody"]
    settings = home_env.settings()
    for d in (settings.data_dir, settings.state_dir, settings.log_dir):
        assert d.is_dir() and d.stat().st_uid == 65534  # ReadWritePaths= needs them to exist


def test_a_failing_systemctl_is_an_environment_problem(home_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(systemd, "systemctl", lambda *a: (1, "Failed to enable unit: Access denied"))
    assert main(["systemd", "install", *_args(tmp_path)]) == 3
    assert "Access denied" in capsys.readouterr().err


# --- the unit never gives up (a power cut, then half a minute without network) ---------------


def start_limit_outcome(unit: dict, outage: float, fail_after: float = 1.0, horizon: float = 3600.0) -> tuple[str, list[float]]:
    """What systemd does with this unit while every start fails for `outage` seconds, then succeeds.

    A model of systemd's start rate limit (ratelimit_below: at most StartLimitBurst starts per
    StartLimitIntervalSec window, 0 disables it; automatic restarts count) and of the restart delay
    (RestartSec, growing to RestartMaxDelaySec in RestartSteps exponential steps). Returns "running" or
    "failed" (start-limit-hit: systemd stops for good) and the start times.
    """
    interval = float(unit["Unit"].get("StartLimitIntervalSec", ["10"])[0])
    burst = int(unit["Unit"].get("StartLimitBurst", ["5"])[0])
    svc = unit["Service"]
    base = float(svc["RestartSec"][0])
    steps = int(svc.get("RestartSteps", ["0"])[0])
    cap = float(svc.get("RestartMaxDelaySec", [str(base)])[0])
    t, begin, count, starts = 0.0, None, 0, []
    while t <= horizon:
        if interval > 0 and burst > 0:
            if begin is None or t - begin > interval:
                begin, count = t, 0
            count += 1
            if count > burst:
                return "failed", starts
        starts.append(t)
        if t >= outage:
            return "running", starts
        i = len(starts) - 1  # restarts scheduled so far
        delay = base if not steps or cap <= base else base * (cap / base) ** (min(i, steps) / steps)
        t += fail_after + delay
    return "failing", starts


OLD_UNIT = {"Unit": {"StartLimitIntervalSec": ["300"], "StartLimitBurst": ["5"]},
            "Service": {"Restart": ["on-failure"], "RestartSec": ["5"]}}


@pytest.mark.parametrize("backoff", [False, True])
def test_a_network_outage_after_a_power_cut_never_leaves_the_unit_failed(home_env, tmp_path, backoff):
    # What the user hit: `edgehost up` exited 3 at each start while the replica was unreachable; with
    # 5 starts per 300 s allowed, a 25 s outage used them up and systemd gave up for good.
    assert start_limit_outcome(OLD_UNIT, outage=25)[0] == "failed"

    text = systemd.supervisor_unit(_dep(home_env), backoff=backoff)
    unit = parse_unit(text)
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"] and "StartLimitBurst" not in unit["Unit"]
    assert unit["Service"]["Restart"] == ["on-failure"]
    for outage in (25, 600, 6 * 3600):
        outcome, starts = start_limit_outcome(unit, outage=outage, horizon=outage + 120)
        assert outcome == "running", (outage, starts)
        assert starts[-1] - outage <= 61  # back within a minute of the network
    # The rendered unit says why, next to the setting.
    comment = text[text.index("[Unit]"):text.index("StartLimitIntervalSec=0")]
    assert "# Never give up restarting" in comment and "power cut" in comment and "failed for good" in comment

    if backoff:  # systemd >= 254: the wait grows from 5 s to a minute
        assert unit["Service"]["RestartSec"] == ["5"]
        assert unit["Service"]["RestartSteps"] == ["4"] and unit["Service"]["RestartMaxDelaySec"] == ["60"]
        _, starts = start_limit_outcome(unit, outage=600)
        gaps = [round(b - a - 1) for a, b in zip(starts, starts[1:])]
        assert gaps[:6] == [5, 9, 17, 32, 60, 60]
    else:  # older systemd does not know those keys (it would warn "Unknown key" at every boot)
        assert "RestartSteps" not in unit["Service"] and "RestartMaxDelaySec" not in unit["Service"]


@pytest.mark.parametrize("version, backoff", [(255, True), (254, True), (252, False), (None, False)])
def test_backoff_is_written_only_for_a_systemd_that_knows_it(home_env, monkeypatch, version, backoff):
    monkeypatch.setattr(systemd, "installed_version", lambda: version)
    svc = parse_unit(systemd.render(_dep(home_env))[systemd.SUPERVISOR_UNIT])["Service"]
    assert ("RestartSteps" in svc) is backoff


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl is not installed")
def test_installed_version_reads_systemctl():
    out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=30).stdout
    assert systemd.installed_version() == int(out.split()[1])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_analyze_verify_accepts_the_never_give_up_unit_with_the_cli(home_env, tmp_path):
    # `edgehost systemd render` as a user runs it (a real process), then systemd's own parser on the result.
    out = tmp_path / "units"
    env = {**os.environ, **home_env.env}
    done = subprocess.run([sys.executable, "-m", "edgehost", "systemd", "render", "--out", str(out), "--user", "daemon"],
                          env=env, cwd=home_env.path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    unit = out / systemd.SUPERVISOR_UNIT
    assert "StartLimitIntervalSec=0" in unit.read_text().splitlines()
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for problem in ("Unknown key", "Unknown section", "Failed to parse", "Invalid", "not executable"):
        assert problem not in output, output


# --- uninstall, restart, status (as launchd has them) ----------------------------------------


def test_uninstall_stops_disables_removes_the_units_and_keeps_the_data(home_env, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(systemd, "systemctl", lambda *a: calls.append(a) or (0, ""))
    assert main(["systemd", "install", *_args(tmp_path)]) == 0
    settings = home_env.settings()
    (settings.data_dir / "keep.txt").write_text("data")
    calls.clear()
    units = tmp_path / "units"
    assert main(["systemd", "uninstall", "--unit-dir", str(units)]) == 0
    assert calls == [("disable", "--now", "edgehost.service", "edgehost-drill.timer"), ("daemon-reload",)]
    assert not any(units.iterdir())
    assert (settings.data_dir / "keep.txt").read_text() == "data"
    # Twice is safe: systemd says the units are not loaded (exit 5), the files are already gone.
    monkeypatch.setattr(systemd, "systemctl", lambda *a: (5, "Unit edgehost.service not loaded.") if a[0] == "disable"
                        else (0, ""))
    capsys.readouterr()
    assert main(["systemd", "uninstall", "--unit-dir", str(units), "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert [s["note"] for s in steps] == ["not loaded", "not there", "not there", "not there", ""]


def test_uninstall_dry_run_changes_nothing(home_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(systemd, "systemctl", lambda *a: (0, ""))
    assert main(["systemd", "install", *_args(tmp_path)]) == 0
    monkeypatch.setattr(systemd, "systemctl", lambda *a: pytest.fail(f"systemctl {a} ran in a dry run"))
    capsys.readouterr()
    assert main(["systemd", "uninstall", "--dry-run", "--unit-dir", str(tmp_path / "units")]) == 0
    assert capsys.readouterr().err.splitlines()[0] == \
        "systemctl disable --now edgehost.service edgehost-drill.timer  (dry run)"
    assert (tmp_path / "units" / "edgehost.service").exists()


def test_restart_and_a_refused_restart(home_env, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(systemd, "systemctl", lambda *a: calls.append(a) or (0, ""))
    assert main(["systemd", "restart"]) == 0 and calls == [("restart", "edgehost.service")]
    monkeypatch.setattr(systemd, "systemctl", lambda *a: (1, "Failed to restart edgehost.service: Access denied"))
    assert main(["systemd", "restart"]) == 3
    assert "Access denied" in capsys.readouterr().err


SHOW = {"edgehost.service": "LoadState=loaded\nActiveState={state}\nUnitFileState=enabled\nMainPID={pid}\nResult={result}",
        "edgehost-drill.timer": "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nMainPID=0\nResult=success"}


@pytest.mark.parametrize("state,pid,result,code", [("active", 4242, "success", 0), ("failed", 0, "exit-code", 1)])
def test_status_says_whether_the_supervisor_runs(home_env, monkeypatch, capsys, state, pid, result, code):
    monkeypatch.setattr(systemd, "systemctl",
                        lambda *a: (0, SHOW[a[1]].format(state=state, pid=pid, result=result)))
    assert main(["systemd", "status", "--json"]) == code
    report = json.loads(capsys.readouterr().out)
    service, timer = report["units"]
    assert report["ok"] is (code == 0) and service["active"] == state and service["main_pid"] == (pid or None)
    assert timer["unit"] == "edgehost-drill.timer" and timer["enabled"] == "enabled"


def test_launchd_and_systemd_run_the_same_program_home_and_env_file(home_env, tmp_path):
    """One deployment description feeds both: the plist and the unit must agree on what runs and where."""
    import plistlib

    from edgehost.deploy import launchd
    from edgehost.deploy.deployment import Deployment

    env_file = home_env.path / "edgehost.env"
    env_file.write_text("AWS_SECRET_ACCESS_KEY=x\n")
    env_file.chmod(0o600)
    dep = Deployment.from_settings(home_env.settings(), "nobody", "nogroup")
    plists = {f.name: plistlib.loads(f.content) for f in launchd.render(dep, tmp_path / "d", tmp_path / "n")
              if f.kind == "plist"}
    job = plists[f"{launchd.SUPERVISOR_LABEL}.plist"]
    unit = parse_unit(systemd.render(dep)["edgehost.service"])["Service"]
    env = dict(e.split("=", 1) for e in unit["Environment"])
    assert unit["ExecStart"] == [" ".join(job["ProgramArguments"])]
    assert env["EDGEHOST_HOME"] == job["EnvironmentVariables"]["EDGEHOST_HOME"] == str(home_env.path)
    assert env["EDGEHOST_ENV_FILE"] == job["EnvironmentVariables"]["EDGEHOST_ENV_FILE"] == str(env_file)
    assert unit["User"] == [job["UserName"]] == ["nobody"]
    assert unit["LimitNOFILE"] == [str(job["SoftResourceLimits"]["NumberOfFiles"])]


def test_a_standby_runs_follow_instead_of_up(home_env, tmp_path, capsys):
    assert main(["systemd", "render", "--standby", "--out", str(tmp_path), "--json"]) == 0
    capsys.readouterr()
    unit = parse_unit((tmp_path / systemd.SUPERVISOR_UNIT).read_text())
    assert unit["Service"]["ExecStart"][0].endswith("edgehost follow")
    assert main(["systemd", "render", "--out", str(tmp_path), "--json"]) == 0
    unit = parse_unit((tmp_path / systemd.SUPERVISOR_UNIT).read_text())
    assert unit["Service"]["ExecStart"][0].endswith("edgehost up")
