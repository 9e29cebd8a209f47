"""One frozen base, many pruned tasks: switch tasks by loading a few small tensors.

:class:`TaskBank` loads the base classifier once and wraps it in adapters; each task
added from a ``spruce adapt`` output is kept in memory as its task state (adapter rows
and columns, biases, channel masks), its head and its unit masks. Activating a task
copies those into the adapters and the head, and the one mask handle installed on the
model reads the active task's unit masks at every forward: the base's tensors are never
reloaded, copied or written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spruce.adapters import AdapterConfig, load_adapter_state
from spruce.adapters.bank import TaskBankBase
from spruce.compact import CompactModelForSequenceClassification, apply_masks, compact_model
from spruce.errors import SpruceError
from spruce.masks.units import UnitMasks
from spruce.models import TASK_METADATA_KEY, load_classifier
from spruce.spa.task_file import BaseReference, TaskRecord, load_task
from spruce.spa.wiring import (
    check_transformer_adapter,
    inject_transformer_adapters,
    merged_plain_copy,
)

PLACEHOLDER_LABELS = ("LABEL_0", "LABEL_1")  # every task brings its own head
Text = str | tuple[str, str]


@dataclass
class _Task:
    record: TaskRecord
    state: dict[str, Tensor]
    head: dict[str, Tensor]
    masks: UnitMasks


class TaskBank(TaskBankBase["_Task"]):
    """Serve several adapted tasks from one base model.

    ``base`` (name or path, as for ``--model``) and ``adapter`` default to those recorded
    in the first task added; every later task must have been adapted from the same base
    weights with the same adapter settings.
    """

    def __init__(
        self,
        base: str | None = None,
        adapter: AdapterConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(base, None if adapter is None else check_transformer_adapter(adapter))
        self.device = torch.device(device)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._reference: BaseReference | None = None
        self._handle = None
        if base is not None and adapter is not None:
            self._load_base(base)

    # ----- the base, loaded once ----------------------------------------------------------
    def _load_base(self, base: str) -> None:
        assert self._adapter is not None
        model, tokenizer, resolved = load_classifier(base, PLACEHOLDER_LABELS)
        inject_transformer_adapters(model, self._adapter)
        self._model = model.to(self.device).eval()
        self._tokenizer = tokenizer
        self._reference = BaseReference.of(model, base, resolved)
        self._handle = apply_masks(model, self._active_masks)

    def _active_masks(self) -> UnitMasks:
        return UnitMasks() if self._active is None else self._tasks[self._active].masks

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        self.model  # noqa: B018 -- the same error when nothing is loaded
        assert self._tokenizer is not None
        return self._tokenizer

    # ----- tasks --------------------------------------------------------------------------
    def add(self, name: str, directory: str) -> None:
        """Read a ``spruce adapt`` output directory as task ``name``."""
        self._check_new_name(name)
        record = load_task(directory)
        if self._adapter is None:
            self._adapter = check_transformer_adapter(record.adapter)
        self._check_adapter(record.adapter, directory)
        if self._model is None:
            self._load_base(self._base or record.base.location())
        assert self._reference is not None
        if record.base.fingerprint != self._reference.fingerprint:
            raise SpruceError(
                f"task {directory} was adapted from base '{record.base.source}' "
                f"({record.base.model_type}), whose weights differ from the bank's base "
                f"'{self._reference.source}' ({self._reference.model_type})",
                f"use the base the task was adapted from (--base {record.base.source})",
            )
        self._tasks[name] = _Task(
            record=record,
            state={k: v.to(self.device) for k, v in record.adapter_state.items()},
            head={k: v.to(self.device) for k, v in record.head.items()},
            masks=record.masks.to(self.device),
        )
        previous = self._active
        try:  # a trial activation: a task that does not fit fails here, not later
            self.activate(name)
        except SpruceError:
            del self._tasks[name]
            self._active = None  # the model may hold part of the failed task
            raise
        finally:
            if previous is not None:
                self.activate(previous)

    def activate(self, name: str) -> None:
        """Make ``name`` the task the model computes (adapters, head, masks, labels)."""
        task = self._task(name)
        if name == self._active:
            return
        model = self.model
        with torch.no_grad():
            load_adapter_state(model, task.state)
            _load_head(model, task.head)
        record = task.record
        config = model.config
        config.id2label = dict(enumerate(record.label_names))
        config.label2id = {label: i for i, label in enumerate(record.label_names)}
        config.problem_type = record.problem_type
        model.num_labels = record.num_labels  # the forward pass reads the attribute
        setattr(config, TASK_METADATA_KEY, record.task)
        self._active = name

    @torch.no_grad()
    def run(self, name: str, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits of task ``name`` for a tokenized ``batch`` (``labels`` are ignored)."""
        self.activate(name)
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        return self.model(**inputs).logits

    def predict(self, name: str, texts: Sequence[Text]) -> list[str]:
        """Label names predicted by task ``name`` for raw texts (or text pairs)."""
        self.activate(name)
        meta = self._tasks[name].record.task or {}
        pairs = [t for t in texts if not isinstance(t, str)]
        if pairs and len(pairs) != len(texts):
            raise SpruceError("mix of single texts and text pairs", "pass one kind per call")
        first = [t if isinstance(t, str) else t[0] for t in texts]
        second = [t[1] for t in pairs] if pairs else None
        batch = self.tokenizer(
            first,
            second,
            padding=True,
            truncation=True,
            max_length=int(meta.get("max_length", 128)),
            return_tensors="pt",
        )
        logits = self.run(name, batch)
        labels = self._tasks[name].record.label_names
        return [labels[i] for i in logits.argmax(dim=-1).tolist()]

    def fuse(
        self, name: str
    ) -> tuple[CompactModelForSequenceClassification, PreTrainedTokenizerBase]:
        """Task ``name`` as a compact model of its own (adapters merged, units removed)."""
        self.activate(name)
        model = self.model
        self._handle.remove()  # the copy must not carry the bank's mask hooks
        try:
            plain = merged_plain_copy(model)
        finally:
            self._handle = apply_masks(model, self._active_masks)
        compact = compact_model(plain, self._tasks[name].masks)
        return compact.eval(), self.tokenizer


def _load_head(model: PreTrainedModel, head: dict[str, Tensor]) -> None:
    """Copy a task's head into ``model``; a layer of another shape (another number of
    labels) is replaced by a new ``nn.Linear`` of the task's shape first."""
    parameters = dict(model.named_parameters())
    missing = sorted(set(head) - set(parameters))
    if missing:
        raise SpruceError(
            f"the task's head has {', '.join(missing)}, which the base model lacks",
            "use the base the task was adapted from",
        )
    for name, value in head.items():
        if not name.endswith(".weight") or parameters[name].shape == value.shape:
            continue
        module_name, _, _ = name.rpartition(".")
        old = model.get_submodule(module_name)
        if not isinstance(old, nn.Linear) or value.dim() != 2:
            raise SpruceError(f"the task's '{name}' does not fit the base model's head")
        new = nn.Linear(value.shape[1], value.shape[0], bias=old.bias is not None)
        new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        parent, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    parameters = dict(model.named_parameters())
    for name, value in head.items():
        if parameters[name].shape != value.shape:
            raise SpruceError(f"the task's '{name}' does not fit the base model's head")
        parameters[name].copy_(value)
