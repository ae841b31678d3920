"""This month's Cloudflare R2 bill, estimated from what this machine really does.

Litestream 0.5 counts its replica operations in Prometheus metrics (`addr:` in litestream.yml):
`litestream_replica_operation_total{replica_type, operation}`. Its S3 client (0.5.17) counts only
PutObject ("PUT", one a LTX file uploaded) and the objects DeleteObjects removed ("DELETE"); the
batches themselves are the `_count` of `litestream_replica_operation_duration_seconds{operation=
"DELETE"}`. It counts no LIST, although LISTs are most of what an idle replica costs, so those are
modelled from what litestream does (see `LIST_*` below, measured against a counting proxy with
bench/cost_accuracy.py): a burst at its start, the L0 retention check of every database, the
LISTs around each compaction, whose uploads one listing of the replica shows, and the compaction
ticks of idle databases that still list (`idle_ticks_since`); so are the GETs of a
compaction into level 2 and up (its source files are not on the local disk). The kit adds its
writer lease: one conditional PUT every lease_renew_seconds.

Counts over the window (litestream's start to now) become a rate; the month is the steady rate over
30 days plus one start. Storage is the sum of the sizes in one listing of the replica root.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

import httpx

from edgehost.engine import loopback
from edgehost.engine.bucket import SNAPSHOT_LEVEL
from edgehost.ops.state import REPLICA_DRILLS_EVERY
from edgehost.errors import BadInput, EnvironmentProblem
from edgehost.settings import Settings

# R2 Standard storage prices, read 2026-12-06 from https://developers.cloudflare.com/r2/pricing/
# (cloudflare-docs src/content/docs/r2/pricing.mdx). Class A: ListObjects, PutObject, CopyObject,
# Create/CompleteMultipartUpload, UploadPart...; Class B: GetObject, HeadObject, HeadBucket...;
# free: DeleteObject, DeleteBucket, AbortMultipartUpload. DeleteObjects (the batch POST litestream
# sends) is not named on that page; it is counted here as free, like DeleteObject (unconfirmed).
PRICES_AS_OF = "2026-12-06"
PRICES_SOURCE = "https://developers.cloudflare.com/r2/pricing/"
CLASS_A_PER_MILLION = 4.50
CLASS_B_PER_MILLION = 0.36
STORAGE_PER_GB_MONTH = 0.015
FREE_CLASS_A = 1_000_000  # requests a month
FREE_CLASS_B = 10_000_000
FREE_STORAGE_GB_MONTH = 10.0
GB = 1_000_000_000  # R2 bills decimal gigabytes

# Each operation the estimate names, and the class R2 bills it in.
CLASS_OF = {"PUT": "A", "LIST": "A", "MULTIPART": "A", "GET": "B", "HEAD": "B",
            "DELETE": "free", "DELETE_BATCH": "free"}

MONTH_SECONDS = 30 * 86400
SHORT_WINDOW_SECONDS = 15 * 60
START_SECONDS = 120  # what litestream does in its first minutes (first snapshot, compactions) happens once a start

# litestream 0.5.17's LISTs, per database (measured with bench/cost_accuracy.py; see docs/cost.md):
LIST_AT_START = 9  # the newest file of each level and the L0 listings, besides its first compactions
PUT_AT_START = 4  # the first L0 file, the snapshot and the first L1 and L2 files
LIST_PER_RETENTION_CHECK = 2  # the L0 retention check lists L1 then L0, every l0-retention-check-interval
LIST_PER_L1_COMPACTION = 3  # it lists L0, then the L0 retention pass that follows every L1 compaction lists L1 and L0
LIST_PER_COMPACTION = 1  # a compaction into level 2 and up lists its source level
LIST_PER_SNAPSHOT_BASE = 1  # a snapshot's retention lists the snapshots, then each compaction level once more
LIST_PER_IDLE_TICK = 1  # a compaction tick that finds nothing new, where the level's newest file spans txids


@dataclass(frozen=True)
class LitestreamMetrics:
    """What litestream's metrics endpoint says: its start and its replica operation counters."""

    started_at: float  # process_start_time_seconds
    read_at: float
    databases: tuple[str, ...]
    operations: dict[str, float]  # "PUT", "DELETE", ... as litestream labels them
    delete_batches: float
    replica_type: str


