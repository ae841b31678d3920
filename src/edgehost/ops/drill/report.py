"""The drill's report: per database and overall, rendered as Markdown and kept (locally, in the kit's state DB, in the replica)."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edgehost.engine import litestream
from edgehost.errors import EdgehostError
from edgehost.ops import state
from edgehost.settings import Settings


Progress = Callable[[str], None]


# A scratch dir a drill left behind (killed mid-run) is removed by the next drill after this long.
STALE_SCRATCH_SECONDS = 24 * 3600


KEPT_MARKER = ".kept"  # `--keep` scratch dirs carry it and are never pruned


@dataclass
class DrillDatabase:
    name: str
    restored: bool = False
    txid: str = ""  # the replicated txid the restore reached
    restore_seconds: float = 0.0
    # The age of the oldest write the restore lacks, against the live DB read when the restore point
    # was decided (or against --at): 0 when nothing is missing, None when it cannot be told.
    rpo_seconds: float | None = None
    live_txid: str = ""  # litestream's local txid at that instant ("" when litestream did not answer)
    newest_replicated_at: str = ""  # the newest dated row the restore held
    oldest_missing_at: str = ""  # the oldest dated live row it lacked
    missing_rows: dict[str, int] = field(default_factory=dict)  # table -> live rows the restore lacked
    rows: dict[str, int] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)  # check -> "ok" or what failed

    @property
    def ok(self) -> bool:
        return self.restored and all(v == "ok" for v in self.checks.values())


@dataclass
class DrillReport:
    scenario: str
    started_at: str
    finished_at: str = ""
    host: str = field(default_factory=socket.gethostname)
    point: str = "latest"
    status: str = "error"  # pass | fail | error
    rto_seconds: float | None = None
    rpo_seconds: float | None = None  # the worst database's
    rpo_database: str = ""  # that database ("" when no restore lacked anything)
    lag_alert_seconds: float | None = None
    restore_seconds: float | None = None
    portal_boot_seconds: float | None = None
    scratch_dir: str = ""
    databases: list[DrillDatabase] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for db, src in zip(data["databases"], self.databases):
            db["ok"] = src.ok
        return data


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def keep_reports(settings: Settings) -> int:
    """How many drill reports to keep: drill_keep_reports (EDGEHOST_DRILL_KEEP_REPORTS), default 12."""
    return settings.drill_keep_reports


def _drill_root(settings: Settings) -> Path:
    root = settings.state_dir / "drills"
    root.mkdir(parents=True, exist_ok=True)
    return root


def render_markdown(report: DrillReport) -> str:
    verdict = {"pass": "PASS", "fail": "FAIL", "error": "COULD NOT RUN"}[report.status]
    lines = [
        f"# edgehost drill ({report.scenario}): {verdict}",
        "",
        f"- started {report.started_at}, finished {report.finished_at}, on {report.host}",
        f"- restore point: {report.point}",
        "- RTO (restore start to portal healthy on restored data): "
        + (f"{report.rto_seconds:.2f} s" if report.rto_seconds is not None else "n/a"),
    ]
    if report.scenario == "full":
        lines.append("- RPO (worst database; the age of the oldest write the restore lacked): "
                     + (f"{report.rpo_seconds:.1f} s" if report.rpo_seconds is not None else "n/a")
                     + (f" ({report.rpo_database})" if report.rpo_database else "")
                     + (f"; fails beyond lag_alert_seconds = {report.lag_alert_seconds:g} s"
                        if report.lag_alert_seconds is not None else ""))
    if report.restore_seconds is not None:
        lines.append(f"- restore of every database: {report.restore_seconds:.2f} s; portal boot: "
                     + (f"{report.portal_boot_seconds:.2f} s" if report.portal_boot_seconds is not None else "n/a"))
    if report.scratch_dir:
        lines.append(f"- scratch data kept in {report.scratch_dir}")
    lines += [f"- {note}" for note in report.notes]
    lines += ["", "| database | verdict | txid | live txid | rows | missing | RPO (s) | restore (s) | failed checks |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for db in report.databases:
        bad = "; ".join(f"{c}: {d}" for c, d in db.checks.items() if d != "ok") or "-"
        rpo = "-" if db.rpo_seconds is None else f"{db.rpo_seconds:.1f}"
        lines.append(f"| {db.name} | {'ok' if db.ok else 'FAIL'} | {db.txid or '-'} | {db.live_txid or '-'} | "
                     f"{sum(db.rows.values())} | {sum(db.missing_rows.values())} | {rpo} | {db.restore_seconds:.2f} | {bad} |")
    if report.failures:
        lines += ["", "## What failed", ""] + [f"- {f}" for f in report.failures]
        lines += ["", "See docs/dr-drill.md, 'When a drill fails'."]
    return "\n".join(lines) + "\n"


def _report_stem(report: DrillReport) -> str:
    return f"drill-{report.started_at.replace(':', '')}"


def save(settings: Settings, report: DrillReport, path: Path | None) -> tuple[Path, Path]:
    """Keep the report: in the replica (so the history outlives this machine), in the kit's state DB,
    and as Markdown and JSON in state/drills (and at `path`); only the last N of each are kept."""
    keep = keep_reports(settings)
    try:
        key = state.store_drill_in_replica(settings, report.as_dict(), keep)
        report.notes.append(f"report stored in the replica as {key}")
    except (EdgehostError, OSError) as exc:
        report.notes.append(f"report not stored in the replica: {exc}")
    data = report.as_dict()
    state.record_drill(settings, data, keep=keep)
    root = _drill_root(settings)
    dated = root / f"{_report_stem(report)}.md"
    markdown, js = render_markdown(report), json.dumps(data, indent=2, default=str) + "\n"
    dated.write_text(markdown)
    dated.with_suffix(".json").write_text(js)
    prune_reports(root, keep)
    if path is None:
        return dated, dated.with_suffix(".json")
    md = Path(path)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(markdown)
    md.with_suffix(".json").write_text(js)
    return md, md.with_suffix(".json")


def prune_reports(root: Path, keep: int) -> list[str]:
    """Delete the dated reports (drill-<time>.md and .json) in `root` beyond the newest `keep`."""
    stems = sorted({p.stem for p in root.glob("drill-*") if p.is_file() and p.suffix in (".md", ".json")})
    old = stems[:-keep] if keep > 0 else stems
    for stem in old:
        for suffix in (".md", ".json"):
            (root / f"{stem}{suffix}").unlink(missing_ok=True)
    return old
