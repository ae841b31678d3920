"""One replica, one history: find a database whose replica holds more than one sequence of txids.

Litestream 0.5 names LTX files by level and txid range only. When litestream meets a replica with
local state that does not match it (`litestream reset`, `auto-recover`, a replica switch the kit
did not see), it starts the txids again at 1 under the same path, beside (or over) the files the
earlier run left. A restore then stitches the two together: the latest point may be the old run's
snapshot, or the new run's changes applied on top of it, and nothing fails. What still shows it
in a listing (`litestream ltx -json`, or one LIST of the bucket):

- **restart**: txids going backwards in time. A file that begins at txid 1 (the start of a history,
  or a snapshot of it) written after a file that ends higher; or, within one level, a file written
  after another of that level that ends higher. One history writes each level in txid order, and a
  snapshot only covers txids that already exist.
- **overlap** and **gap**: within one of levels 0-8 the files of one history are contiguous, each
  beginning one past where the previous ended (what Litestream's own `verify-compaction` checks).

Times are what the listing gives: on a file replica the LTX header time (Litestream sets the mtime
to it), on S3 the upload time, whole seconds in `litestream ltx -json`. An L0 upload can finish a
moment after a snapshot taken at the same txid, so a restart counts only past `slack_seconds`.
A history that restarts and then grows past the old one's every txid, once its first files are
compacted and pruned, looks like one history to a listing: this finds what the files still show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import pairwise
from typing import Any, Iterable, Mapping

SNAPSHOT_LEVEL = 9
SLACK_SECONDS = 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# file replica: ltx/<level>/<min>-<max>.ltx; S3: <level, 4 digits>/<min>-<max>.ltx
_KEY_RE = re.compile(r"(?:^|/)(?:ltx/(\d+)|([0-9a-f]{4}))/([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")


@dataclass(frozen=True)
class LtxRange:
    """One LTX file as a listing shows it."""

    level: int
    min_txid: int
    max_txid: int
    written: datetime | None = None  # LTX header time (file replica) or upload time (S3)

    @property
    def label(self) -> str:
        where = "snapshot" if self.level == SNAPSHOT_LEVEL else f"L{self.level}"
        return f"{where} {self.min_txid:016x}-{self.max_txid:016x}"


def _time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _txid(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def ltx_range(item: Any) -> LtxRange | None:
    """One listing entry as an LtxRange; None for an object that is not an LTX file.

    Takes a `litestream ltx -json` entry (hex txids, `timestamp`), a parsed file with `level`,
    `min_txid`, `max_txid` and `listed_at` (restore.LtxFile), or a bucket object with `key` and
    `modified` (replica.ReplicaObject, its key relative to the database's replica root).
    """
    if isinstance(item, LtxRange):
        return item
    get = item.get if isinstance(item, Mapping) else lambda name, default=None: getattr(item, name, default)
    if get("min_txid") is not None and get("max_txid") is not None:
        when = get("timestamp") or get("listed_at") or get("written") or get("created_at")
        return LtxRange(int(get("level")), _txid(get("min_txid")), _txid(get("max_txid")), _time(when))
    m = _KEY_RE.search(str(get("key") or ""))
    if not m:
        return None
    level = int(m.group(1)) if m.group(1) is not None else int(m.group(2), 16)
    return LtxRange(level, int(m.group(3), 16), int(m.group(4), 16), _time(get("modified") or get("listed_at")))


@dataclass(frozen=True)
class Span:
    """A run of LTX files believed to belong to one history."""

    min_txid: int
    max_txid: int
    levels: tuple[int, ...]
    files: int
    first_written: datetime | None
    last_written: datetime | None

    @classmethod
    def of(cls, files: list[LtxRange]) -> "Span":
        times = sorted(f.written for f in files if f.written is not None)
        return cls(min(f.min_txid for f in files), max(f.max_txid for f in files),
                   tuple(sorted({f.level for f in files})), len(files),
                   times[0] if times else None, times[-1] if times else None)

    def text(self) -> str:
        levels = ", ".join("snapshot" if lv == SNAPSHOT_LEVEL else f"L{lv}" for lv in self.levels)
        when = ""
        if self.first_written is not None:
            first, last = _stamp(self.first_written), _stamp(self.last_written)
            when = f", written {first}" if first == last else f", written {first} to {last}"
        count = f"{self.files} file" + ("s" if self.files != 1 else "")
        return f"txids {self.min_txid:016x}-{self.max_txid:016x} ({count}: {levels}{when})"


def _stamp(when: datetime | None) -> str:
    return "?" if when is None else when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class HistorySplit:
    """Evidence of a second history: two sequences of one database's txids in one replica."""

    kind: str  # restart | overlap | gap
    older: Span  # by when written; by txid when the listing has no times
    newer: Span
    evidence: str  # the two files that show it

    @property
    def detail(self) -> str:
        return f"{self.older.text()} and {self.newer.text()}: {self.evidence}"


def _earliest_higher(files: list[LtxRange]) -> list[tuple[LtxRange, datetime | None]]:
    """Each file with the earliest time among the files that end at a higher txid."""
    out, earliest, i = [], None, 0
    ordered = sorted(files, key=lambda f: f.max_txid, reverse=True)
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j].max_txid == ordered[i].max_txid:
            out.append((ordered[j], earliest))
            j += 1
        for f in ordered[i:j]:
            earliest = f.written if earliest is None or f.written < earliest else earliest
        i = j
    return out


