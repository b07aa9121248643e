"""Atomic artifact writes: the file appears whole or not at all, with the usual permissions."""

import os
import stat

import pytest

from goracs.io import atomic_path, write_json, write_text


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_files_get_umask_permissions_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "table.md", "x")
        os.umask(0o077)
        write_text(tmp_path / "private.md", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "table.md").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "private.md").st_mode) == 0o600
    write_json(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json").read_text().strip().startswith("{")
    write_text(tmp_path / "t.md", "y")
    assert (tmp_path / "t.md").read_text() == "y"
