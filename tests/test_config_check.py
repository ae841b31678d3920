"""`edgehost config check` and the preflight's refusals: one line naming the file and key, non-zero exit."""

from __future__ import annotations

import json
import sqlite3

import pytest

from procs import edgehost


def _one_line(proc, code, *needles):
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_config_check_lists_databases_and_replicas(kit_home):
    edgehost(kit_home, "property", "add", "acme")
    proc = edgehost(kit_home, "config", "check", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by_name = {d["name"]: d for d in report["databases"]}
    assert by_name["acme"]["replica_url"].endswith("/replica/acme/honestcam.db")
    assert by_name["global"]["replica_url"].endswith("/replica/honestcam-study.db")
    assert report["snapshot_retention_hours"] == 168


@pytest.mark.parametrize("mutate, needles", [
    (lambda t: t + "\n  - : [unclosed\n", ["litestream.yml", "invalid YAML"]),
    (lambda t: t.replace("snapshot:", "snapshto:"), ["litestream.yml", "snapshto", "unknown key"]),
    (lambda t: t.replace("    watch: true", "    watch: true\n    wacth: true"), ["dbs[1].wacth", "unknown key"]),
    (lambda t: t.replace("${EDGEHOST_REPLICA_URL}/${EDGEHOST_GLOBAL_DB_NAME}", "${MY_BUCKET_URL}/x"),
     ["dbs[0].replica.url", "${MY_BUCKET_URL} is not set"]),
    (lambda t: t.replace("endpoint: ${EDGEHOST_S3_ENDPOINT}", "secret-access-key: hunter2hunter2"),
     ["secret-access-key", "a secret written in the file"]),
    (lambda t: t.replace("    watch: true\n", ""), ["watch", "must be true"]),
])
def test_bad_litestream_yml_is_one_line_naming_file_and_key(kit_home, mutate, needles):
    cfg = kit_home.path / "litestream.yml"
    cfg.write_text(mutate(cfg.read_text()))
    _one_line(edgehost(kit_home, "config", "check"), 2, *needles)


def test_bad_settings_are_refused(kit_home):
    (kit_home.path / "edgehost.toml").write_text("[restart]\nmax_backoff = 'soon'\n")
    _one_line(edgehost(kit_home, "config", "check"), 2, "restart.max_backoff", "must be a number")


def test_up_refuses_a_missing_binary_an_unusable_data_dir_and_a_rollback_db(kit_home):
    env = {"EDGEHOST_LITESTREAM_BIN": str(kit_home.path / "no-litestream")}
    kit_home.env.update(env)
    _one_line(edgehost(kit_home, "up", timeout=60), 3, "EDGEHOST_LITESTREAM_BIN")
    del kit_home.env["EDGEHOST_LITESTREAM_BIN"]

    blocker = kit_home.path / "not-a-dir"
    blocker.write_text("")
    kit_home.env["EDGEHOST_DATA_DIR"] = str(blocker / "data")
    proc = edgehost(kit_home, "up", timeout=60)
    assert proc.returncode == 2 and "cannot create data dir" in proc.stdout + proc.stderr
    del kit_home.env["EDGEHOST_DATA_DIR"]

    (kit_home.path / "data" / "old").mkdir(parents=True)
    raw = sqlite3.connect(kit_home.path / "data" / "old" / "honestcam.db")
    raw.execute("CREATE TABLE t(x)")
    raw.commit()
    raw.close()
    proc = edgehost(kit_home, "up", timeout=60)
    assert proc.returncode == 2 and "'delete' journal mode, edgehost needs WAL" in proc.stdout + proc.stderr
    assert not (kit_home.path / "replica").exists()


def test_up_waits_for_an_unreachable_replica_and_creates_nothing(kit_home):
    import signal
    import time

    from procs import S3_KEYS, Proc, edgehost_argv, free_port

    kit_home.env.update({"EDGEHOST_REPLICA_URL": "s3://some-bucket/x",
                         "EDGEHOST_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}", **S3_KEYS})
    up = Proc(edgehost_argv("up"), kit_home.environ(), kit_home.path / "up.log")
    time.sleep(4)
    assert up.alive(), up.output()
    assert "nothing is started or created until the replica answers" in up.output()
    assert not (kit_home.path / "data" / "honestcam-study.db").exists()
    up.signal(signal.SIGTERM)
    assert up.popen.wait(30) == 0
    up.stop()


def test_bad_slug_creates_nothing(kit_home):
    _one_line(edgehost(kit_home, "property", "add", "../evil"), 2, "invalid property slug")
    assert not (kit_home.path / "evil").exists()
    assert list((kit_home.path / "data").glob("*")) == [] if (kit_home.path / "data").exists() else True


def test_config_check_names_the_source_of_each_value_and_warns_on_placeholders(kit_home):
    (kit_home.path / "edgehost.toml").write_text("[portal]\nport = 9000\n")
    env_file = kit_home.path / "edgehost.env"
    secret = "s3cr3t-value-never-shown"
    env_file.write_text(f"R2_ACCOUNT_ID=0123456789abcdef0123456789abcdef\nR2_BUCKET=my-portal-backups\n"
                        f"AWS_ACCESS_KEY_ID=\nAWS_SECRET_ACCESS_KEY={secret}\nEDGEHOST_LAG_ALERT_SECONDS=45\n")
    env_file.chmod(0o600)
    kit_home.env.pop("EDGEHOST_REPLICA_URL", None)
    kit_home.env.pop("EDGEHOST_PORTAL_PORT")
    kit_home.env["EDGEHOST_METRICS_PORT"] = "9999"
    proc = edgehost(kit_home, "config", "check", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    source = {line["key"]: line["source"] for line in report["settings"]}
    value = {line["key"]: line["value"] for line in report["settings"]}
    assert source["portal.port"] == "edgehost.toml" and value["portal.port"] == "9000"
    assert source["lag_alert_seconds"] == "env file" and value["lag_alert_seconds"] == "45.0"
    assert source["metrics_port"] == "environment" and source["data_dir"] == "default"
    assert source["replica_url"] == "R2_* variables" and value["replica_url"] == "s3://my-portal-backups/edgehost"
    warnings = " | ".join(report["warnings"])
    assert "R2_BUCKET looks like a placeholder 'my-portal-backups'" in warnings
    assert "R2_ACCOUNT_ID looks like a placeholder" in warnings
    assert "AWS_ACCESS_KEY_ID is empty" in warnings and "the bucket must already exist" in warnings
    human = edgehost(kit_home, "config", "check")
    assert human.returncode == 0 and "warn: R2_BUCKET looks like a placeholder" in human.stderr
    assert secret not in proc.stdout + proc.stderr + human.stdout + human.stderr


@pytest.mark.parametrize("toml, needles", [
    ("[tunnel]\nmetrics_port = 65536\n", ["edgehost.toml", "tunnel.metrics_port", "must be at most 65535"]),
    ("[tunnel]\nenabled = 'false'\n", ["edgehost.toml", "tunnel.enabled", "must be true or false"]),
    ("[restart]\ncrash_loop_failures = 0\n", ["restart.crash_loop_failures", "must be at least 1"]),
    ("lag_alert_seconds = nan\n", ["lag_alert_seconds", "finite"]),
    ("[portal]\nbogus = 1\n", ["unknown key 'portal.bogus'", "known: command, host"]),
])
def test_out_of_range_settings_exit_2_in_one_line(kit_home, toml, needles):
    (kit_home.path / "edgehost.toml").write_text(toml)
    _one_line(edgehost(kit_home, "config", "check"), 2, *needles)


def test_an_environment_value_is_named_by_its_variable(kit_home):
    kit_home.env["EDGEHOST_PORTAL_PORT"] = "99999"
    _one_line(edgehost(kit_home, "config", "check"), 2, "the environment", "EDGEHOST_PORTAL_PORT", "at most 65535")
    kit_home.env["EDGEHOST_PORTAL_PORT"] = "8080"
    kit_home.env["EDGEHOST_TUNNEL_ENABLED"] = "maybe"
    _one_line(edgehost(kit_home, "config", "check"), 2, "EDGEHOST_TUNNEL_ENABLED='maybe'", "true or false")
