"""The per-task artifact of an adapted transformer: ``task.safetensors`` + ``task.json``.

A deployment keeps one frozen base and, per task, only these two files (PEFT style: the
base is referenced, never copied). ``task.safetensors`` holds

* ``adapter.<module>.<key>``: every wrapper's task state (bit-packed channel masks, kept
  bias entries, surviving adapter rows and columns; :func:`spruce.adapters.adapter_state`);
* ``head.<parameter>``: the task head (classifier, and BERT's pooler), fully trained;
* ``units.<unit>.bits``: the unit masks' binary part, bit-packed (uint8), and
  ``units.<unit>.values`` (float32, kept entries only) when the values are not all 0/1
  (hard-concrete gate values, which compaction folds into the weights).

``task.json`` says what the tensors fit: format and version, the base (as given, its
absolute path when local, ``_name_or_path``, model type and a digest of its frozen
weights), the adapter config, labels, pruned units and their shapes, the structure, and
how the task reads its text (``spruce_task``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import PreTrainedModel

from spruce.adapters import AdapterConfig, adapter_state
from spruce.errors import SpruceError
from spruce.masks.accounting import structure_from_masks
from spruce.masks.units import UnitMasks
from spruce.models.loading import TASK_METADATA_KEY
from spruce.models.structure import encoder_shape
from spruce.spa.wiring import base_fingerprint, head_parameters
from spruce.utils.atomic import usual_permissions, write_text_atomic

FORMAT = "spruce-task"
VERSION = 1
TENSORS_NAME = "task.safetensors"
META_NAME = "task.json"


@dataclass(frozen=True)
class BaseReference:
    """Which frozen base a task was trained on; ``fingerprint`` decides compatibility."""

    source: str
    path: str | None
    name_or_path: str
    model_type: str
    fingerprint: str

    @classmethod
    def of(cls, model: PreTrainedModel, given: str | None, resolved: str) -> BaseReference:
        """``model`` must already carry its adapters (the digest covers frozen weights)."""
        local = Path(resolved).expanduser()
        return cls(
            source=given if given is not None else resolved,
            path=str(local.resolve()) if local.is_dir() else None,
            name_or_path=str(getattr(model.config, "_name_or_path", "") or resolved),
            model_type=model.config.model_type,
            fingerprint=base_fingerprint(model),
        )

    def location(self) -> str:
        """Where to load the base from: the recorded local directory when it still exists."""
        return self.path if self.path and Path(self.path).is_dir() else self.source


@dataclass
class TaskRecord:
    """One task read back from its directory: tensors and what they fit."""

    directory: Path
    base: BaseReference
    adapter: AdapterConfig
    label_names: list[str]
    problem_type: str | None
    masks: UnitMasks
    adapter_state: dict[str, Tensor]
    head: dict[str, Tensor]
    task: dict[str, Any] | None
    structure: dict[str, Any]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def unit_mask_tensors(masks: UnitMasks) -> dict[str, Tensor]:
    """Bits of each unit mask, plus its kept values when they are not all 1."""
    tensors = {}
    for unit, value in masks.items():
        value = value.detach().cpu().float()
        tensors[f"units.{unit}.bits"] = torch.from_numpy(np.packbits(value.flatten().numpy() > 0))
        kept = value[value > 0]
        if not bool((kept == 1).all()):
            tensors[f"units.{unit}.values"] = kept.contiguous()
    return tensors


def masks_from_tensors(tensors: dict[str, Tensor], shapes: dict[str, list[int]]) -> UnitMasks:
    values = {}
    for unit, shape in shapes.items():
        bits = tensors.get(f"units.{unit}.bits")
        count = int(np.prod(shape))
        if bits is None or bits.dtype != torch.uint8 or bits.numel() != (count + 7) // 8:
            raise SpruceError(
                f"the task file's mask '{unit}' is missing or does not fit shape {shape}",
                "write the task again with spruce adapt",
            )
        binary = np.unpackbits(bits.numpy(), count=count).astype(np.float32)
        mask = torch.from_numpy(binary).reshape(shape)
        kept = tensors.get(f"units.{unit}.values")
        if kept is not None:
            mask[mask > 0] = kept.float()
        values[unit] = mask
    return UnitMasks(**values)


def save_task(
    directory: str | Path,
    model: PreTrainedModel,
    masks: UnitMasks,
    base: BaseReference,
    adapter: AdapterConfig,
) -> dict[str, Any]:
    """Write ``task.safetensors`` and ``task.json`` for the adapted ``model`` (wrapper
    masks already set from ``masks``) into ``directory``; returns the ``task.json`` data."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    masks = masks.detach().to("cpu")
    tensors = {f"adapter.{k}": v for k, v in adapter_state(model).items()}
    tensors.update({f"head.{k}": p for k, p in head_parameters(model).items()})
    tensors.update(unit_mask_tensors(masks))
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    config = model.config
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "base": asdict(base),
        "adapter": adapter.to_dict(),
        "label_names": [config.id2label[i] for i in range(config.num_labels)],
        "num_labels": config.num_labels,
        "problem_type": config.problem_type,
        "units": {unit: list(value.shape) for unit, value in masks.items()},
        "structure": structure_from_masks(masks, encoder_shape(config)),
        "task": getattr(config, TASK_METADATA_KEY, None),
    }
    write_task_files(
        directory, tensors, json.dumps(meta, indent=2), {"format": FORMAT, "version": str(VERSION)}
    )
    return meta


