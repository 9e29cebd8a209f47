"""ONNX export of a classifier (logits only) and a numerical check against PyTorch.

The TorchScript-based exporter (``dynamo=False``) is used: the dynamo exporter needs
``onnxscript``, which spruce does not depend on, and the compact model's forward has no
data-dependent control flow, so tracing captures it fully.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spruce.errors import SpruceError
from spruce.utils.atomic import usual_permissions

_EXAMPLE_TEXTS = ["a short example", "a second, somewhat longer example sentence to pad against"]


class _LogitsOnly(nn.Module):
    """Positional inputs in a fixed order and a plain tensor out, as tracing needs."""

    def __init__(self, model: PreTrainedModel, input_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).logits


def onnx_input_names(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """input_ids and attention_mask, plus token_type_ids when the model has several types."""
    names = ["input_ids", "attention_mask"]
    if (
        getattr(model.config, "type_vocab_size", 0) > 1
        and "token_type_ids" in tokenizer.model_input_names
    ):
        names.append("token_type_ids")
    return names


def export_onnx(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    opset: int = 17,
) -> Path:
    """Write ``model`` as ONNX to ``path`` with dynamic batch and sequence axes; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = onnx_input_names(model, tokenizer)
    example = tokenizer(_EXAMPLE_TEXTS, padding=True, return_tensors="pt")
    device = next(model.parameters()).device
    args = tuple(example[name].to(device) for name in names)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in names}
    dynamic_axes["logits"] = {0: "batch"}
    was_training = model.training
    model.eval()
    try:
        export_graph(_LogitsOnly(model, names), args, path, names, dynamic_axes, opset)
    finally:
        model.train(was_training)
    return path


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = 17,
) -> None:
    """Trace ``module`` on ``args`` into ``path`` (output ``logits``) through a sibling
    temp file renamed into place: a failed export never leaves a broken model. Used for
    encoders and CNNs alike."""
    handle, temp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(handle)
    usual_permissions(temp_name)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo (and traces with
            # warnings of its own); it still works here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                temp_name,
                input_names=list(input_names),
                output_names=["logits"],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.remove(temp_name)


def check_onnx(
    path: str | Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int | None = None,
) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's logits on ``texts``,
    truncated to ``max_length`` tokens (default: the model's position limit)."""
    try:
        import onnxruntime
    except ImportError:
        raise SpruceError("onnxruntime is not installed", "pip install onnxruntime") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = [item.name for item in session.get_inputs()]
    if max_length is None:
        # RoBERTa-style models number positions after the padding id: two fewer usable.
        offset = (
            2 if getattr(model.config, "position_embedding_type", "") == "padding_offset" else 0
        )
        max_length = model.config.max_position_embeddings - offset
    batch = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np"
    )
    missing = [name for name in wanted if name not in batch]
    if missing:
        raise SpruceError(
            f"the ONNX model needs inputs {missing} that the tokenizer does not produce",
            "export with the tokenizer saved next to the model",
        )
    feed = {name: np.asarray(batch[name], dtype=np.int64) for name in wanted}
    (onnx_logits,) = session.run(["logits"], feed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch_logits = model(
                **{name: torch.from_numpy(value).to(device) for name, value in feed.items()}
            ).logits
    finally:
        model.train(was_training)
    return float(np.max(np.abs(onnx_logits - torch_logits.float().cpu().numpy())))
