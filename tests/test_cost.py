"""`edgehost cost`: R2's price arithmetic, litestream's metrics read right, and its errors."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from edgehost.engine.bucket import Listing, LtxFile
from edgehost.engine.litestream import read_config
from edgehost.errors import BadInput, EnvironmentProblem
from edgehost.ops import cost

from procs import edgehost


def test_a_month_inside_the_free_tier_costs_nothing_after_it():
    b = cost.bill(class_a=1_000_000, class_b=10_000_000, storage_gb_month=10)
    assert b["before_free_tier"] == pytest.approx(4.50 + 3.60 + 0.15)
    assert b["after_free_tier"] == 0


def test_past_the_free_tier_each_quantity_is_billed_by_the_unit_rounded_up():
    # 1 request past the free million is a whole billable million, as R2 rounds.
    b = cost.bill(class_a=1_000_001, class_b=12_500_000, storage_gb_month=10.2)
    assert b["by_item_after_free_tier"] == {"class_a": 4.50, "class_b": 3 * 0.36, "storage": 0.015}
    assert b["after_free_tier"] == pytest.approx(4.50 + 1.08 + 0.015)
    assert b["before_free_tier"] == pytest.approx(1.000001 * 4.50 + 12.5 * 0.36 + 10.2 * 0.015, abs=1e-4)


def _metrics_text(settings, put=120, deleted=7, batches=2, start=1_700_000_000.0) -> str:
    db = settings.data_dir / "p1" / settings.property_db_name
    return f"""# HELP litestream_db_size The current size of the real DB
