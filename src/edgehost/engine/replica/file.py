"""A replica in a local directory (file://): the default, and what tests and the drill's scratch use."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from edgehost.engine.replica import PreconditionFailed, ReplicaObject, ReplicaStore, _sha256
from edgehost.errors import EnvironmentProblem
from edgehost.files import write_atomic


class FileStore(ReplicaStore):
    scheme = "file"

    def __init__(self, url: str, endpoint: str = "", region: str = "", environ: dict[str, str] | None = None):
        super().__init__(url)
        self.root = Path(unquote(urlparse(self.url).path))

    def list_dirs(self, rel: str = "") -> list[str]:
        base = self.root / rel
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def walk(self, rel: str = "") -> Iterator[ReplicaObject]:
        base = self.root / rel
        if not base.is_dir():
            return
        for dirpath, _, files in os.walk(base):
            for f in files:
                p = Path(dirpath) / f
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue  # renamed or deleted since the directory was read (litestream's .tmp, compaction)
                yield ReplicaObject(str(p.relative_to(self.root)), st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc))

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def get(self, rel: str) -> bytes:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            from edgehost.engine.bucket import ObjectGone

            raise ObjectGone(f"replica {self.url}: {rel} is gone") from None

    def write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def delete(self, rel: str) -> None:
        path = self.root / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def head(self, rel: str) -> dict[str, str]:
        (self.root / rel).stat()
        return {}

    def get_versioned(self, rel: str) -> tuple[bytes, str, float | None] | None:
        try:
            with open(self.root / rel, "rb") as f:
                # fstat and read the same open file: a concurrent os.replace cannot mix versions.
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return None
        return data, _sha256(data), max(0.0, time.time() - st.st_mtime)

    def put_if_absent(self, rel: str, data: bytes) -> str:
        with self._lock(rel):
            if (self.root / rel).exists():
                raise PreconditionFailed(f"replica {self.url}: {rel} already exists")
            return self._replace(rel, data)

    def put_if_match(self, rel: str, data: bytes, etag: str) -> str:
        with self._lock(rel):
            try:
                current = (self.root / rel).read_bytes()
            except FileNotFoundError:
                raise PreconditionFailed(f"replica {self.url}: {rel} is gone") from None
            if _sha256(current) != etag:
                raise PreconditionFailed(f"replica {self.url}: {rel} changed")
            return self._replace(rel, data)

    def reachable(self) -> None:
        if self.root.exists() and not os.access(self.root, os.R_OK | os.X_OK):
            raise EnvironmentProblem(f"replica {self.url}: not readable")

    def _lock(self, rel: str) -> "_Flock":
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return _Flock(path.with_name(path.name + ".lock"))

    def _replace(self, rel: str, data: bytes) -> str:
        # A temp file and os.replace: a reader sees the old version or the new one, never half of one.
        write_atomic(self.root / rel, data, fsync=True)
        return _sha256(data)


class _Flock:
    """An exclusive flock on a lock file, held for a `with` block (between processes and threads alike)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