def metrics_url(settings: Settings) -> str:
    """Litestream's metrics URL, from `addr:` in litestream.yml as the kit expands it."""
    from edgehost.engine.litestream import read_config

    addr = read_config(settings).metrics_addr
    if not addr:
        raise BadInput(f"{settings.litestream_config}: addr: litestream's metrics are off (set "
                       f"addr: ${{EDGEHOST_LITESTREAM_METRICS_ADDR}} and litestream_metrics_port above 0)")
    return f"http://{addr}/metrics"


def parse_metrics(text: str, settings: Settings, read_at: float | None = None) -> LitestreamMetrics:
    """Litestream's counters from its Prometheus text; refuses another process's metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    started = None
    dbs: set[str] = set()
    ops: dict[str, float] = {}
    batches = 0.0
    kinds: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "process_start_time_seconds":
                    started = s.value
                elif s.name == "litestream_db_size" and "db" in s.labels:
                    dbs.add(s.labels["db"])
                elif s.name == "litestream_replica_operation_total":
                    op = s.labels.get("operation", "?")
                    ops[op] = ops.get(op, 0.0) + s.value
                    kinds.add(s.labels.get("replica_type", ""))
                elif s.name == "litestream_replica_operation_duration_seconds_count" \
                        and s.labels.get("operation") == "DELETE":
                    batches += s.value
    except ValueError as exc:
        raise EnvironmentProblem(f"litestream metrics: cannot parse them ({exc})") from None
    data_dir = str(settings.data_dir.resolve())
    if started is None or not any(db == str(settings.global_db) or db.startswith(data_dir + "/") for db in dbs):
        raise EnvironmentProblem(
            f"the metrics on port {settings.litestream_metrics_port} are not this home's litestream "
            f"(another program holds the port); set litestream_metrics_port to a free port and restart")
    return LitestreamMetrics(started_at=started, read_at=time.time() if read_at is None else read_at,
                             databases=tuple(sorted(dbs)), operations=ops, delete_batches=batches,
                             replica_type=",".join(sorted(k for k in kinds if k)))


def read_metrics(settings: Settings, timeout: float = 5.0) -> LitestreamMetrics:
    """Ask the running litestream for its counters; EnvironmentProblem when it does not answer."""
    url = metrics_url(settings)
    held = (f"{url} does not answer as litestream's metrics: another program holds the port (litestream "
            f"replicates on without metrics); set litestream_metrics_port to a free port and restart")
    try:
        resp = loopback.get(url, timeout=timeout)
    except httpx.ConnectError:
        raise EnvironmentProblem(f"litestream is not running (no metrics at {url}); start it with `edgehost up`") from None
    except httpx.HTTPError:
        raise EnvironmentProblem(held) from None
    if resp.status_code != 200:
        raise EnvironmentProblem(held)
    return parse_metrics(resp.text, settings)


def bill(class_a: float, class_b: float, storage_gb_month: float) -> dict[str, Any]:
    """R2's bill for a month's usage, before and after the free tier.

    After the free tier each billable quantity is rounded up to its billing unit (a million
    requests, a GB-month), as R2 bills them.
    """
    a_cost = class_a / 1e6 * CLASS_A_PER_MILLION
    b_cost = class_b / 1e6 * CLASS_B_PER_MILLION
    s_cost = storage_gb_month * STORAGE_PER_GB_MONTH
    billable_a = math.ceil(max(0.0, class_a - FREE_CLASS_A) / 1e6)
    billable_b = math.ceil(max(0.0, class_b - FREE_CLASS_B) / 1e6)
    billable_gb = math.ceil(max(0.0, storage_gb_month - FREE_STORAGE_GB_MONTH))
    after = {"class_a": billable_a * CLASS_A_PER_MILLION, "class_b": billable_b * CLASS_B_PER_MILLION,
             "storage": billable_gb * STORAGE_PER_GB_MONTH}
    return {
        "before_free_tier": round(a_cost + b_cost + s_cost, 4),
        "after_free_tier": round(sum(after.values()), 4),
        "by_item_before_free_tier": {"class_a": round(a_cost, 4), "class_b": round(b_cost, 4),
                                     "storage": round(s_cost, 4)},
        "by_item_after_free_tier": after,
    }


def model_requests(m: LitestreamMetrics, settings: Settings, retention_check_seconds: float,
                   compactions: Compactions | None, idle_ticks: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """(requests over the window, of which at litestream's start) by operation."""
    done = compactions or Compactions()
    window = max(1.0, m.read_at - m.started_at)
    n = len(m.databases)
    put = m.operations.get("PUT", 0.0)
    start_puts = min(put, PUT_AT_START * n)
    checks = math.floor(window / retention_check_seconds) if retention_check_seconds > 0 else 0
    drill_reads = 1 + math.floor(window / REPLICA_DRILLS_EVERY)  # the supervisor's, of the replica's drills
    lists = (LIST_AT_START * n + LIST_PER_RETENTION_CHECK * n * checks + done.lists + LIST_PER_IDLE_TICK * idle_ticks
             + drill_reads)
    renewals = math.floor(window / settings.lease_renew_seconds) if settings.is_s3 else 0
    counts = {"PUT": put + renewals, "LIST": float(lists), "GET": float(done.gets),
              "DELETE_BATCH": m.delete_batches}
    for op, value in m.operations.items():  # other backends count GETs and LISTs themselves
        if op not in ("PUT", "DELETE"):
            counts[op] = counts.get(op, 0.0) + value
    at_start = {"PUT": start_puts, "LIST": float(LIST_AT_START * n + done.early_lists + 1), "GET": float(done.early_gets)}
    return counts, at_start


class Compactions(NamedTuple):
    """Files at level 1 and up uploaded since litestream started (its compactions and snapshots), the
    GETs and LISTs they made, and the part of each in its first START_SECONDS."""

    count: int = 0
    gets: int = 0
    lists: int = 0
    early: int = 0
    early_gets: int = 0
    early_lists: int = 0


def lists_per_upload(level: int, compaction_levels: int) -> int:
    """The LISTs litestream 0.5.17 makes around one file uploaded at `level` (seen in moto's log)."""
    if level == 1:
        return LIST_PER_L1_COMPACTION
    if level == SNAPSHOT_LEVEL:
        return LIST_PER_SNAPSHOT_BASE + compaction_levels
    return LIST_PER_COMPACTION


def compactions_since(listing, started_at: float, compaction_levels: int = 2) -> Compactions:
    """What litestream's compactions and snapshots since its start cost, read from the listing.

    A compaction reads its source files from the local disk when it can: L0 files are there,
    higher levels are not, so each compaction into level 2 and up GETs the source-level files its
    txid range covers. `compaction_levels`: the levels configured above L0 (a snapshot's retention
    lists each).
    """
    compactions = gets = lists = early = early_gets = early_lists = 0
    for files in listing.dbs.values():
        for f in files:
            at = f.listed_at.timestamp()
            if f.level < 1 or at < started_at:
                continue
            read = 0
            if 2 <= f.level < SNAPSHOT_LEVEL:
                read = sum(1 for src in files if src.level == f.level - 1
                           and src.min_txid >= f.min_txid and src.max_txid <= f.max_txid)
            listed = lists_per_upload(f.level, compaction_levels)
            compactions, gets, lists = compactions + 1, gets + read, lists + listed
            if at < started_at + START_SECONDS:
                early, early_gets, early_lists = early + 1, early_gets + read, early_lists + listed
    return Compactions(compactions, gets, lists, early, early_gets, early_lists)


GO_EPOCH_OFFSET = 62_135_596_800  # seconds from Go's zero time (year 1), where its Truncate counts, to 1970


def idle_ticks_since(listing, levels: tuple[timedelta, ...], started_at: float, read_at: float,
                     databases: set[str] | None = None) -> int:
    """Compaction ticks since litestream started that LIST a level and find nothing to compact.

    Litestream 0.5.17 skips a tick without a request only when the source level's newest txid is at
    or below the *oldest* txid of the destination level's newest file (`Store.CompactDB`). While that
    file spans several txids (it merged more than one file: a database whose last activity was more
    than one sync), every tick of the level lists the level below and finds nothing, until new data
    arrives: with the shipped 10-minute L1 that is 6 LISTs an hour per idle database (12 with 5 minutes). Counted from one listing,
    per database and level: each file that spans txids is the newest from its upload until the next
    file's (whose own tick compacted, so is not idle), or until now; its ticks (on multiples of the
    interval, counted from Go's zero time as litestream's Truncate does) since then, or since
    litestream started, are idle, except those after the level below received newer data (the next
    tick compacts it). `databases`: the replica-relative names of the databases litestream runs (a
    replica it no longer runs, a property removed, makes no request).
    """
    ticks = 0
    for name, files in listing.dbs.items():
        if databases is not None and name not in databases:
            continue
        by_level: dict[int, list] = {}
        for f in files:
            if f.level < SNAPSHOT_LEVEL:
                by_level.setdefault(f.level, []).append(f)
        for level, interval in enumerate(levels, start=1):
            step = interval.total_seconds()
            dst_files = sorted(by_level.get(level, []), key=lambda f: f.max_txid)
            if step <= 0 or not dst_files:
                continue
            src_files = by_level.get(level - 1, [])
            if not src_files:
                continue  # nothing below (litestream keeps each level's newest file): its newest txid is 0
            for i, f in enumerate(dst_files):
                if f.min_txid >= f.max_txid:
                    continue  # one txid: the level below has nothing past it, the tick asks nothing
                born = f.listed_at.timestamp()
                if i + 1 < len(dst_files):  # the tick that wrote the next file compacted: not idle
                    until, compacting = dst_files[i + 1].listed_at.timestamp(), 1
                else:  # newer data below ends the streak at the tick that will compact it
                    newer = [s.listed_at.timestamp() for s in src_files if s.max_txid > f.max_txid]
                    until, compacting = min(newer, default=read_at), 0
                until = min(until, read_at)
                since = max(born, started_at)
                if until <= since:
                    continue
                n = (math.floor((until + GO_EPOCH_OFFSET) / step) - math.floor((since + GO_EPOCH_OFFSET) / step)
                     - compacting)
                ticks += max(0, n)
    return ticks


def replica_names(settings: Settings, databases: tuple[str, ...]) -> set[str]:
    """The databases litestream runs, by their names in a listing of the replica root (their paths
    under the data directory, as litestream.yml maps them)."""
    from pathlib import Path

    data_dir = settings.data_dir.resolve()
    names = set()
    for db in databases:
        try:
            names.add(Path(db).resolve().relative_to(data_dir).as_posix())
        except ValueError:
            continue
    return names


def list_replica(settings: Settings):
    """One listing of the replica root (every database under it)."""
    from edgehost.engine.bucket import list_root
    from edgehost.engine.litestream import replication
    from edgehost.engine.replica import ReplicaStore

    repl = replication(settings)
    store = ReplicaStore(repl.tenants_root, settings.s3_endpoint, settings.s3_region, dict(settings.environ))
    return list_root(store)


def estimate(settings: Settings, listing=None, *, metrics: LitestreamMetrics | None = None,
             list_replica_now: bool = True) -> dict[str, Any]:
    """The month's estimated R2 bill as a dict (the JSON of `edgehost cost --json`).

    `listing`: a listing of the replica root already made (none is made then); without one and with
    `list_replica_now` false, storage and compactions are left unknown (a cheap call for the
    supervisor's status page: one local HTTP request).
    """
    from edgehost.engine.litestream import read_config

    m = metrics or read_metrics(settings)
    cfg = read_config(settings)
    if listing is None and list_replica_now:
        listing = list_replica(settings)
    window = max(1.0, m.read_at - m.started_at)
    compactions = compactions_since(listing, m.started_at, len(cfg.levels)) if listing is not None else None
    idle_ticks = (idle_ticks_since(listing, cfg.levels, m.started_at, m.read_at, replica_names(settings, m.databases))
                  if listing is not None else 0)
    counts, at_start = model_requests(m, settings, cfg.l0_retention_check_interval.total_seconds(),
                                      compactions, idle_ticks)
    per_second = {op: c / window for op, c in counts.items()}
    steady = {op: max(0.0, c - at_start.get(op, 0.0)) / window for op, c in counts.items()}
    month = {op: round(steady[op] * MONTH_SECONDS + at_start.get(op, 0.0)) for op in counts}
    by_class_month = {"A": 0, "B": 0, "free": 0}
    by_class_second = {"A": 0.0, "B": 0.0, "free": 0.0}
    for op in counts:
        by_class_month[CLASS_OF.get(op, "A")] += month[op]
        by_class_second[CLASS_OF.get(op, "A")] += per_second[op]
    storage_bytes = listing.bytes if listing is not None else None
    gb = storage_bytes / GB if storage_bytes is not None else 0.0
    notes = []
    if window < SHORT_WINDOW_SECONDS:
        notes.append(f"short window: litestream has run {window / 60:.0f} min; its start weighs on the "
                     f"rates until it has run 15 min or more")
    if not settings.is_s3:
        notes.append("the replica is not on S3/R2: nothing is billed; the figures are what R2 would bill")
    if storage_bytes is None:
        notes.append("storage not listed: the bill leaves it out")
    return {
        "window": {"start": m.started_at, "end": m.read_at, "seconds": round(window, 1)},
        "databases": len(m.databases),
        "replica_type": m.replica_type or ("s3" if settings.is_s3 else "file"),
        "requests_per_month": {"by_class": by_class_month, "by_operation": month},
        "requests_per_second": {"by_class": by_class_second, "by_operation": per_second},
        "requests_in_window": {op: round(c) for op, c in counts.items()},
        "counted_by_litestream": {op: v for op, v in sorted(m.operations.items())},
        "modelled": {"LIST": counts["LIST"], "lease_PUT": counts["PUT"] - m.operations.get("PUT", 0.0),
                     "compactions_listed": compactions.count if compactions else None,
                     "compaction_GET": compactions.gets if compactions else None,
                     "idle_compaction_ticks": idle_ticks if listing is not None else None},
        "storage": {"bytes": storage_bytes, "gb": gb},
        "bill": bill(by_class_month["A"], by_class_month["B"], gb),
        "prices": {"as_of": PRICES_AS_OF, "source": PRICES_SOURCE, "class_a_per_million": CLASS_A_PER_MILLION,
                   "class_b_per_million": CLASS_B_PER_MILLION, "storage_per_gb_month": STORAGE_PER_GB_MONTH,
                   "free_class_a": FREE_CLASS_A, "free_class_b": FREE_CLASS_B,
                   "free_storage_gb_month": FREE_STORAGE_GB_MONTH},
        "short_window": window < SHORT_WINDOW_SECONDS,
        "note": "; ".join(notes),
    }


def summary(settings: Settings, listing=None) -> dict[str, Any]:
    """A small dict for the supervisor's status page (`Supervisor.cost_summary`); never raises.

    Cheap: one local HTTP request to litestream's metrics and a read of litestream.yml; no listing
    of the replica unless one is handed in (then storage and compactions count too).
    """
    from edgehost.errors import EdgehostError

    try:
        report = estimate(settings, listing, list_replica_now=False)
    except EdgehostError as exc:
        return {"ok": False, "error": str(exc)}
    month = report["requests_per_month"]["by_class"]
    return {"ok": True, "window_seconds": report["window"]["seconds"], "short_window": report["short_window"],
            "class_a_per_month": month["A"], "class_b_per_month": month["B"],
            "storage_gb": report["storage"]["gb"] if report["storage"]["bytes"] is not None else None,
            "bill_before_free_tier": report["bill"]["before_free_tier"],
            "bill_after_free_tier": report["bill"]["after_free_tier"],
            "prices_as_of": PRICES_AS_OF, "note": report["note"]}
