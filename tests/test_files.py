"""Files written whole (`edgehost.files.write_atomic`): state, generated configs, mirrored LTX files."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from edgehost import files
from edgehost.files import write_atomic


def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    write_atomic(target, '{"old": true}')

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(OSError):
        write_atomic(target, '{"new": true}')
    assert target.read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_the_mode_and_time_are_the_new_files_from_its_first_moment(tmp_path):
    target = tmp_path / "sub" / "edgehost.plist"
    write_atomic(target, b"<plist/>", mode=0o644, fsync=True, mtime_ns=1_700_000_000_000_000_000)
    info = target.stat()
    assert stat.S_IMODE(info.st_mode) == 0o644 and info.st_mtime_ns == 1_700_000_000_000_000_000
    assert target.read_bytes() == b"<plist/>"


def test_writers_of_one_file_at_once_never_leave_a_mixed_or_torn_file(tmp_path):
    """Eight threads replace one file over and over while a reader reads it: every read is one writer's
    whole content (a shared temporary name would mix two writers' bytes)."""
    target = tmp_path / "alerts.json"
    bodies = [bytes([65 + i]) * 200_000 for i in range(8)]
    write_atomic(target, bodies[0])
    stop, bad = threading.Event(), []

    def writer(body: bytes) -> None:
        for _ in range(40):
            write_atomic(target, body)

    def reader() -> None:
        while not stop.is_set():
            got = target.read_bytes()
            if got not in bodies:
                bad.append((len(got), got[:1], got[-1:]))

    threads = [threading.Thread(target=writer, args=(b,)) for b in bodies]
    watch = threading.Thread(target=reader)
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watch.join()
    assert not bad, bad[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alerts.json"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
