
import pytest

from edgehost.errors import BadInput
from edgehost.settings import load_settings


def test_defaults_are_a_local_file_replica_beside_the_data_dir(tmp_path):
    s = load_settings(tmp_path, {})
    assert s.data_dir == tmp_path / "data"
    assert s.replica_url == (tmp_path / "replica").as_uri()
    assert not s.is_s3
    assert s.portal.host == "127.0.0.1"


def test_r2_settings_give_the_r2_endpoint_and_region_auto(tmp_path):
    s = load_settings(tmp_path, {"R2_ACCOUNT_ID": "abc123", "R2_BUCKET": "portal-backups"})
    assert s.replica_url == "s3://portal-backups/edgehost"
    assert s.s3_endpoint == "https://abc123.r2.cloudflarestorage.com"
    assert s.s3_region == "auto"
    assert s.litestream_env()["EDGEHOST_S3_FORCE_PATH_STYLE"] == "true"


def test_short_bucket_names_are_refused(tmp_path):
    with pytest.raises(BadInput, match="at least 3 characters"):
        load_settings(tmp_path, {"EDGEHOST_REPLICA_URL": "s3://ab/x"})


def test_env_file_must_be_private(tmp_path):
    env_file = tmp_path / "edgehost.env"
    env_file.write_text("AWS_SECRET_ACCESS_KEY=shh\n")
    env_file.chmod(0o644)
    with pytest.raises(BadInput, match="chmod 600"):
        load_settings(tmp_path, {})
    env_file.chmod(0o600)
    s = load_settings(tmp_path, {})
    assert s.environ["AWS_SECRET_ACCESS_KEY"] == "shh"
    assert "shh" not in repr(s)


def test_environment_wins_over_env_file(tmp_path):
    env_file = tmp_path / "edgehost.env"
    env_file.write_text("EDGEHOST_PORTAL_PORT=9000\n")
    env_file.chmod(0o600)
    assert load_settings(tmp_path, {}).portal.port == 9000
    assert load_settings(tmp_path, {"EDGEHOST_PORTAL_PORT": "9100"}).portal.port == 9100


def test_unknown_settings_key_names_file_and_key(tmp_path):
    (tmp_path / "edgehost.toml").write_text("data_dri = 'x'\n")
    with pytest.raises(BadInput, match=r"edgehost.toml: unknown key 'data_dri'"):
        load_settings(tmp_path, {})
    (tmp_path / "edgehost.toml").write_text("[portal]\nprot = 1\n")
    with pytest.raises(BadInput, match=r"unknown key 'portal.prot'"):
        load_settings(tmp_path, {})


def test_toml_settings_are_read(tmp_path):
    (tmp_path / "edgehost.toml").write_text(
        "data_dir = '/srv/portal/data'\n[portal]\nport = 8181\ncommand = ['gunicorn', 'app']\n[restart]\nmax_backoff = 30\n"
    )
    s = load_settings(tmp_path, {})
    assert str(s.data_dir) == "/srv/portal/data"
    assert s.portal.port == 8181
    assert s.portal_argv() == ["gunicorn", "app"]
    assert s.restart.max_backoff == 30.0
