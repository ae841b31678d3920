"""Restores, done by the real litestream binary: one database to a new file, never over an existing one."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Mapping

from . import litestream
from .errors import BadInput, EdgehostError


@dataclass
class RestoreResult:
    """What happened to one database."""

    name: str
    target: str
    ok: bool
    txid: str = ""
    seconds: float = 0.0
    size: int = 0
    error: str = ""


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        return "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:3])
    finally:
        conn.close()


def _ensure_wal(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


def restore_db(
    binary: Path,
    env: Mapping[str, str],
    url: str,
    out: Path,
    *,
    name: str = "",
    txid: int | None = None,
    timestamp: datetime | None = None,
    timeout: float = 600,
) -> RestoreResult:
    """Restore `url` (at `txid` or `timestamp`, else the latest) to `out`, which must not exist.

    The restore lands in a temporary file beside `out`, passes `PRAGMA integrity_check`, and is
    then linked into place, so `out` either appears whole or not at all.
    """
    out = Path(out)
    result = RestoreResult(name=name or out.name, target=str(out), ok=False)
    if out.exists():
        result.error = f"{out} already exists"
        return result
    out.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name must not match the property DB pattern Litestream watches.
    tmp = out.parent / f".restoring-{secrets.token_hex(6)}.tmp"
    args = ["restore", "-json", "-o", str(tmp)]
    if txid is not None:
        args += ["-txid", f"{txid:016x}"]
    if timestamp is not None:
        args += ["-timestamp", timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")]
    started = time.monotonic()
    try:
        proc = litestream.run(binary, [*args, url], env, timeout=timeout)
        if proc.returncode != 0:
            result.error = _explain(litestream.last_line(proc.stderr) or "restore failed")
            return result
        try:
            summary = json.loads(proc.stdout)
            result.txid = str(summary.get("txid", ""))
        except ValueError:
            pass
        check = _integrity(tmp)
        if check != "ok":
            result.error = f"integrity_check: {check}"
            return result
        _ensure_wal(tmp)
        for suffix in ("-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        try:
            os.link(tmp, out)  # fails if out appeared meanwhile: never overwrite
        except FileExistsError:
            result.error = f"{out} appeared during the restore; left untouched"
            return result
        result.ok = True
        result.size = out.stat().st_size
    except EdgehostError as exc:
        result.error = str(exc)
    except sqlite3.DatabaseError as exc:
        result.error = f"restored file is not a usable database: {exc}"
    finally:
        result.seconds = round(time.monotonic() - started, 3)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    return result


def _explain(message: str) -> str:
    message = message.removeprefix("Error: ")
    if "no matching backup files" in message:
        return f"{message} (nothing replicated at that point, or no such database in the replica)"
    if "timestamp does not exist" in message:
        return f"{message} (the time is outside the replica's point-in-time window)"
    return message


def parse_txid(text: str) -> int:
    """A txid as Litestream prints it (16 hex digits) or shorter hex."""
    try:
        value = int(text.strip().lower().removeprefix("0x"), 16)
    except (ValueError, AttributeError):
        raise BadInput(f"invalid txid {text!r}: give the hex id Litestream prints, e.g. 000000000000002a") from None
    if value <= 0 or value >= 2**64:
        raise BadInput(f"invalid txid {text!r}: out of range")
    return value
