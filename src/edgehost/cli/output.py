"""Where reports go: rich on stderr for people, JSON on stdout for programs."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
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
