"""Atomic writes: complete or absent, previous version kept on failure, ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from speechcl.utils.io import atomic_open, atomic_write_text, write_lines


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_lines(target, ["a", "b"])
    assert target.read_text() == "a\nb\n"
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # as open() would create it, not 0600
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temporary left behind


def test_failed_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
