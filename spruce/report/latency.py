"""Wall-clock inference latency of PyTorch and ONNX models on fixed random inputs.

Every measurement uses the same seeded token ids for a given (batch size, sequence
length, vocabulary size), so a dense and a pruned model see identical work; an all-ones
attention mask means no padding, i.e. every example is exactly ``seq_len`` tokens, the
case FLOPs are counted for (:mod:`spruce.report.flops`).
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spruce.errors import SpruceError

# Skip the first ids (special tokens in BERT/RoBERTa vocabularies): plain words are the
# realistic input, and RoBERTa treats its padding id specially when numbering positions.
_FIRST_ID = 5


def random_token_ids(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """``[batch_size, seq_len]`` int64 ids drawn reproducibly from ``[5, vocab_size)``."""
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    low = _FIRST_ID if vocab_size > 2 * _FIRST_ID else 0
    rng = np.random.default_rng(seed)
    return rng.integers(low, vocab_size, size=(batch_size, seq_len), dtype=np.int64)


def _summary(times_s: Sequence[float], **fields: Any) -> dict[str, Any]:
    ms = np.asarray(times_s, dtype=np.float64) * 1000.0
    # Linear-interpolated percentiles are monotone in q, so p10 <= median <= p90 always.
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    return {
        "median_ms": round(float(median), 4),
        "p10_ms": round(float(p10), 4),
        "p90_ms": round(float(p90), 4),
        "repeats": len(ms),
        **fields,
    }


def _time(call: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None]) -> list:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):  # first calls pay for allocation, kernel selection, caches
        call()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return times


def _accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` has a named parameter ``name`` (``**kwargs`` does not count:
    passing an unknown input to it could fail or be silently ignored)."""
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def measure_latency(
    model: nn.Module,
    *,
    batch_size: int,
    seq_len: int = 128,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 10,
    vocab_size: int | None = None,
    seed: int = 0,
    compiled: bool = False,
) -> dict[str, Any]:
    """Time ``model(input_ids=..., attention_mask=...[, token_type_ids=...])``.

    Runs in eval mode under ``torch.inference_mode()``; ``threads`` sets
    ``torch.set_num_threads`` for the measurement only (the previous value and the model's
    training mode are restored). ``vocab_size`` defaults to ``model.config.vocab_size``.
    ``compiled`` times ``torch.compile(model, dynamic=False)`` instead (inductor; needs a
    C++ compiler on CPU): compilation happens in an untimed first call, so the result is
    the steady-state latency of a compiled deployment, not of eager PyTorch.
    Returns ``median_ms``, ``p10_ms``, ``p90_ms`` over ``repeats`` timed calls, and the
    settings used.
    """
    config = getattr(model, "config", None)
    vocab_size = vocab_size or getattr(config, "vocab_size", None)
    if not vocab_size:
        raise SpruceError("cannot tell the model's vocabulary size", "pass vocab_size=")
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions is not None and (
        getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert")
        or getattr(config, "position_embedding_type", "") == "padding_offset"
    ):
        max_positions -= int(config.pad_token_id) + 1  # positions start after the padding id
    if max_positions is not None and seq_len > max_positions:
        raise SpruceError(
            f"seq_len {seq_len} exceeds the model's {max_positions} positions",
            "measure with a shorter sequence length",
        )
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    ids = torch.from_numpy(random_token_ids(batch_size, seq_len, vocab_size, seed)).to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if _accepts(model, "token_type_ids") and getattr(config, "type_vocab_size", 1) >= 1:
        inputs["token_type_ids"] = torch.zeros_like(ids)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    previous_threads, was_training = torch.get_num_threads(), model.training
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        model.eval()
        runner = _compile(model) if compiled else model
        with torch.inference_mode():
            if compiled:
                runner(**inputs)  # compiles for these shapes; far slower than any timed call
            times = _time(lambda: runner(**inputs), warmup, repeats, sync)
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return _summary(
        times, threads=used_threads, batch_size=batch_size, seq_len=seq_len, compiled=compiled
    )


def compiler_available() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here (inductor calls a C++ compiler)."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def _compile(model: nn.Module) -> Callable[..., Any]:
    """``torch.compile`` with static shapes, or a one-line error naming the missing piece."""
    if next(model.parameters()).device.type == "cpu" and not compiler_available():
        raise SpruceError(
            "timing a compiled model on CPU needs a C++ compiler, and none is on PATH",
            "install g++ (apt-get install g++) or time without compile",
        )
    # fullgraph: a graph break would time a half-eager model under the "compiled" label.
    return torch.compile(model, dynamic=False, fullgraph=True)