def _restart(files: list[LtxRange], slack: float) -> HistorySplit | None:
    timed = [f for f in files if f.written is not None]
    late = lambda f, early: early is not None and (f.written - early).total_seconds() > slack  # noqa: E731
    # A file written after one that ends higher: across levels when it is an L0 file that begins a
    # history (txid 1: only a new history writes one), within its own level always. A compaction into
    # a higher level may cover txid 1 and be written any time later: that alone is one history.
    new = [f for f, early in _earliest_higher(timed) if f.min_txid == 1 and f.level == 0 and late(f, early)]
    for level in {f.level for f in timed}:
        new += [f for f, early in _earliest_higher([f for f in timed if f.level == level]) if late(f, early)]
    if not new:
        return None
    first_new = min(f.written for f in new)
    start = min((f for f in new if f.written == first_new), key=lambda f: (f.max_txid, f.level))
    old = max((g for g in timed if g.max_txid > start.max_txid and (start.min_txid == 1 or g.level == start.level)
               and (start.written - g.written).total_seconds() > slack),
              key=lambda g: (g.written, g.max_txid))
    newer = [f for f in timed if f.written >= first_new]
    older = [f for f in timed if f.written < first_new]
    gap = (start.written - old.written).total_seconds()
    why = "begin again at 1" if start.min_txid == 1 else "go back"
    return HistorySplit("restart", Span.of(older), Span.of(newer),
                        f"txids {why}: {start.label} was written {gap:.0f}s after {old.label}")


def _stretches(level_files: list[LtxRange]) -> list[list[LtxRange]]:
    """One level's files as contiguous stretches (each file beginning one past the previous one's
    end), lowest first; one history makes a single stretch per level."""
    out: list[list[LtxRange]] = []
    for f in sorted(level_files, key=lambda r: (r.min_txid, r.max_txid)):
        for run in out:
            if run[-1].max_txid + 1 == f.min_txid:
                run.append(f)
                break
        else:
            out.append([f])
    return sorted(out, key=lambda run: (run[0].min_txid, run[-1].max_txid))


def _last_written(run: list[LtxRange]) -> datetime | None:
    return max((f.written for f in run if f.written is not None), default=None)


def history(files: Iterable[Any], slack_seconds: float = SLACK_SECONDS) -> list[HistorySplit]:
    """Where one database's LTX listing shows more than one history; empty when it shows one.

    `files`: `litestream ltx -json` entries (litestream.ltx_files), restore.LtxFile, or bucket objects
    under the database's replica root (replica.ReplicaObject); objects that are not LTX files are
    skipped. A restart (txids going backwards in time) comes first, then each level's overlaps and
    gaps, lowest level first.
    """
    ranges = [r for r in (ltx_range(f) for f in files) if r is not None]
    splits: list[HistorySplit] = []
    restart = _restart(ranges, slack_seconds)
    if restart is not None:
        splits.append(restart)
    levels: dict[int, list[LtxRange]] = {}
    for r in ranges:
        levels.setdefault(r.level, []).append(r)
    for level in sorted(levels):
        if level == SNAPSHOT_LEVEL:
            continue  # every snapshot begins at txid 1
        for before, after in pairwise(_stretches(levels[level])):
            b = after[0]
            older, newer = before, after
            if (_last_written(before) or _EPOCH) > (_last_written(after) or _EPOCH):
                older, newer = after, before
            if b.min_txid > before[-1].max_txid:
                kind, evidence = "gap", f"L{level} skips txids {before[-1].max_txid + 1:016x}-{b.min_txid - 1:016x}"
            else:
                a = next((a for a in before if a.min_txid <= b.max_txid and b.min_txid <= a.max_txid), before[-1])
                kind = "overlap"
                evidence = (f"L{level} files {a.min_txid:016x}-{a.max_txid:016x} and "
                            f"{b.min_txid:016x}-{b.max_txid:016x} overlap")
            splits.append(HistorySplit(kind, Span.of(older), Span.of(newer), evidence))
    return splits
