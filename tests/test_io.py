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


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    from speechcl.utils.io import atomic_path, remove_stale_temporaries

    # a writer killed inside atomic_path leaves its temporary behind
    script = ("import os, sys\nfrom speechcl.utils.io import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n    os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", script, str(tmp_path / "sub" / "out.npy")]).returncode == 9
    left = list((tmp_path / "sub").glob(".out.npy.*.tmp"))
    assert len(left) == 1
    with atomic_path(tmp_path / "live.txt") as mine:  # a live writer's file (this process) is kept
        mine.write_text("x")
        other_host = tmp_path / ".x.txt.otherhost-1.abcd.tmp"  # another machine's file is kept
        other_host.write_text("x")
        unrelated = tmp_path / "notes.tmp"
        unrelated.write_text("x")
        assert remove_stale_temporaries(tmp_path, recursive=False) == []
        assert remove_stale_temporaries(tmp_path) == left
        assert mine.exists() and other_host.exists() and unrelated.exists() and not left[0].exists()
    assert (tmp_path / "live.txt").read_text() == "x"
    assert os.listdir(tmp_path / "sub") == []