RUNTIMES = ("eager", "compiled", "best")


def measure_latency_table(
    models: Mapping[str, nn.Module],
    batch_sizes: Sequence[int] = (1, 32),
    seq_len: int = 128,
    runtime: str = "eager",
    **options: Any,
) -> dict[str, Any]:
    """Median latency (ms) of each named model per batch size, for the report:
    ``{"batch_1": {"dense": ms, "pruned": ms}, "batch_32": {...}, "seq_len": 128,
    "threads": n, "runtime": runtime}``. ``options`` go to :func:`measure_latency`.

    ``runtime``: ``"eager"`` PyTorch, ``"compiled"`` (``torch.compile``), or ``"best"``:
    every model is timed both ways and its faster time is the one reported, as a
    deployment that benchmarks both runtimes would ship each model; the table then also
    holds each runtime's own table under ``"eager"`` and ``"compiled"``, and under
    ``"chosen"`` which runtime won per batch size and model."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "best":
        tables = {
            name: measure_latency_table(models, batch_sizes, seq_len, name, **options)
            for name in ("eager", "compiled")
        }
        best: dict[str, Any] = {}
        chosen: dict[str, dict[str, str]] = {}
        for batch_size in batch_sizes:
            key = f"batch_{batch_size}"
            faster = {
                model: min(tables, key=lambda name: tables[name][key][model]) for model in models
            }
            best[key] = {model: tables[faster[model]][key][model] for model in models}
            chosen[key] = faster
        threads = tables["eager"]["threads"]
        return {**best, "seq_len": seq_len, "threads": threads, "runtime": "best",
                "chosen": chosen, **tables}  # fmt: skip
    table: dict[str, Any] = {}
    threads = None
    for batch_size in batch_sizes:
        row = {}
        for name, model in models.items():
            result = measure_latency(
                model,
                batch_size=batch_size,
                seq_len=seq_len,
                compiled=runtime == "compiled",
                **options,
            )
            row[name] = result["median_ms"]
            threads = result["threads"]
        table[f"batch_{batch_size}"] = row
    table["seq_len"] = seq_len
    table["threads"] = threads
    table["runtime"] = runtime
    return table


def _onnx_vocab_size(path: Path, ids_input: str) -> int | None:
    """The vocabulary size from config.json beside the model, else from the word-embedding
    initializer that the graph gathers ``ids_input`` from."""
    config = path.parent / "config.json"
    if config.is_file():
        size = json.loads(config.read_text()).get("vocab_size")
        if size:
            return int(size)
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Gather" and node.input[1] == ids_input and node.input[0] in shapes:
            return int(shapes[node.input[0]][0])
    return None


def onnx_latency(
    path: str | Path,
    batch_size: int,
    seq_len: int = 128,
    *,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 10,
    vocab_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Like :func:`measure_latency` for an ONNX file, with onnxruntime on CPU.

    Inputs are fed by the graph's own input names (``input_ids``, ``attention_mask``,
    ``token_type_ids``) and integer types. ``intra_op_num_threads`` is fixed to ``threads``
    (default: torch's current thread count, so both runtimes get the same cores).
    """
    import onnxruntime as ort

    path = Path(path)
    threads = threads or torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one graph at a time: parallelism comes from intra-op
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    names = [i.name for i in session.get_inputs()]
    ids_name = next((n for n in names if "input_ids" in n), None)
    if ids_name is None:
        raise SpruceError(f"{path} has no input_ids input (inputs: {names})", "export it again")
    vocab_size = vocab_size or _onnx_vocab_size(path, ids_name)
    if not vocab_size:
        raise SpruceError(f"cannot tell the vocabulary size of {path}", "pass vocab_size=")
    ids = random_token_ids(batch_size, seq_len, vocab_size, seed)
    feeds = {}
    for spec in session.get_inputs():
        dtype = np.int32 if spec.type == "tensor(int32)" else np.int64
        if spec.name == ids_name:
            feeds[spec.name] = ids.astype(dtype)
        elif "attention_mask" in spec.name:
            feeds[spec.name] = np.ones_like(ids, dtype=dtype)
        elif "token_type_ids" in spec.name:
            feeds[spec.name] = np.zeros_like(ids, dtype=dtype)
        else:
            raise SpruceError(
                f"{path} has an input '{spec.name}' that latency measurement cannot fill",
                "export with input_ids, attention_mask and token_type_ids only",
            )
    times = _time(lambda: session.run(None, feeds), warmup, repeats, lambda: None)
    return _summary(times, threads=threads, batch_size=batch_size, seq_len=seq_len)
