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
