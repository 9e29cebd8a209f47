"""Outputs appear complete or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from spruce.errors import SpruceError
from spruce.utils.atomic import staged_output_dir, write_text_atomic


def test_failure_inside_the_block_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output_dir(out) as staging:
        (staging / "half.txt").write_text("x")
        raise RuntimeError("crash")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_after_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(SpruceError, match="already exists"), staged_output_dir(out):
        pass
    with pytest.raises(RuntimeError), staged_output_dir(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("crash")
    assert (out / "old.txt").read_text() == "old"
    with staged_output_dir(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_text_atomic_replaces_without_leftovers(tmp_path):
    path = tmp_path / "report.json"
    write_text_atomic(path, "first")
    write_text_atomic(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_missing_parents_are_created(tmp_path):
    out = tmp_path / "runs" / "bench" / "out"
    with staged_output_dir(out) as staging:
        (staging / "report.json").write_text("{}")
    assert (out / "report.json").exists()


def test_outputs_get_the_usual_permissions_not_tempfile_private_ones(tmp_path):
    previous = os.umask(0o022)
    try:
        with staged_output_dir(tmp_path / "out", overwrite=False) as staging:
            write_text_atomic(staging / "report.json", "{}")
        write_text_atomic(tmp_path / "single.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "report.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "single.txt").stat().st_mode) == 0o644