def load_task(directory: str | Path) -> TaskRecord:
    """Read a task directory written by :func:`save_task` (a ``spruce adapt`` output)."""
    directory = Path(directory)
    meta, tensors = read_task_files(directory)
    meta_path = directory / META_NAME
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SpruceError(f"{meta_path} is not a spruce task file", "pass a spruce adapt output")
    if meta.get("version") != VERSION:
        raise SpruceError(
            f"{meta_path} has format version {meta.get('version')}, this spruce reads {VERSION}",
            "write the task again with this version of spruce",
        )
    try:
        return TaskRecord(
            directory=directory,
            base=BaseReference(**meta["base"]),
            adapter=AdapterConfig.from_dict(meta["adapter"]),
            label_names=[str(name) for name in meta["label_names"]],
            problem_type=meta.get("problem_type"),
            masks=masks_from_tensors(tensors, dict(meta["units"])),
            adapter_state=with_prefix(tensors, "adapter."),
            head=with_prefix(tensors, "head."),
            task=meta.get("task"),
            structure=meta["structure"],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise SpruceError(
            f"{meta_path} is incomplete or malformed ({type(error).__name__}: {error})",
            "write the task again with spruce adapt",
        ) from None


def write_task_files(
    directory: Path,
    tensors: dict[str, Tensor],
    meta_text: str,
    metadata: dict[str, str] | None = None,
) -> None:
    """``task.safetensors`` (``metadata`` in its header) and ``task.json``, each written
    to a temporary sibling and renamed into place: the one task-file pair of every
    modality (encoders here, CNNs in :mod:`spruce.spa.cnn_task`)."""
    handle, temp = tempfile.mkstemp(prefix=f".{TENSORS_NAME}.tmp-", dir=directory)
    os.close(handle)
    usual_permissions(temp)
    try:
        save_file(tensors, temp, metadata=metadata)
        os.replace(temp, directory / TENSORS_NAME)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    write_text_atomic(directory / META_NAME, meta_text + "\n")


def read_task_files(directory: Path) -> tuple[Any, dict[str, Tensor]]:
    """``task.json`` (parsed, unchecked) and the tensors of ``task.safetensors``; a
    missing or unreadable pair is one line naming the folder."""
    meta_path, tensor_path = directory / META_NAME, directory / TENSORS_NAME
    if not meta_path.is_file() or not tensor_path.is_file():
        raise SpruceError(
            f"{directory} holds no task file ({META_NAME} and {TENSORS_NAME})",
            "pass the --out directory of spruce adapt run with adapters (not --fine-prune)",
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensor_path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as error:
        raise SpruceError(
            f"the task file in {directory} cannot be read ({str(error).splitlines()[0][:160]})",
            "write it again with spruce adapt",
        ) from None
    return meta, tensors


def with_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors whose names start with ``prefix``, the prefix stripped."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
