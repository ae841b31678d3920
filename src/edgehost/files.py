"""Files the kit writes whole: state, generated configs, a mirror's LTX files."""

from __future__ import annotations

import errno
import fcntl
import os
import uuid
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, *, mode: int | None = None, fsync: bool = False,
                 mtime_ns: int | None = None) -> None:
    """Replace `path` with `data` in one rename: a reader (or a crash) finds the old file or the new
    one, never part of one.

    The temporary file sits beside `path` under a name no other process or thread uses, so two
    writers of one file never write into each other's; it is removed if anything fails. `mode` is set
    before the rename (a plist must never be group-writable, not even for a moment); `fsync` makes
    the file and the rename durable before returning (what a power cut must not undo); `mtime_ns`
    sets the file's modification time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                out.flush()
                _fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(fd: int) -> None:
    """To the disk itself: on macOS plain fsync() leaves the data in the drive's cache, F_FULLFSYNC
    flushes it (what SQLite's `PRAGMA fullfsync` does)."""
    if hasattr(fcntl, "F_FULLFSYNC"):
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except OSError:
            pass  # a filesystem without it: plain fsync
    os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    """The rename made durable. The new file is in place already, so a filesystem that cannot sync a
    directory (some network and FUSE ones) is no reason to report the write as failed."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)
