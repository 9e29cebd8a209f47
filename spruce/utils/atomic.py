"""Outputs that are complete or absent: build in a sibling temporary directory, then rename.

A full disk, a quota, a read-only file system or missing permissions while writing are
not bugs but conditions of the machine: they end as a :class:`SpruceError` that names the
cause, after the temporary directory is removed and a previous output put back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from spruce.errors import SpruceError

# errno -> (what happened, what to do about it)
STORAGE_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free some space or choose another --out"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space or choose another --out"),
    errno.EFBIG: ("a file is larger than the file system allows", "choose another --out"),
    errno.EROFS: ("the file system is read-only", "choose another --out"),
    errno.EACCES: ("permission denied", "choose another --out or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose another --out or fix its permissions"),
}


class StorageError(SpruceError):
    """A write failed for a reason of the machine (:data:`STORAGE_ERRORS`), not of spruce."""

    def __init__(self, code: int, target: str, note: str = "") -> None:
        problem, fix = STORAGE_ERRORS[code]
        super().__init__(f"{problem} while writing {target}", f"{fix}{note}")
        self.errno = code


def usual_permissions(path: str | Path, directory: bool = False) -> None:
    """Give a file or folder made by ``tempfile`` the mode a plain ``open``/``mkdir`` would
    have: ``mkstemp``/``mkdtemp`` create them private (0600/0700), which survives the
    rename into place and would hide outputs from the other users of a shared machine."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def storage_errno(error: BaseException) -> int | None:
    """The errno of a storage failure in :data:`STORAGE_ERRORS`, else None.

    safetensors (which ``save_pretrained`` uses) reports I/O failures as a
    ``SafetensorError`` whose message ends in ``(os error N)``.
    """
    if isinstance(error, StorageError):
        return error.errno
    code = None
    if isinstance(error, OSError):
        code = error.errno
    elif type(error).__name__ == "SafetensorError":
        found = re.search(r"\(os error (\d+)\)", str(error))
        code = int(found.group(1)) if found else None
    return code if code in STORAGE_ERRORS else None


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse early, before any work, an ``--out`` that exists and may not be replaced."""
    try:
        _check_output_dir(out, overwrite)
    except OSError as error:
        # e.g. an --out that exists but may not be listed
        reason = error.strerror or type(error).__name__
        raise SpruceError(
            f"cannot inspect --out {out} ({reason})", "choose another --out"
        ) from None


def _check_output_dir(out: Path, overwrite: bool) -> None:
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
    filesystem; a previous ``out`` is only removed once the new one is complete. A storage
    failure (:data:`STORAGE_ERRORS`) in the block or in the rename becomes a
    :class:`SpruceError`: the block only writes the output, so that is where it arose.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    parent = out.resolve().parent
    had_output = out.exists()
    staging = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        usual_permissions(staging, directory=True)
        yield staging
        _move_into_place(staging, out, parent)
    except BaseException as error:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        code = storage_errno(error)
        if code is None:
            raise
        raise StorageError(code, f"--out {out}", _outcome(out, parent, had_output)) from None


def _outcome(out: Path, parent: Path, had_output: bool) -> str:
    """What the user finds at ``out`` after a failed write."""
    if not had_output:
        return f" (nothing was written to {out})"
    if out.exists():
        return f" (the previous {out} is unchanged)"
    return f" (the previous {out} could not be put back: it is {_backup_path(out, parent)})"


def _backup_path(out: Path, parent: Path) -> Path:
    return parent / f".{out.name}.old-{os.getpid()}"


def _move_into_place(staging: Path, out: Path, parent: Path) -> None:
    backup = None
    if out.exists():
        backup = _backup_path(out, parent)
        os.replace(out, backup)
    try:
        os.replace(staging, out)
    except BaseException:
        if backup is not None:
            os.replace(backup, out)  # put the previous output back as it was
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a single file via a temporary sibling and ``os.replace``; a storage failure
    leaves the previous file as it was and becomes a :class:`SpruceError`."""
    path = Path(path)
    note = f" ({path} is unchanged)" if path.exists() else ""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        usual_permissions(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        code = storage_errno(error)
        if code is None:
            raise
        raise StorageError(code, str(path), note) from None
