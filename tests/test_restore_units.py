"""restore.py pieces that need no replica."""

import pytest


def test_a_restore_onto_a_filesystem_without_hard_links_still_never_overwrites(tmp_path, monkeypatch):
    import os as _os

    from edgehost.restore import _place

    def no_links(*_a):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(_os, "link", no_links)
    src = tmp_path / "restored.tmp"
    src.write_bytes(b"restored")
    _place(src, tmp_path / "out.db")
    assert (tmp_path / "out.db").read_bytes() == b"restored"
    src.write_bytes(b"other")
    with pytest.raises(FileExistsError):
        _place(src, tmp_path / "out.db")
    assert (tmp_path / "out.db").read_bytes() == b"restored"
