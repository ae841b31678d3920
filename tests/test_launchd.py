"""launchd plists, the newsyslog entry, `edgehost launchd ...` through the launchctl seam, and the
Mac bootstrap script."""

from __future__ import annotations

import json
import os
import plistlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import edgehost.cli.launchd_cmd  # noqa: F401  (registers `edgehost launchd`)
from edgehost.deploy import launchd
from edgehost.cli import main
from edgehost.errors import BadInput
from edgehost.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-value-that-must-not-leak"
IO_ERROR = "Bootstrap failed: 5: Input/output error\nTry re-running the command as root for richer errors."

# The layout deploy/bootstrap-mac.sh creates; the examples in launchd/ are rendered for it.
EXAMPLE = launchd.Deployment(
    home=Path("/opt/edgehost"),
    data_dir=Path("/opt/edgehost/data"),
    state_dir=Path("/opt/edgehost/state"),
    log_dir=Path("/opt/edgehost/state/logs"),
    env_file=Path("/opt/edgehost/edgehost.env"),
    program=Path("/opt/edgehost/venv/bin/edgehost"),
    user="_edgehost",
    group="_edgehost",
)


class FakeLaunchctl:
    """Stands in for launchctl: records every call, answers from a script of (match, rc, output)."""

    def __init__(self, answers: list[tuple[str, int, str]] | None = None):
        self.calls: list[tuple[str, ...]] = []
        self.answers = list(answers or [])

    def __call__(self, *args: str) -> launchd.CommandResult:
        self.calls.append(args)
        line = " ".join(args)
        for i, (match, rc, output) in enumerate(self.answers):
            if line.startswith(match):
                del self.answers[i]
                return launchd.CommandResult(("launchctl", *args), rc, output)
        return launchd.CommandResult(("launchctl", *args), 0, "")

    @property
    def lines(self) -> list[str]:
        return ["launchctl " + " ".join(c) for c in self.calls]


@pytest.fixture
def fake(monkeypatch) -> FakeLaunchctl:
    fake = FakeLaunchctl()
    monkeypatch.setattr(launchd, "launchctl", fake)
    monkeypatch.setattr(launchd, "RETRY_DELAY", 0)
    return fake


@pytest.fixture
def home_env(kit_home, monkeypatch):
    """kit_home with a 0600 env file holding a secret, exported the way the CLI reads it."""
    env_file = kit_home.path / "edgehost.env"
    env_file.write_text(f"AWS_SECRET_ACCESS_KEY={SECRET}\nTUNNEL_TOKEN={SECRET}-tunnel\n")
    env_file.chmod(0o600)
    for key, value in kit_home.env.items():
        monkeypatch.setenv(key, value)
    return kit_home


def _dep(home, **kw) -> launchd.Deployment:
    return launchd.Deployment.from_settings(home.settings(), **kw)


# --- rendering ------------------------------------------------------------------------------


def test_supervisor_plist_follows_the_rules(home_env):
    dep = _dep(home_env)
    data = launchd.render_plist(launchd.supervisor_job(dep))
    job = plistlib.loads(data)
    settings = home_env.settings()
    assert job["Label"] == launchd.SUPERVISOR_LABEL
    assert job["UserName"] == "_edgehost" and job["GroupName"] == "_edgehost"
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["ExitTimeOut"] >= 60  # launchd's default 20 s kills litestream before its final sync
    assert job["ThrottleInterval"] >= 10
    assert job["ProcessType"] == "Standard"
    assert job["ProgramArguments"] == [str(dep.program), "up"]
    assert Path(job["ProgramArguments"][0]).name == "edgehost" and Path(job["ProgramArguments"][0]).is_file()
    assert job["WorkingDirectory"] == str(settings.home)
    env = job["EnvironmentVariables"]
    assert env["EDGEHOST_HOME"] == str(settings.home)
    assert env["EDGEHOST_ENV_FILE"] == str(settings.env_file)
    assert env["PATH"].split(":")[0] == str(dep.program.parent)
    assert "/opt/homebrew/bin" in env["PATH"].split(":") and "/usr/bin" in env["PATH"].split(":")
    assert Path(job["StandardErrorPath"]).parent == settings.log_dir / "launchd"
    assert job["StandardOutPath"] == "/dev/null"  # every stdout line is in the per-service log files
    assert job["Umask"] == 0o077
    assert SECRET.encode() not in data
    assert b"LaunchDaemon, not a LaunchAgent" in data and b"power cut" in data  # the why, in the file


