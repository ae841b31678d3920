"""Where reports go: rich on stderr for people, JSON on stdout for programs."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(stderr=True)


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=_default, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def report_written(written: list[dict[str, str]], dep: Any, as_json: bool) -> None:
    """What `launchd render` / `systemd render` wrote: each file and where installing puts it."""
    if as_json:
        emit_json({"files": written, "user": dep.user, "group": dep.group, "program": str(dep.program)})
        return
    for w in written:
        console.print(f"{w['path']}  ->  {w['installs_to']}", markup=False, highlight=False, soft_wrap=True)


def ago(when: str | datetime | None, now: datetime | None = None) -> str:
    """A time as people read it in a table: "12s ago", "3m ago", "5h ago", "2d ago" ("-" when unknown)."""
    if not when:
        return "-"
    if isinstance(when, str):
        from edgehost.engine.litestream import parse_go_time

        try:
            when = parse_go_time(when)
        except ValueError:
            try:
                when = datetime.fromisoformat(when.replace("Z", "+00:00"))
            except ValueError:
                return when
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    seconds = ((now or datetime.now(timezone.utc)) - when).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if seconds >= size or unit == "s":
            text = f"{int(seconds // size)}{unit}"
            return f"in {text}" if future else f"{text} ago"
    return "-"


def short_txid(txid: str | None) -> str:
    """A 16-hex-digit txid without its leading zeros (0000000000002a3f -> 2a3f); --json keeps all 16."""
    if not txid:
        return "-"
    return txid.lstrip("0") or "0"
