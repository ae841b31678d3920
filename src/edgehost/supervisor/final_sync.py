"""The final sync at stop: every database on disk replicated up to its local txid before litestream goes.

litestream 0.5.17 exits within milliseconds of SIGTERM and skips a database it has discovered but
not synced yet (a property created a moment earlier), so the supervisor drives the last sync itself
over the control socket, with the writers already stopped, and checks what the replica reached.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from edgehost.errors import EdgehostError
from edgehost.engine.layout import DatabaseRef
from edgehost.engine.litestream import ControlSocket


@dataclass
class FinalSync:
    """What the final sync reached for one database."""

    name: str
    path: str
    landed: bool = False
    local_txid: int | None = None
    replicated_txid: int | None = None
    error: str = ""
    seconds: float = 0.0

    def describe(self) -> str:
        if self.landed:
            return f"{self.name}: replicated txid {self.replicated_txid:016x}"
        if self.local_txid is not None:
            where = f"replica at txid {self.replicated_txid or 0:016x}, local {self.local_txid:016x}"
        else:  # no sync answered with positions: a failed call says why; none at all, it never synced
            where = "" if self.error else "never synced"
        return f"{self.name}: " + ": ".join(part for part in (where, self.error) if part)


RETRY_EVERY = 0.2  # seconds between tries while a database is not watched, not open or not uploaded
LOCAL_STATE_BROKEN = "open ltx file"  # litestream lost an LTX file it still needs to upload


def sync_one(sock: ControlSocket, ref: DatabaseRef, deadline: float, cancel: threading.Event) -> FinalSync:
    """Wait until litestream watches `ref`, then sync and wait for the upload, retrying until the deadline."""
    started = time.monotonic()
    result = FinalSync(ref.label, str(ref.path))
    while not cancel.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            result.error = result.error or "deadline passed"
            break
        try:
            # wait=True makes litestream turn the WAL into LTX and upload it before answering.
            reply = sock.sync(ref.path, wait=True, timeout=max(1, int(left)))
            result.local_txid = int(reply["txid"])
            result.replicated_txid = int(reply["replicated_txid"])
            if result.local_txid > 0 and result.replicated_txid >= result.local_txid:
                result.landed, result.error = True, ""
                break
            result.error = "upload not confirmed yet"
        except EdgehostError as exc:
            # 404: the directory watcher has not seen a new database yet; 409: it is not open yet.
            result.error = str(exc)
            if LOCAL_STATE_BROKEN in result.error:
                break  # retrying cannot help: see docs/litestream-tuning.md, "When the replica changes"
        cancel.wait(min(RETRY_EVERY, max(0.0, deadline - time.monotonic())))
    result.seconds = round(time.monotonic() - started, 3)
    return result


def final_sync(sock: ControlSocket, refs: list[DatabaseRef], timeout: float, cancel: threading.Event,
               parallel: int = 16) -> list[FinalSync]:
    """Sync every database in `refs` and report, per database, whether the replica reached its local txid."""
    if not refs:
        return []
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(max_workers=min(parallel, len(refs))) as pool:
        return list(pool.map(lambda ref: sync_one(sock, ref, deadline, cancel), refs))