def test_drill_plist_runs_monthly_with_a_report(home_env):
    dep = _dep(home_env)
    job = plistlib.loads(launchd.render_plist(launchd.drill_job(dep)))
    settings = home_env.settings()
    assert job["StartCalendarInterval"] == {"Day": 1, "Hour": 3, "Minute": 30}
    assert job["ProgramArguments"] == [str(dep.program), "drill", "--report",
                                       str(settings.state_dir / "drills" / "latest.md")]
    assert job["UserName"] == "_edgehost"
    assert job.get("RunAtLoad") is False and "KeepAlive" not in job
    assert job["EnvironmentVariables"]["EDGEHOST_ENV_FILE"] == str(settings.env_file)


def test_exit_timeout_grows_with_the_kits_own_stop_timeouts(kit_home):
    (kit_home.path / "edgehost.toml").write_text("litestream_stop_timeout = 120\n")
    dep = _dep(kit_home)
    assert dep.stop_timeout == 10 + 120 + 30
    assert plistlib.loads(launchd.render_plist(launchd.supervisor_job(dep)))["ExitTimeOut"] == dep.stop_timeout


def test_no_env_file_means_no_env_file_variable(kit_home):
    job = launchd.supervisor_job(_dep(kit_home))
    assert "EDGEHOST_ENV_FILE" not in job["EnvironmentVariables"]


def test_newsyslog_entry_rotates_the_log_dir_and_signals_the_supervisor(home_env):
    dep = _dep(home_env)
    settings = home_env.settings()
    rows = [ln.split() for ln in launchd.render_newsyslog(dep).splitlines() if ln and not ln.startswith("#")]
    main_row, launchd_row = rows
    assert main_row[0] == f"{settings.log_dir}/*.log"
    assert main_row[1] == "_edgehost:_edgehost" and main_row[2] == "600"
    assert "G" in main_row[6] and "Z" in main_row[6]
    assert main_row[7] == str(settings.pid_file) and main_row[8] == "1"  # SIGHUP: the supervisor reopens its logs
    assert launchd_row[0] == f"{settings.log_dir}/launchd/*.log"
    assert "N" in launchd_row[6] and "Z" not in launchd_row[6] and len(launchd_row) == 7


@pytest.mark.parametrize("user", ["root", ""])
def test_root_is_refused(kit_home, user):
    with pytest.raises(BadInput, match="unprivileged"):
        _dep(kit_home, user=user)


def test_paths_with_spaces_are_refused(tmp_path):
    home = tmp_path / "my kit"
    home.mkdir()
    shutil.copy(REPO / "litestream.yml", home / "litestream.yml")
    with pytest.raises(BadInput, match="spaces"):
        launchd.Deployment.from_settings(load_settings(home, {}))


@pytest.mark.skipif(shutil.which("plutil") is None, reason="plutil exists only on macOS")
def test_plutil_accepts_the_plists(home_env, tmp_path):
    for f in launchd.render(_dep(home_env)):
        if f.kind == "plist":
            path = tmp_path / f.name
            path.write_bytes(f.content)
            subprocess.run(["plutil", "-lint", str(path)], check=True)


def test_the_examples_in_the_repo_are_what_the_code_renders():
    """launchd/ holds the files rendered for the bootstrap's layout; EDGEHOST_UPDATE_EXAMPLES=1 rewrites them."""
    for f in launchd.render(EXAMPLE):
        path = REPO / "launchd" / launchd.example_name(f)
        if os.environ.get("EDGEHOST_UPDATE_EXAMPLES"):
            path.write_bytes(f.content)
        assert path.read_bytes() == f.content, f"{path} is stale: run EDGEHOST_UPDATE_EXAMPLES=1 pytest {__file__}"


