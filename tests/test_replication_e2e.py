"""The foundation end to end: the portal over HTTP, the real litestream binary, a real S3 endpoint,
and plain `litestream restore` (no edgehost code) finding every row."""

from __future__ import annotations

import httpx
import pytest

from edgehost.engine import layout, litestream
from procs import plain_restore, rows, start_litestream, start_portal, sync_db

pytestmark = pytest.mark.e2e


def _write(url: str, slug: str, n: int) -> list[int]:
    return [httpx.post(f"{url}/properties/{slug}/events", json={"kind": "k", "payload": {"i": i}}).json()["id"]
            for i in range(n)]


def _sync_all(settings, refs):
    for ref in refs:
        sync_db(settings, ref)


def _replication_roundtrip(home, tmp_path):
    settings = home.settings()
    portal, url = start_portal(home)
    ls = start_litestream(home)
    try:
        for slug in ("acme", "beta"):
            assert httpx.post(f"{url}/properties", json={"slug": slug}).status_code == 201
        acme_ids = _write(url, "acme", 25)
        beta_ids = _write(url, "beta", 7)
        httpx.put(f"{url}/study/users/u1", json={"email": "u1@example.com"})
        httpx.put(f"{url}/study/progress/u1", json={"progress": {"lesson": 3}})
        refs = [layout.global_db(settings), layout.property_db(settings, "acme"), layout.property_db(settings, "beta")]
        _sync_all(settings, refs)

        repl = litestream.replication(settings)
        env = home.environ()
        out = {}
        for ref in refs:
            out[ref.label] = tmp_path / f"restored-{ref.label}.db"
            proc = plain_restore(repl.restore_url(ref), out[ref.label], env)
            assert proc.returncode == 0, proc.stderr
        assert [r[0] for r in rows(out["acme"], "SELECT id FROM compliance_events ORDER BY id")] == acme_ids
        assert [r[0] for r in rows(out["beta"], "SELECT id FROM compliance_events ORDER BY id")] == beta_ids
        assert rows(out["global"], "SELECT user_id, progress FROM study_progress") == [("u1", b'{"lesson":3}')]

        # A property created while litestream runs replicates without a restart.
        assert httpx.post(f"{url}/properties", json={"slug": "gamma"}).status_code == 201
        gamma_ids = _write(url, "gamma", 3)
        gamma = layout.property_db(settings, "gamma")
        _sync_all(settings, [gamma])
        proc = plain_restore(repl.restore_url(gamma), tmp_path / "gamma.db", env)
        assert proc.returncode == 0, proc.stderr
        assert [r[0] for r in rows(tmp_path / "gamma.db", "SELECT id FROM compliance_events")] == gamma_ids
        assert ls.alive()
    finally:
        portal.stop()
        ls.stop()


def test_rows_written_through_the_portal_restore_from_s3(s3_home, tmp_path):
    _replication_roundtrip(s3_home, tmp_path)


def test_the_embedded_default_replicates_to_a_local_directory(kit_home, tmp_path):
    _replication_roundtrip(kit_home, tmp_path)
    assert (kit_home.path / "replica" / "acme" / "honestcam.db").is_dir()
