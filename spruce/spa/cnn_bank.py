"""One frozen CNN, many pruned image tasks: switch tasks by loading a few small tensors.

:class:`CNNTaskBank` is :class:`~spruce.spa.TaskBank` for the tasks ``spruce adapt``
trains on images. The base CNN is loaded once and wrapped in adapters; each task added
is read from its ``task.safetensors`` + ``task.json`` once and kept in memory
(:class:`~spruce.spa.cnn_task.CNNTask`). Activating a task masks its channel plan
and copies its adapter tensors, classifier and BatchNorm running statistics into the
model (:func:`~spruce.spa.cnn_task.apply_task`, the code that ``load_task`` runs
too): the base's frozen tensors are never reloaded, copied or written.

A CNN task records its base by name only (no digest of the weights, unlike a text
task), so a bank takes tasks whose recorded ``model`` is its base's name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spruce.adapters import AdapterConfig
from spruce.adapters.bank import TaskBankBase
from spruce.errors import SpruceError
from spruce.spa.cnn_model import adapt_cnn, classifier_name
from spruce.spa.cnn_task import TASK_META, CNNTask, apply_task, read_task, save_fused
from spruce.units.channel_masks import fuse_pruned
from spruce.vision.models import load_cnn

# What a bank needs from task.json beyond what load_task needs (spruce adapt writes all).
REQUIRED_META = ("model", "num_classes", "class_names", "image_size", "adapter")
# task.json keys that describe the task file, not the fused model.
TASK_ONLY_META = ("format", "plan", "adapter")


class CNNTaskBank(TaskBankBase[CNNTask]):
    """Serve several adapted image tasks from one base CNN, on the CPU.

    ``base`` is a name (or weights path) as :func:`~spruce.vision.load_cnn` takes it and
    ``adapter`` the adapter settings; both default to those the first task added records,
    and every task must match them. Tasks may differ in their number of classes: the
    classifier is the task's own and is rebuilt to its shape on activation. ``loader``
    builds the base as ``loader(base, num_classes)`` (tests pass toy CNNs).
    """

    def __init__(
        self,
        base: str | None = None,
        adapter: AdapterConfig | None = None,
        *,
        loader: Callable[[str, int], nn.Module] = load_cnn,
    ) -> None:
        super().__init__(
            base, None if adapter is None else AdapterConfig.from_dict(adapter.to_dict())
        )
        self._given = (self._base, self._adapter)  # what a bank without tasks goes back to
        self._loader = loader

    def meta(self, name: str) -> dict[str, Any]:
        """The task's ``task.json``: its classes, image size and input normalisation
        (``run`` takes images normalised as the task's training images were)."""
        return dict(self._task(name).meta)

    # ----- tasks --------------------------------------------------------------------------
    def add(self, name: str, directory: str | Path) -> None:
        """Read a ``spruce adapt`` output folder of an image task as task ``name``.

        A task that does not fit the bank (another base, other adapter settings, an
        inconsistent or damaged file) is refused here, by a trial activation, not when it
        is first used."""
        self._check_new_name(name)
        task = read_task(directory)
        adapter = self._check_meta(task)
        if self._model is None:
            self._load_base(str(task.meta["model"]), adapter, int(task.meta["num_classes"]))
        previous = self._active
        try:  # a trial activation: a task that does not fit fails here, not later
            head = classifier_name(self.model)
            if task.classifier_name != head:
                raise SpruceError(
                    f"task {task.directory} names classifier '{task.classifier_name}', the "
                    f"bank's base has '{head}'",
                    "put tasks adapted from the same base model in one bank",
                )
            self._tasks[name] = task
            self.activate(name)
        except (SpruceError, KeyError, RuntimeError) as error:
            self._tasks.pop(name, None)
            self._active = None  # the model may hold part of the failed task
            if not self._tasks:  # nor may the settings of a base loaded for it stay
                self._model = None
                self._base, self._adapter = self._given
            if isinstance(error, SpruceError):
                raise
            raise SpruceError(
                f"task {task.directory} does not fit the bank's base ({error})",
                "use the base and adapter settings the task was trained with",
            ) from None
        finally:
            if previous is not None:
                self.activate(previous)

    def activate(self, name: str) -> None:
        """Make ``name`` the task the model computes (masks, adapters, classifier, BatchNorm
        statistics), from the tensors read by :meth:`add`."""
        task = self._task(name)
        if name == self._active:
            return
        self._active = None  # until the task is complete in the model
        apply_task(self.model, task)
        self._active = name

    @torch.no_grad()
    def run(self, name: str, images: Tensor) -> Tensor:
        """Logits of task ``name`` for a batch of images (``N x 3 x H x W``), eval mode."""
        self.activate(name)
        return self.model.eval()(images)

    def predict(self, name: str, images: Tensor) -> list[str]:
        """Class names predicted by task ``name``."""
        classes = [str(c) for c in self._task(name).meta["class_names"]]
        return [classes[i] for i in self.run(name, images).argmax(dim=-1).tolist()]

    def fuse(self, name: str) -> nn.Module:
        """Task ``name`` as a compact CNN of its own (adapters merged, channels removed)."""
        return self._fuse(name)[0]

    def save_fused(self, name: str, directory: str | Path) -> nn.Module:
        """Write task ``name``'s fused model as ``spruce adapt`` does (``model.safetensors``
        + ``model.json``, rebuilt by :func:`~spruce.spa.cnn_task.load_compact`) into
        ``directory`` (created if needed; stage it for an atomic output) and return it."""
        fused, history = self._fuse(name)
        task = self._tasks[name]
        meta = {k: v for k, v in task.meta.items() if k not in TASK_ONLY_META}
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_fused(self.model, fused, history, directory, meta)
        return fused

    # ----- internals ----------------------------------------------------------------------
    def _check_meta(self, task: CNNTask) -> AdapterConfig:
        """The task's adapter settings, once its task.json is found to fit the bank."""
        meta, path = task.meta, task.directory / TASK_META
        missing = [key for key in REQUIRED_META if meta.get(key) is None]
        if missing:
            raise SpruceError(
                f"{path} records no {', '.join(missing)}",
                "pass the --out folder of spruce adapt run with adapters (not --fine-prune)",
            )
        if self._base is not None and meta["model"] != self._base:
            raise SpruceError(
                f"task {task.directory} was adapted from base '{meta['model']}', the bank's "
                f"base is '{self._base}'",
                f"use the base the task was adapted from (--base {meta['model']})",
            )
        adapter = AdapterConfig.from_dict(meta["adapter"])
        self._check_adapter(adapter, task.directory)
        rows, classes, names = task.classifier["weight"].shape[0], meta["num_classes"], None
        if isinstance(meta["class_names"], list):
            names = len(meta["class_names"])
        if not (isinstance(classes, int) and classes == rows == names):
            raise SpruceError(
                f"{path} records {classes!r} classes and {names} class names, its classifier "
                f"has {rows} outputs",
                "write the task again with spruce adapt",
            )
        return adapter

    def _load_base(self, base: str, adapter: AdapterConfig, num_classes: int) -> None:
        model = self._loader(self._base or base, num_classes)
        adapt_cnn(model, adapter, classifier_name(model))
        self._base, self._adapter, self._model = self._base or base, adapter, model.eval()

    def _fuse(self, name: str) -> tuple[nn.Module, list[list]]:
        self.activate(name)
        task = self._tasks[name]
        size = int(task.meta["image_size"])
        example = torch.zeros(1, 3, size, size)  # torch-pruning traces the graph with it
        fused, history = fuse_pruned(self.model, task.plan, example, [task.classifier_name])
        return fused.eval(), history