def test_render_command_writes_the_three_files(home_env, tmp_path, capsys):
    out = tmp_path / "rendered"
    assert main(["launchd", "render", "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = sorted(Path(f["path"]).name for f in data["files"])
    assert names == ["com.edgehost.drill.plist", "com.edgehost.supervisor.plist", "edgehost.newsyslog.conf"]
    for f in data["files"]:
        assert SECRET not in Path(f["path"]).read_text()
    assert plistlib.loads((out / "com.edgehost.supervisor.plist").read_bytes())["UserName"] == "_edgehost"
    installs = {f["installs_to"] for f in data["files"]}
    assert "/Library/LaunchDaemons/com.edgehost.supervisor.plist" in installs
    assert "/etc/newsyslog.d/edgehost.conf" in installs


# --- install / uninstall / restart / status through the seam -------------------------------


def _install_args(tmp_path: Path) -> list[str]:
    return ["--user", "nobody", "--group", "nogroup",
            "--daemons-dir", str(tmp_path / "LaunchDaemons"), "--newsyslog-dir", str(tmp_path / "newsyslog.d")]


def test_install_dry_run_prints_the_commands_in_order_and_does_nothing(home_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launchd, "launchctl", lambda *a: pytest.fail(f"launchctl {a} ran in a dry run"))
    assert main(["launchd", "install", "--dry-run", *_install_args(tmp_path)]) == 0
    lines = capsys.readouterr().err.splitlines()
    daemons = tmp_path / "LaunchDaemons"
    sup, drill = daemons / "com.edgehost.supervisor.plist", daemons / "com.edgehost.drill.plist"
    log_dir = home_env.settings().log_dir
    assert lines == [
        f"install -d -m 0750 -o nobody -g nogroup {log_dir}/launchd",
        f"write {sup} (mode 0644)",
        f"write {drill} (mode 0644)",
        f"write {tmp_path}/newsyslog.d/edgehost.conf (mode 0644)",
        "launchctl bootout system/com.edgehost.supervisor",
        "launchctl enable system/com.edgehost.supervisor",
        f"launchctl bootstrap system {sup}",
        "launchctl bootout system/com.edgehost.drill",
        "launchctl enable system/com.edgehost.drill",
        f"launchctl bootstrap system {drill}",
    ]
    assert not daemons.exists() and not (log_dir / "launchd").exists()


def test_install_writes_root_files_and_loads_both_jobs(home_env, tmp_path, fake, capsys):
    fake.answers = [("bootout system/com.edgehost.supervisor", 3, "Boot-out failed: 3: No such process")]
    assert main(["launchd", "install", "--json", *_install_args(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    daemons = tmp_path / "LaunchDaemons"
    sup = daemons / "com.edgehost.supervisor.plist"
    assert fake.lines == [
        "launchctl bootout system/com.edgehost.supervisor",
        "launchctl enable system/com.edgehost.supervisor",
        f"launchctl bootstrap system {sup}",
        "launchctl bootout system/com.edgehost.drill",
        "launchctl enable system/com.edgehost.drill",
        f"launchctl bootstrap system {daemons / 'com.edgehost.drill.plist'}",
    ]
    assert report["steps"][4]["note"] == "was not loaded"
    for path in (sup, daemons / "com.edgehost.drill.plist", tmp_path / "newsyslog.d" / "edgehost.conf"):
        assert path.stat().st_mode & 0o777 == 0o644
        assert SECRET not in path.read_text()
    assert plistlib.loads(sup.read_bytes())["UserName"] == "nobody"
    log_dir = home_env.settings().log_dir / "launchd"
    assert log_dir.is_dir() and log_dir.stat().st_uid == 65534


def test_bootstrap_io_error_after_bootout_is_retried(home_env, tmp_path, fake, capsys):
    fake.answers = [("bootstrap system", 5, IO_ERROR)]
    assert main(["launchd", "install", *_install_args(tmp_path)]) == 0
    bootstraps = [c for c in fake.calls if c[0] == "bootstrap"]
    assert len(bootstraps) == 3  # supervisor twice (error, then ok), drill once
    assert bootstraps[0] == bootstraps[1]
    assert "(after 2 tries)" in capsys.readouterr().err


def test_bootstrap_that_keeps_failing_gives_up_with_a_hint(home_env, tmp_path, fake, capsys):
    fake.answers = [("bootstrap system", 5, IO_ERROR)] * launchd.BOOTSTRAP_TRIES
    assert main(["launchd", "install", *_install_args(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "Input/output error" in err and f"after {launchd.BOOTSTRAP_TRIES} tries" in err
    assert len([c for c in fake.calls if c[0] == "bootstrap"]) == launchd.BOOTSTRAP_TRIES


def test_other_bootstrap_errors_are_not_retried(home_env, tmp_path, fake):
    fake.answers = [("bootstrap system", 1, "Bootstrap failed: 1: Operation not permitted")]
    assert main(["launchd", "install", *_install_args(tmp_path)]) == 3
    assert len([c for c in fake.calls if c[0] == "bootstrap"]) == 1


def test_install_refuses_a_service_user_that_does_not_exist(home_env, tmp_path, fake, capsys):
    args = _install_args(tmp_path)
    args[1] = args[3] = "_edgehost_missing"
    assert main(["launchd", "install", *args]) == 3
    assert "does not exist" in capsys.readouterr().err
    assert fake.calls == []


def test_uninstall_boots_out_and_removes_the_files(home_env, tmp_path, fake, capsys):
    assert main(["launchd", "install", *_install_args(tmp_path)]) == 0
    fake.calls.clear()
    not_found = 'Could not find service "com.edgehost.drill" in domain for system'
    fake.answers = [("bootout system/com.edgehost.drill", 113, not_found)]
    assert main(["launchd", "uninstall", *_install_args(tmp_path)]) == 0
    assert fake.lines == ["launchctl bootout system/com.edgehost.supervisor", "launchctl bootout system/com.edgehost.drill"]
    assert list((tmp_path / "LaunchDaemons").iterdir()) == []
    assert not (tmp_path / "newsyslog.d" / "edgehost.conf").exists()


def test_uninstall_reports_a_bootout_that_really_failed(home_env, tmp_path, fake):
    fake.answers = [("bootout system/com.edgehost.supervisor", 1, "Boot-out failed: 1: Operation not permitted")]
    assert main(["launchd", "uninstall", *_install_args(tmp_path)]) == 3


def test_uninstall_dry_run(home_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launchd, "launchctl", lambda *a: pytest.fail("ran"))
    assert main(["launchd", "uninstall", "--dry-run", *_install_args(tmp_path)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["launchctl bootout system/com.edgehost.supervisor", "launchctl bootout system/com.edgehost.drill"]
    assert lines[2] == f"rm -f {tmp_path}/LaunchDaemons/com.edgehost.supervisor.plist"


def test_restart_kickstarts_the_supervisor(home_env, fake, capsys):
    assert main(["launchd", "restart", "--dry-run"]) == 0
    assert capsys.readouterr().err.strip() == "launchctl kickstart -k system/com.edgehost.supervisor"
    assert fake.calls == []
    assert main(["launchd", "restart"]) == 0
    assert fake.lines == ["launchctl kickstart -k system/com.edgehost.supervisor"]


PRINT_RUNNING = """system/com.edgehost.supervisor = {
\tactive count = 1
\tpath = /Library/LaunchDaemons/com.edgehost.supervisor.plist
\ttype = LaunchDaemon
\tstate = running

\tprogram = /opt/edgehost/venv/bin/edgehost
\tpid = 4242
\tlast exit code = (never exited)
\tevent triggers = {
\t}
}
"""


def test_status_reports_loaded_and_not_loaded(home_env, tmp_path, fake, capsys):
    fake.answers = [("print system/com.edgehost.supervisor", 0, PRINT_RUNNING),
                    ("print system/com.edgehost.drill", 113, 'Could not find service "com.edgehost.drill" in domain for system')]
    assert main(["launchd", "status", "--json", "--daemons-dir", str(tmp_path)]) == 1
    jobs = {j["label"]: j for j in json.loads(capsys.readouterr().out)["jobs"]}
    assert jobs["com.edgehost.supervisor"]["loaded"] is True
    assert jobs["com.edgehost.supervisor"]["state"] == "running" and jobs["com.edgehost.supervisor"]["pid"] == 4242
    assert jobs["com.edgehost.drill"]["loaded"] is False
    assert fake.lines == ["launchctl print system/com.edgehost.supervisor", "launchctl print system/com.edgehost.drill"]

    fake.answers = [("print", 0, PRINT_RUNNING), ("print", 0, PRINT_RUNNING.replace("running", "not running"))]
    assert main(["launchd", "status", "--daemons-dir", str(tmp_path)]) == 0


def test_without_launchctl_status_is_an_environment_problem(home_env, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["launchd", "status"]) == 3
    assert "macOS" in capsys.readouterr().err


# --- the Mac bootstrap script ---------------------------------------------------------------

BOOTSTRAP = REPO / "deploy" / "bootstrap-mac.sh"


def test_bootstrap_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(BOOTSTRAP)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_bootstrap_script_passes_shellcheck():
    subprocess.run(["shellcheck", str(BOOTSTRAP)], check=True)


def test_bootstrap_dry_run_prints_every_step_and_changes_nothing(tmp_path):
    kit = tmp_path / "kit"
    proc = subprocess.run(["bash", str(BOOTSTRAP), "--dry-run", "--home", str(kit), "--user", "_edgehost_test"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    steps = [ln[4:] for ln in out.splitlines() if ln.startswith("==> ")]
    assert [s.split(":")[0] for s in steps] == [
        "Homebrew", "Python", "Service user", "Directories", "Virtualenv", "The kit", "litestream.yml",
        "Env file", "cloudflared", "Databases", "launchd", "Power", "Doctor"]
    assert f"install -m 0600 -o _edgehost_test -g _edgehost_test {REPO}/deploy/edgehost.env.example {kit}/edgehost.env" in out
    assert "pmset -a autorestart 1 sleep 0 disksleep 0" in out
    assert f"{kit}/venv/bin/edgehost --home {kit} launchd install --user _edgehost_test --group _edgehost_test" in out
    assert "doctor" in steps[-1].lower()
    assert not kit.exists()


def test_bootstrap_never_overwrites_an_existing_env_file(tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "edgehost.env").write_text("AWS_SECRET_ACCESS_KEY=keep-me\n")
    proc = subprocess.run(["bash", str(BOOTSTRAP), "--dry-run", "--home", str(kit)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "edgehost.env.example" not in proc.stdout
    assert f"chmod 600 {kit}/edgehost.env" in proc.stdout
    assert (kit / "edgehost.env").read_text() == "AWS_SECRET_ACCESS_KEY=keep-me\n"


def test_env_example_holds_no_secrets_and_loads(tmp_path):
    example = REPO / "deploy" / "edgehost.env.example"
    text = example.read_text()
    for line in text.splitlines():
        # systemd's EnvironmentFile= would keep a trailing comment as part of the value.
        assert not re.match(r"^#?\s?[A-Z0-9_]+=.*\s#", line), f"inline comment: {line}"
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            if "SECRET" in key or "TOKEN" in key or key.endswith("KEY_ID"):
                assert value == "", f"{key} must be empty in the example"
    shutil.copy(REPO / "litestream.yml", tmp_path / "litestream.yml")
    (tmp_path / "edgehost.env").write_text(text)
    (tmp_path / "edgehost.env").chmod(0o600)
    settings = load_settings(tmp_path, {})
    assert settings.is_s3 and settings.s3_region == "auto"
    assert settings.s3_endpoint.endswith(".r2.cloudflarestorage.com")
