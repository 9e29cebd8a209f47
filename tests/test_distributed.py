"""Multi-process training (``torchrun``, gloo on CPU): gates stay in step across processes,
and a 2-process ``spruce prune`` writes what a 1-process run writes, from rank 0 only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from spruce.masks.control import SparsityController, SparsityStep, make_optimizers
from spruce.masks.gates import EncoderGates
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


# -- transfer from auxiliary tasks under several processes ----------------------------


def test_auxiliary_streams_are_sharded_per_rank_and_resume_per_rank(tiny_models):
    """Each rank draws its own shard of every auxiliary epoch with its own masking, and the
    stream state rank 0 saves (the one every rank loads on resume) puts each rank back on
    exactly the batches it would have drawn next."""
    import datasets

    from spruce.errors import SpruceError
    from spruce.models import load_classifier
    from spruce.transfer.data import mlm_stream

    _, tokenizer, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    texts = datasets.Dataset.from_dict(
        {"text_a": [f"good film number {i} was dull" for i in range(40)]}
    )

    def stream(rank: int, world_size: int = 2):
        return mlm_stream(texts, tokenizer, 4, 16, 0.3, seed=7, rank=rank, world_size=world_size)

    ranks = [stream(0), stream(1)]
    shards = [set(s.loader.sampler) for s in ranks]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 40  # disjoint, complete
    assert len(ranks[0].loader) == len(ranks[1].loader) == 5  # half the batches each
    first = [next(s) for s in ranks]
    assert not torch.equal(first[0]["input_ids"], first[1]["input_ids"])
    for _ in range(len(ranks[0].loader) + 1):  # into the second epoch
        for s in ranks:
            next(s)
    saved = ranks[0].state_dict()  # what rank 0's checkpoint holds
    for rank, original in enumerate(ranks):
        resumed = stream(rank)
        resumed.load_state_dict(saved)
        for _ in range(len(original.loader)):  # the rest of this epoch and into the next
            expected, got = next(original), next(resumed)
            for key in ("input_ids", "labels"):
                assert torch.equal(expected[key], got[key]), (rank, key)
        assert resumed.epochs == original.epochs == 2
    # A state drawn by one process puts the position on other examples: refused.
    with pytest.raises(SpruceError, match="as many processes"):
        stream(0).load_state_dict(mlm_stream(texts, tokenizer, 4, 16, 0.3, seed=7).state_dict())


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().cpu() for k, v in state.items()}


def _transfer_worker(
    rank: int, world_size: int, runs: list[tuple[str, list[str]]], ports: list[int], out: str
) -> None:
    """One rank of several ``spruce prune`` runs with auxiliary tasks (through the CLI, as
    under torchrun), recording what this rank holds at the end of every training phase:
    each phase starts from rank 0's values (broadcast), so a drift must be caught at the
    end of the phase in which it happens."""
    os.environ.update({"WORLD_SIZE": str(world_size), "RANK": str(rank), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    import spruce.pipelines.prune as pipeline
    from spruce.cli.main import main

    recorded: dict = {}
    from spruce.pruning.phases import LearnedMasks

    real_l0, real_final, real_evaluate = (
        LearnedMasks.run, pipeline.final_phase_loss, pipeline.evaluate_splits,
    )  # fmt: skip

    def l0(self, inputs):
        model = inputs.model
        result = real_l0(self, inputs)
        gate_sets = {"target": result.gates, **result.other_gates}
        recorded["l0"].append(
            {
                "weights": _clone(model.state_dict()),
                "gates": {name: _clone(g.state_dict()) for name, g in gate_sets.items()},
            }
        )
        return result

    def final_phase_loss(base, objective, *args):
        recorded["objective"] = objective
        return real_final(base, objective, *args)

    def evaluate_splits(model, loaders, device):
        # First after the final fine-tune; with a teacher, a second time on the dense model.
        objective = recorded.pop("objective", None)
        if objective is None:
            return real_evaluate(model, loaders, device)
        recorded["final"] = {
            "weights": _clone(model.state_dict()),
            "heads": _clone(objective.heads.state_dict()),
            "aux_indices": [list(r.stream.loader.sampler) for r in objective.runtimes],
        }
        return real_evaluate(model, loaders, device)

    LearnedMasks.run = l0
    pipeline.final_phase_loss, pipeline.evaluate_splits = final_phase_loss, evaluate_splits
    for (name, argv), port in zip(runs, ports, strict=True):
        os.environ["MASTER_PORT"] = str(port)  # a fresh rendezvous: main() ends its group
        recorded.clear()
        recorded["l0"] = []
        code = main(argv)
        torch.save({"code": code, **recorded}, Path(out) / f"{name}-rank{rank}.pt")


def _assert_same(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for key, value in a.items():
        if isinstance(value, dict):
            _assert_same(value, b[key], f"{where}/{key}")
        else:
            assert torch.equal(value, b[key]), f"{where}/{key}"


def test_two_process_transfer_keeps_every_rank_identical(tiny_models, tmp_path, monkeypatch):
    """``--aux mlm`` with joint, tied and sequential coupling, and joint with ``--aux
    distill`` too, in 2 processes: the runs complete and, at the end of every phase,
    encoder weights, every gate set (tied has
    the auxiliary task's own) and the auxiliary heads are bit-identical on both ranks,
    although each rank drew other target and auxiliary batches. The ranks all-reduce the
    same summed gradients and step the same optimizers on them, so there is no tolerance."""
    data = write_sentiment_files(tmp_path / "data")
    common = [
        "prune", "--model", str(tiny_models["bert"]), "--train", str(data["train"]),
        "--test", str(data["test"]), "--learning-rate", "5e-3", "--batch-size", "8",
        "--prune-epochs", "1", "--final-epochs", "1", "--target-sparsity", "0.5",
        "--no-onnx", "--no-latency", "--quiet", "--checkpoint-steps", "0", "--threads", "1",
        "--aux", "mlm",
    ]  # fmt: skip
    couplings = {
        "joint": ["--coupling", "joint", "--aux-schedule", "constant"],
        "tied": ["--coupling", "tied", "--aux-schedule", "constant"],
        "sequential": ["--coupling", "sequential", "--transfer", "both", "--aux-steps", "3"],
        # The dense teacher's predictions as well: the student's own classifier runs
        # outside the wrapper too, against a teacher every rank fine-tuned alike.
        "joint-distill": ["--coupling", "joint", "--aux-schedule", "constant", "--distill",
                          "--max-steps", "2", "--aux", "distill"],
    }  # fmt: skip
    runs = [
        (name, [*common, *extra, "--out", str(tmp_path / name)])
        for name, extra in couplings.items()
    ]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    ports = [free_port() for _ in runs]
    mp.spawn(_transfer_worker, args=(2, runs, ports, str(tmp_path)), nprocs=2)
    for name in couplings:
        zero, one = (torch.load(tmp_path / f"{name}-rank{r}.pt") for r in range(2))
        assert zero["code"] == one["code"] == 0, name
        # sequential: auxiliary stage and target stage; the others: the target's phase.
        assert len(zero["l0"]) == len(one["l0"]) == (2 if name == "sequential" else 1)
        assert ("aux0:mlm" in zero["l0"][-1]["gates"]) == (name == "tied")
        for index, (a, b) in enumerate(zip(zero["l0"], one["l0"], strict=True)):
            _assert_same(a, b, f"{name}/l0 phase {index}")
        _assert_same(zero["final"]["weights"], one["final"]["weights"], f"{name}/final")
        _assert_same(zero["final"]["heads"], one["final"]["heads"], f"{name}/heads")
        for task, indices in enumerate(
            zip(zero["final"]["aux_indices"], one["final"]["aux_indices"], strict=True)
        ):
            assert not set(indices[0]) & set(indices[1]), (name, task)  # each rank its own shard
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert abs(report["sparsity"]["encoder"] - 0.5) <= 0.02, name
        calls = report["transfer"]["aux_losses_computed"]
        if name == "sequential":
            assert calls["first_stage"] == 3 and calls["prune"] == 0
        else:
            assert calls["prune"] == report["phases"]["prune"][0]["steps"] > 0
            assert calls["final"] > 0  # constant schedule: the heads train in the final phase


# -- a stop signal that reaches one rank only -----------------------------------------


def _signal_worker(rank: int, world_size: int, model_dir: str, data_dir: str, out: str) -> None:
    import signal

    from spruce.data import TaskDataConfig, load_task
    from spruce.models import load_classifier
    from spruce.pipelines.common import build_loaders
    from spruce.train import TrainConfig, Trainer, seed_everything
    from spruce.train import distributed as distributed_module
    from spruce.train.checkpoint import Checkpointer
    from spruce.train.interrupt import Interrupted

    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank))
    distributed_module._CONTEXT = None  # read this process's place from the environment
    context = distributed_module.context()
    context.init("gloo")
    try:
        seed_everything(0)
        data = Path(data_dir)
        task = load_task(TaskDataConfig(train=str(data / "train.tsv")))
        model, tokenizer, _ = load_classifier(model_dir, task.label_names)
        config = TrainConfig(max_steps=8, batch_size=4, learning_rate=1e-3)
        loaders = build_loaders(task, tokenizer, config, max_length=32)

        def kill_rank_1(trainer, step, stats):
            if rank == 1 and step == 3:  # as `kill PID` on one worker would
                os.kill(os.getpid(), signal.SIGTERM)

        checkpoint = Checkpointer(Path(out) / "run.checkpoint", "x", 2).phase("p")
        trainer = Trainer(
            model, loaders["train"], config, callbacks=[kill_rank_1], progress=False,
            checkpoint=checkpoint,
        )  # fmt: skip
        try:
            trainer.fit()
            outcome = {"finished": True}
        except Interrupted as stop:
            outcome = {"step": stop.step, "signal": stop.signal_number}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        context.destroy()


def test_a_stop_signal_to_one_rank_stops_every_rank_at_the_same_step(
    tiny_models, tmp_path, monkeypatch
):
    data = write_sentiment_files(tmp_path / "data")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    args = (2, str(tiny_models["bert"]), str(data["train"].parent), str(tmp_path))
    mp.spawn(_signal_worker, args=args, nprocs=2)
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # Rank 0 never got the signal, yet it saved and left at the step rank 1 stopped at
    # (without the shared flag it would train on and wait forever in the next all-reduce).
    assert outcomes == [{"step": 3, "signal": 15}] * 2
    assert list((tmp_path / "run.checkpoint").glob("*.pt"))  # rank 0 wrote the checkpoint