# TYPE litestream_db_size gauge
litestream_db_size{{db="{settings.global_db}"}} 8192
litestream_db_size{{db="{db}"}} 4096
# HELP litestream_replica_operation_total The number of replica operations performed
# TYPE litestream_replica_operation_total counter
litestream_replica_operation_total{{operation="DELETE",replica_type="s3"}} {deleted}
litestream_replica_operation_total{{operation="PUT",replica_type="s3"}} {put}
# HELP litestream_replica_operation_duration_seconds Duration of replica operations by type and operation
# TYPE litestream_replica_operation_duration_seconds histogram
litestream_replica_operation_duration_seconds_bucket{{operation="DELETE",replica_type="s3",le="+Inf"}} {batches}
litestream_replica_operation_duration_seconds_sum{{operation="DELETE",replica_type="s3"}} 0.01
litestream_replica_operation_duration_seconds_count{{operation="DELETE",replica_type="s3"}} {batches}
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds {start}
"""


def test_litestreams_counters_are_read_by_operation(kit_home):
    s = kit_home.settings()
    m = cost.parse_metrics(_metrics_text(s), s, read_at=1_700_003_600.0)
    assert m.operations == {"PUT": 120, "DELETE": 7}
    assert m.delete_batches == 2 and m.started_at == 1_700_000_000.0 and len(m.databases) == 2


def test_metrics_of_another_homes_litestream_are_refused(kit_home, tmp_path):
    s = kit_home.settings()
    other = kit_home.settings(EDGEHOST_DATA_DIR=str(tmp_path / "elsewhere"))
    with pytest.raises(EnvironmentProblem, match="not this home's litestream"):
        cost.parse_metrics(_metrics_text(other), s)


def test_the_month_adds_lists_litestream_does_not_count_and_the_lease(s3_home):
    s = s3_home.settings(EDGEHOST_LEASE_RENEW_SECONDS="300")
    hour = 3600.0
    m = cost.parse_metrics(_metrics_text(s, put=400), s, read_at=1_700_000_000.0 + hour)
    counts, at_start = cost.model_requests(m, s, retention_check_seconds=900,
                                           compactions=cost.Compactions(count=10, gets=3, lists=26))
    n = 2
    drill_reads = 2  # the supervisor's reads of the replica's drills: at its start and an hour later
    assert counts["LIST"] == cost.LIST_AT_START * n + cost.LIST_PER_RETENTION_CHECK * n * 4 + 26 + drill_reads
    assert counts["PUT"] == 400 + 12  # litestream's PUTs and one lease renewal every 5 minutes
    assert counts["GET"] == 3 and counts["DELETE_BATCH"] == 2
    assert at_start == {"PUT": cost.PUT_AT_START * n, "LIST": cost.LIST_AT_START * n + 1, "GET": 0}


def test_an_estimate_prices_the_steady_rate_over_a_month_plus_one_start(s3_home):
    s = s3_home.settings()
    start = 1_700_000_000.0
    m = cost.parse_metrics(_metrics_text(s, put=1000, deleted=0, batches=0, start=start), s, read_at=start + 3600)
    when = datetime.fromtimestamp(start + 60, timezone.utc)
    listing = Listing("s3://b/edgehost", objects=2, bytes=3 * cost.GB)
    listing.dbs["p1/honestcam.db"] = [LtxFile(1, 1, 5, 100, "k1", when), LtxFile(0, 6, 6, 100, "k0", when)]
    report = cost.estimate(s, listing, metrics=m)
    month = report["requests_per_month"]["by_operation"]
    window = 3600
    steady_put = (1000 + 12 - cost.PUT_AT_START * 2) / window
    assert month["PUT"] == round(steady_put * cost.MONTH_SECONDS + cost.PUT_AT_START * 2)
    assert report["storage"]["gb"] == 3
    assert report["requests_per_month"]["by_class"]["A"] == month["PUT"] + month["LIST"]
    assert report["short_window"] is False and report["note"] == ""
    assert report["bill"] == cost.bill(report["requests_per_month"]["by_class"]["A"],
                                       report["requests_per_month"]["by_class"]["B"], 3)


def test_the_metrics_address_never_leaves_loopback(kit_home):
    yml = kit_home.path / "litestream.yml"
    yml.write_text(yml.read_text().replace("addr: ${EDGEHOST_LITESTREAM_METRICS_ADDR}", 'addr: ":9465"'))
    with pytest.raises(BadInput, match="beyond this machine; bind it to 127.0.0.1:9465"):
        read_config(kit_home.settings())


def test_the_shipped_config_serves_metrics_on_the_configured_loopback_port(kit_home):
    assert read_config(kit_home.settings(EDGEHOST_LITESTREAM_METRICS_PORT="19999")).metrics_addr == "127.0.0.1:19999"
    assert read_config(kit_home.settings(EDGEHOST_LITESTREAM_METRICS_PORT="0")).metrics_addr == ""


def test_cost_without_a_running_litestream_is_one_line_and_exit_3(kit_home):
    done = edgehost(kit_home, "cost")
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "litestream is not running" in lines[0] and "edgehost up" in lines[0]
    as_json = edgehost(kit_home, "cost", "--json")
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["ok"] is False


def test_cost_with_metrics_off_says_how_to_turn_them_on(kit_home):
    kit_home.env["EDGEHOST_LITESTREAM_METRICS_PORT"] = "0"
    done = edgehost(kit_home, "cost")
    assert done.returncode == 2
    assert "metrics are off" in done.stderr and "litestream_metrics_port" in done.stderr


def test_the_status_page_summary_names_the_error_instead_of_raising(kit_home):
    summary = cost.summary(kit_home.settings())
    assert summary["ok"] is False and "litestream is not running" in summary["error"]


def test_compactions_since_the_start_and_the_gets_of_those_into_level_2():
    start = 1_700_000_000.0
    at = lambda s: datetime.fromtimestamp(start + s, timezone.utc)  # noqa: E731
    listing = Listing("s3://b/edgehost")
    listing.dbs["p1/honestcam.db"] = [
        LtxFile(1, 1, 4, 10, "a", at(-60)),     # before litestream started: not this window's
        LtxFile(1, 5, 8, 10, "b", at(30)),
        LtxFile(1, 9, 9, 10, "c", at(600)),
        LtxFile(2, 5, 9, 10, "d", at(700)),     # reads b and c from the replica
        LtxFile(0, 10, 10, 10, "e", at(710)),   # L0: a sync, not a compaction
        LtxFile(9, 1, 10, 10, "f", at(800)),   # a snapshot: its retention lists the snapshots, L1 and L2
    ]
    # L1 uploads: 3 LISTs each (L0, then the L0 retention pass: L1, L0); L2: 1 (L1); the snapshot: 1 + 2 levels.
    assert cost.compactions_since(listing, start, compaction_levels=2) == cost.Compactions(
        count=4, gets=2, lists=3 + 3 + 1 + 3, early=1, early_gets=0, early_lists=3)


def _ltx(level: int, lo: int, hi: int, at: float) -> LtxFile:
    return LtxFile(level, lo, hi, 100, f"{level:04x}/{lo:016x}-{hi:016x}.ltx", datetime.fromtimestamp(at, timezone.utc))


def test_an_idle_database_whose_newest_l1_file_spans_several_txids_lists_at_every_l1_tick():
    from datetime import timedelta

    hour = 1_800_000_000.0 - 1_800_000_000.0 % 3600  # on the clock, as litestream times its ticks
    levels = (timedelta(minutes=5), timedelta(hours=1))
    spanning = [_ltx(0, 7, 7, hour), _ltx(1, 3, 7, hour + 1), _ltx(9, 1, 1, hour)]  # merged txids 3..7
    single = [_ltx(0, 7, 7, hour), _ltx(1, 7, 7, hour + 1), _ltx(9, 1, 1, hour)]
    pending = [_ltx(0, 8, 8, hour + 2), _ltx(1, 3, 7, hour + 1)]  # txid 8 waits: the next tick compacts it
    ticks = lambda files: cost.idle_ticks_since(Listing("r", {"p/honestcam.db": files}), levels,  # noqa: E731
                                                hour - 600, hour + 3600 + 1)
    assert ticks(spanning) == 12  # an hour of 5-minute ticks after the file was written
    assert ticks(single) == 0 and ticks(pending) == 0
    # Only the ticks since litestream started count, and since the file was written.
    assert cost.idle_ticks_since(Listing("r", {"p": spanning}), levels, hour + 1800, hour + 3600 + 1) == 6
    # The same at level 2: its newest file spans the L1 files' txids, and nothing newer is at L1.
    l2 = [_ltx(1, 3, 7, hour + 1), _ltx(2, 1, 7, hour + 2)]
    assert cost.idle_ticks_since(Listing("r", {"p": l2}), levels, hour, hour + 3 * 3600 + 1) == 3
    # Every idle streak counts, not only the last: 5 idle ticks before the tick that compacted the
    # next burst (that one is a compaction), then 6 more.
    two = [_ltx(0, 9, 9, hour + 1790), _ltx(1, 3, 7, hour + 1), _ltx(1, 8, 9, hour + 1801)]
    assert cost.idle_ticks_since(Listing("r", {"p": two}), levels, hour - 600, hour + 3600 + 1) == 5 + 6
    # A sync waiting for the next tick ends the streak there, not before it began.
    waiting = spanning + [_ltx(0, 8, 8, hour + 1790)]
    assert cost.idle_ticks_since(Listing("r", {"p": waiting}), levels, hour - 600, hour + 1795) == 5
    # A replica litestream no longer runs (a property removed) makes no request.
    listing = Listing("r", {"gone/honestcam.db": spanning, "kept/honestcam.db": spanning})
    assert cost.idle_ticks_since(listing, levels, hour - 600, hour + 3600 + 1, {"kept/honestcam.db"}) == 12
