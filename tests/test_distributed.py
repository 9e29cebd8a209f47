"""Multi-process training (``torchrun``, gloo on CPU): gates stay in step across processes,
and a 2-process ``spruce prune`` writes what a 1-process run writes, from rank 0 only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from spruce.masks.gates import EncoderGates
from spruce.masks.lagrangian import SparsityController, SparsityStep, make_optimizers
from spruce.models.structure import encoder_shape
from spruce.train.distributed import DistributedContext, optimizer_parameters, owned_optimizers
from tiny_models import write_sentiment_files

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gate_worker(rank: int, world_size: int, model_dir: str, out_dir: str) -> None:
    from transformers import AutoConfig

    context = DistributedContext(world_size, rank, rank)
    context.init("gloo")
    try:
        torch.manual_seed(0)  # every rank seeds alike, as begin_run does: gates start equal
        gates = EncoderGates(encoder_shape(AutoConfig.from_pretrained(model_dir)))
        controller = SparsityController(0.5)
        step = SparsityStep(controller, *make_optimizers(gates, controller))
        for _ in range(3):
            # Each rank pulls its gates its own way: local gradients differ.
            weight = torch.tensor(float(rank + 1))
            local = sum((weight * p).pow(2).sum() for p in gates.parameters())
            (local + controller.gate_penalty(gates)).backward()
            local_grads = [p.grad.clone() for p in gates.parameters()]
            context.average_gradients(optimizer_parameters(owned_optimizers(step)))
            averaged = [p.grad.clone() for p in gates.parameters()]
            step(None, 1, {})
        torch.save(
            {"gates": gates.state_dict(), "local": local_grads, "averaged": averaged},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        context.destroy()


def test_gate_gradients_are_averaged_across_processes(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    mp.spawn(_gate_worker, args=(2, str(tiny_models["bert"]), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # The local gradients differ, their average is what both ranks stepped with...
    assert not torch.equal(ranks[0]["local"][0], ranks[1]["local"][0])
    for g0, g1, a0, a1 in zip(
        ranks[0]["local"], ranks[1]["local"], ranks[0]["averaged"], ranks[1]["averaged"],
        strict=True,
    ):  # fmt: skip
        torch.testing.assert_close(a0, (g0 + g1) / 2)
        assert torch.equal(a0, a1)
    # ... so the gates end identical.
    for name, value in ranks[0]["gates"].items():
        assert torch.equal(value, ranks[1]["gates"][name]), name


def _prune(model: Path, data: dict[str, Path], out: Path, processes: int, batch_size: int):
    argv = [
        "-m", "spruce", "prune", "--model", str(model), "--train", str(data["train"]),
        "--validation", str(data["validation"]), "--test", str(data["test"]),
        "--learning-rate", "5e-3", "--batch-size", str(batch_size), "--prune-epochs", "4",
        "--final-epochs", "2", "--target-sparsity", "0.5", "--no-onnx", "--no-latency",
        "--quiet", "--checkpoint-steps", "0", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        argv = [*launcher, "--master_port", str(free_port()), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, *argv], cwd=out.parent, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), done


def test_two_process_prune_matches_one_process(tiny_models, tmp_path):
    data = write_sentiment_files(tmp_path / "data")
    runs = tmp_path / "runs"
    runs.mkdir()
    # Same effective batch (2 x 8 = 16) and so the same number of steps in both runs.
    single, _ = _prune(tiny_models["bert"], data, runs / "one", 1, 16)
    double, done = _prune(tiny_models["bert"], data, runs / "two", 2, 8)
    # One output directory, complete, and nothing else from any rank (no checkpoint, no
    # second --out, no staging leftovers).
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]
    assert sorted(p.name for p in (runs / "two").iterdir()) == sorted(
        p.name for p in (runs / "one").iterdir()
    )
    assert done.stdout.count("wrote ") == 1  # only rank 0 prints its summary
    for report in (single, double):
        assert abs(report["sparsity"]["encoder"] - 0.5) <= 0.02
    assert double["structure"]["hidden"] == single["structure"]["hidden"]
    assert len(double["structure"]["layers"]) == len(single["structure"]["layers"])
    assert double["phases"]["prune"][0]["steps"] == single["phases"]["prune"][0]["steps"]
    # The tiny task is separable; 32 test examples make one example 0.03 of accuracy and
    # the two runs see different batches (and gate noise), so only a loose agreement is
    # expected: both well above chance or within a quarter of each other.
    a, b = single["metrics"]["accuracy"], double["metrics"]["accuracy"]
    assert (a >= 0.5 and b >= 0.5) or abs(a - b) <= 0.25, (a, b)
