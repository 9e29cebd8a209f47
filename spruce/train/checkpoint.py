"""Checkpoints of a training run, so that ``--resume`` continues a killed run exactly.

They live beside the output, in ``<out>.checkpoint/``: ``--out`` itself only appears,
complete, at the very end (``spruce.utils.atomic``), and the checkpoint is deleted once
it has. The directory holds

- ``run.json``: the command, its configuration and the configuration's fingerprint, so
  that a checkpoint is never continued with other settings. A setting added to spruce
  after the checkpoint was written is absent from it and counts as its default: such a
  checkpoint continues when this run leaves the new setting at that default;
- ``NN-<phase>.pt``: one file per training phase, numbered in the order the run reaches
  them. A phase's file is rewritten every ``every_steps`` steps while it trains (the full
  :class:`~spruce.train.Trainer` state) and once more when it ends (``finished``: what
  later phases need, without the phase's own optimizer). A resumed run goes through the
  pipeline again; each finished phase returns at once with its saved result and state,
  the interrupted one continues from its last save.

Every file is written under a temporary name, flushed to disk and renamed over the
previous one, so it is complete or absent whenever the process dies (SIGKILL, power
loss), and the previous save stays until the new one is in place. Files are read with
``torch.load(weights_only=True)``: plain containers of tensors, numbers and text.

Small values computed *between* phases (the masks chosen by a scoring round) are stored
as *products* (:meth:`Checkpointer.product`): they ride along in every later save, so a
resumed run reuses them only together with the state that was trained under them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from spruce.errors import SpruceError
from spruce.train.distributed import is_main
from spruce.utils.atomic import StorageError, storage_errno

DEFAULT_EVERY_STEPS = 50
RUN_FILE = "run.json"
FORMAT = 1
SUFFIX = ".checkpoint"
MAX_DIFFERENCES_SHOWN = 4

T = TypeVar("T")


def checkpoint_dir(out: str | Path) -> Path:
    """``<out>.checkpoint``, the sibling of ``--out`` where its run checkpoints."""
    out = Path(out)
    if not out.name:  # "." or "/"
        out = out.resolve()
    return out.with_name(out.name + SUFFIX)


def configuration_fingerprint(configuration: Mapping[str, Any]) -> str:
    """A short hash of ``configuration`` as JSON (key order does not matter)."""
    text = json.dumps(_as_json(configuration), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class PhaseCheckpoint:
    """One phase's file: what :class:`~spruce.train.Trainer` takes as ``checkpoint``."""

    def __init__(self, run: Checkpointer, phase: str, filename: str) -> None:
        self.run = run
        self.phase = phase
        self.filename = filename

    @property
    def every_steps(self) -> int:
        return self.run.every_steps

    @property
    def directory(self) -> Path:
        return self.run.directory

    def save(self, state: dict[str, Any]) -> None:
        self.run.write(
            self.filename, {**state, "phase": self.phase, "products": dict(self.run.products)}
        )

    def load(self) -> dict[str, Any] | None:
        state = self.run.read(self.filename)
        if state is not None and state.get("phase") != self.phase:
            raise SpruceError(
                f"the checkpoint file {self.directory / self.filename} belongs to phase "
                f"'{state.get('phase')}', this run expects '{self.phase}' there",
                f"remove {self.directory} to start again",
            )
        return state


