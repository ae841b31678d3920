"""Tables people read at 80 columns: nothing cut, short txids and relative times (--json keeps full values)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rich.console import Console

from edgehost.cli.output import ago, short_txid
from edgehost.cli.status_cmd import database_table, service_table
from edgehost.ops.status import DatabaseStatus


def _render(table) -> str:
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text()


def test_the_status_tables_fit_80_columns_without_cutting_a_name():
    now = datetime.now(timezone.utc)
    names = ["global", "harbour-view-apartments-and-suites-north-wing", "acme"]
    dbs = [DatabaseStatus(name=n, path=f"/opt/edgehost/data/{n}/honestcam.db", state="synced", local_txid=0x2a3f,
                          replicated_txid=0x2a3f, last_sync_at=(now - timedelta(seconds=95)).isoformat(),
                          lag_seconds=0.0, wal_bytes=4_120_000) for n in names]
    text = _render(database_table(dbs, []))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    first_column = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    for name in names:
        assert name in first_column  # wrapped over lines, never cut
    assert "2a3f/2a3f" in text and "1m ago" in text
    services = [{"name": "litestream", "state": "running", "pid": 4242, "restarts": 0, "uptime_seconds": 200000},
                {"name": "cloudflared", "state": "failed", "pid": None, "restarts": 7, "uptime_seconds": 0}]
    text = _render(service_table(services))
    assert "…" not in text and "2d" in text and "cloudflared" in text and "failed" in text


def test_relative_times_and_short_txids():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    assert ago("2026-11-23T11:59:48.123456789Z", now) == "11s ago"
    assert ago("2026-11-23T09:00:00Z", now) == "3h ago"
    assert ago("2026-11-20T12:00:00+00:00", now) == "3d ago"
    assert ago(None, now) == "-"
    assert short_txid("0000000000002a3f") == "2a3f" and short_txid("0000000000000000") == "0"


def test_the_verify_table_fits_80_columns():
    from edgehost.cli.verify_cmd import verify_table
    from edgehost.ops.verify import VerifyResult

    ok = VerifyResult("harbour-view-apartments-and-suites-north-wing", "/x", ok=True, txid="0000000000001f2e",
                      rows={"compliance_events": 1234}, hash="ab" * 32, rpo_seconds=0.42, restore_seconds=0.31,
                      writer_wait_ms=12)
    bad = VerifyResult("global", "/y", ok=False, failed_check="foreign_keys", txid="0000000000000009")
    text = _render(verify_table([ok, bad]))
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    first_column = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert ok.name in first_column and "1f2e" in text
    verdicts = "".join(line.split("│")[2].strip() for line in text.splitlines() if line.startswith("│"))
    assert "FAILforeign_keys" in verdicts.replace(" ", "")
