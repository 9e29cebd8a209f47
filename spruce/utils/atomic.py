"""Outputs that are complete or absent: build in a sibling temporary directory, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from spruce.errors import SpruceError


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse early, before any work, an ``--out`` that exists and may not be replaced."""
    if out.exists() and not out.is_dir():
        raise SpruceError(f"--out {out} exists and is not a directory", "choose another --out path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SpruceError(
            f"--out {out} already exists and is not empty",
            "choose a new directory or pass --overwrite to replace it",
        )
    # Missing parents are created later (like mkdir -p); the nearest existing one must be
    # a writable directory.
    ancestor = out.resolve().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SpruceError(
            f"--out {out} lies under {ancestor}, which is a file", "choose another --out"
        )
    if not os.access(ancestor, os.W_OK):
        raise SpruceError(
            f"cannot write into {ancestor} (permission denied)", "choose another --out"
        )


@contextlib.contextmanager
def staged_output_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; move it to ``out`` only if the block succeeds.

    The temporary directory sits in the same parent so the final rename is atomic on one
    filesystem; a previous ``out`` is only removed once the new one is complete.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        yield staging
        backup = None
        if out.exists():
            backup = parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, backup)
        os.replace(staging, out)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write a single file via a temporary sibling and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