class Checkpointer:
    """The checkpoint directory of one run; see the module docstring.

    ``fingerprint`` identifies the run's configuration (``configuration``, kept in
    ``run.json``, lets a refusal name the settings that differ).
    """

    def __init__(
        self,
        directory: str | Path,
        fingerprint: str,
        every_steps: int = DEFAULT_EVERY_STEPS,
        configuration: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.every_steps = int(every_steps)
        self.configuration = _as_json(configuration or {})
        self.defaults = _flatten(_as_json(defaults or {}))
        self.products: dict[str, Any] = {}
        self._phases = 0
        self._cache: dict[str, dict[str, Any]] = {}
        self._run_written = False

    @classmethod
    def for_configuration(
        cls,
        directory: str | Path,
        configuration: Mapping[str, Any],
        every_steps: int = DEFAULT_EVERY_STEPS,
        defaults: Mapping[str, Any] | None = None,
    ) -> Checkpointer:
        """``defaults``: the configuration with every optional setting at its default, in
        the same layout; a setting the checkpoint lacks is compared with it."""
        fingerprint = configuration_fingerprint(configuration)
        return cls(directory, fingerprint, every_steps, configuration, defaults)

    def exists(self) -> bool:
        """Whether a run has saved a phase here (without one, the directory holds at most
        ``run.json`` and the temporary file of a first save that never completed)."""
        return (self.directory / RUN_FILE).is_file() and bool(self._phase_files())

    def _phase_files(self) -> list[Path]:
        """The phase files, in the order the run wrote them (by their number)."""
        numbered = [p for p in self.directory.glob("[0-9]*-*.pt") if p.name.split("-")[0].isdigit()]
        return sorted(numbered, key=lambda p: int(p.name.split("-")[0]))

    def resume(self) -> None:
        """Adopt the checkpoint in :attr:`directory`: check that it was written with this
        configuration, drop unfinished temporary files, read the stored products."""
        saved = self._read_run_file()
        if saved.get("fingerprint") != self.fingerprint:
            before = _flatten(saved.get("configuration") or {})
            now = _flatten(self.configuration)
            added, changed = _differences(before, now, self.defaults)
            if changed or not added or not before:
                raise _mismatch(self.directory, before, now, changed)
            if is_main():
                print(
                    f"spruce: the checkpoint in {self.directory} predates "
                    f"{' and '.join(added)}; continuing with the default",
                    file=sys.stderr,
                )
        self._run_written = True
        for stale in self.directory.glob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        phase_files = self._phase_files()
        if phase_files:
            latest = self.read(phase_files[-1].name)
            assert latest is not None
            self._cache[phase_files[-1].name] = latest
            self.products = dict(latest.get("products") or {})

    def remove(self) -> None:
        if not is_main():  # with several processes, rank 0 owns the directory
            return
        shutil.rmtree(self.directory, ignore_errors=True)
        self._run_written = False

    def phase(self, name: str) -> PhaseCheckpoint:
        """The next phase's file; call once per phase, in the order the run reaches them."""
        index, self._phases = self._phases, self._phases + 1
        slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
        return PhaseCheckpoint(self, name, f"{index:02d}-{slug}.pt")

    def product(self, name: str, compute: Callable[[], T]) -> T:
        """``compute()``, or the value a resumed run stored under ``name``. The value must
        be a plain container (tensors, numbers, text, lists, dicts)."""
        if name not in self.products:
            self.products[name] = compute()
        return self.products[name]

    # -- files ---------------------------------------------------------------------------

    def write(self, filename: str, state: dict[str, Any]) -> None:
        """Save ``state`` as ``filename``, atomically (the previous file stays until the
        new one is complete). With several processes only rank 0 writes."""
        if not is_main():
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not self._run_written:
                run = {
                    "format": FORMAT,
                    "fingerprint": self.fingerprint,
                    "configuration": self.configuration,
                }
                text = json.dumps(run, indent=1, sort_keys=True).encode("utf-8")
                _write_atomic(self.directory / RUN_FILE, lambda h: h.write(text))
                self._run_written = True
            _write_atomic(self.directory / filename, lambda h: torch.save(state, h))
        except OSError as error:
            code = storage_errno(error)
            if code is None:
                raise
            raise StorageError(
                code, f"the checkpoint {self.directory}", " (the previous checkpoint is kept)"
            ) from None

    def read(self, filename: str) -> dict[str, Any] | None:
        if filename in self._cache:
            return self._cache.pop(filename)
        path = self.directory / filename
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # any unreadable file is reported alike
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise SpruceError(
                f"cannot read the checkpoint file {path} ({reason})",
                f"remove {self.directory} to start again",
            ) from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise SpruceError(
                f"{path} is not a checkpoint this version of spruce writes",
                f"remove {self.directory} to start again",
            )
        return state

    def _read_run_file(self) -> dict[str, Any]:
        path = self.directory / RUN_FILE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SpruceError(
                f"cannot read {path} ({type(error).__name__})",
                f"remove {self.directory} to start again",
            ) from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise SpruceError(
                f"{path} was not written by this version of spruce",
                f"remove {self.directory} to start again",
            )
        return saved


def phase_checkpoint(checkpoint: Checkpointer | None, name: str) -> PhaseCheckpoint | None:
    """``checkpoint.phase(name)``, or None when the run does not checkpoint."""
    return None if checkpoint is None else checkpoint.phase(name)


def remember(checkpoint: Checkpointer | None, name: str, compute: Callable[[], T]) -> T:
    """``checkpoint.product(name, compute)``, or ``compute()`` without a checkpoint."""
    return compute() if checkpoint is None else checkpoint.product(name, compute)


def _write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    target = _Descriptor(fd)
    try:
        try:
            write(target)
        except RuntimeError:
            # torch's zip writer reports a failed write as "unexpected pos", losing the
            # OSError (and its errno: a full disk, a file-size limit) on the way.
            if target.error is None:
                raise
            raise target.error from None
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temporary, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # The rename itself reaches the disk with the directory's entry.
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class _Descriptor:
    """A file descriptor as the binary file ``torch.save`` writes to: every write is
    complete or raises, and the first ``OSError`` is kept in :attr:`error`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.error: OSError | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as error:
            self.error = self.error or error
            raise
        return len(view)

    def flush(self) -> None:
        """Nothing is buffered."""


def _as_json(values: Any) -> Any:
    return json.loads(json.dumps(values, default=str))


_MISSING = object()


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(no such setting)"
    return value if isinstance(value, str) else json.dumps(value)


def _differences(
    before: Mapping[str, Any], now: Mapping[str, Any], defaults: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """The flat settings that differ between a checkpoint and this run, in two lists:
    those added since the checkpoint and left at their default here, and the others."""
    names = sorted(set(before) | set(now))
    differing = [n for n in names if before.get(n, _MISSING) != now.get(n, _MISSING)]
    added = [
        n
        for n in differing
        if n not in before and defaults.get(n, _MISSING) == now.get(n, _MISSING)
    ]
    return added, [n for n in differing if n not in added]


def _mismatch(
    directory: Path, before: Mapping[str, Any], now: Mapping[str, Any], names: list[str]
) -> SpruceError:
    """The refusal naming the settings in ``names`` (flat, as in ``before`` and ``now``)."""
    fix = f"rerun with the same options, or remove {directory} to start again"
    if not names:
        return SpruceError(f"the checkpoint in {directory} was written by another run", fix)
    shown, more = names[:MAX_DIFFERENCES_SHOWN], len(names) - MAX_DIFFERENCES_SHOWN
    old = " and ".join(f"{n} {_show(before.get(n, _MISSING))}" for n in shown)
    new = " and ".join(_show(now.get(n, _MISSING)) for n in shown)
    extra = f" (and {more} more setting{'s' if more > 1 else ''})" if more > 0 else ""
    return SpruceError(
        f"the checkpoint in {directory} was written with {old}, this run has {new}{extra}", fix
    )
