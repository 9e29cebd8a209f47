"""Checkpoint and resume: a run stopped at any point and resumed ends exactly like one that
was never stopped (same weights, same report), stop signals save first, and checkpoints
of another configuration, of an unfinished run or of a broken write are handled."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spruce.cli.main import main
from spruce.data import TaskDataConfig, load_task
from spruce.errors import SpruceError
from spruce.models import load_classifier
from spruce.pipelines.common import build_loaders
from spruce.train import TrainConfig, Trainer, evaluate, seed_everything
from spruce.train import checkpoint as checkpoint_module
from spruce.train.checkpoint import Checkpointer, PhaseCheckpoint, checkpoint_dir
from spruce.train.interrupt import Interrupted
from spruce.utils.atomic import StorageError
from tiny_models import write_sentiment_files

REPO = Path(__file__).resolve().parents[1]


class Crash(Exception):
    """Stands for the process dying right after a checkpoint was written."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_sentiment_files(tmp_path_factory.mktemp("data"))


def crash_after_save(monkeypatch, phase: str, step: int | None = None) -> None:
    """Raise :class:`Crash` once ``phase`` has saved at ``step`` (None: its final save)."""
    real = PhaseCheckpoint.save

    def save(self, state):
        real(self, state)
        at_end = step is None and state["finished"]
        if self.phase == phase and (at_end or (state["step"] == step and not state["finished"])):
            raise Crash(f"{phase} step {state['step']}")

    monkeypatch.setattr(PhaseCheckpoint, "save", save)


def comparable(report):
    """The report without wall-clock times, which no two runs share."""
    if isinstance(report, dict):
        return {k: comparable(v) for k, v in report.items() if not k.endswith("time_s")}
    if isinstance(report, list):
        return [comparable(v) for v in report]
    return report


def assert_same_run(out: Path, reference: Path) -> None:
    """Identical report (but for times) and bit-identical weights; no checkpoint left."""
    report = json.loads((out / "report.json").read_text())
    expected = json.loads((reference / "report.json").read_text())
    assert comparable(report) == comparable(expected)
    weights = load_file(out / "model" / "model.safetensors")
    reference_weights = load_file(reference / "model" / "model.safetensors")
    assert weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert torch.equal(weights[name], tensor), name
    files = sorted(p.relative_to(out) for p in (out / "model").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(reference) for p in (reference / "model").rglob("*"))
    for name in files:  # config, tokenizer and weights, byte for byte
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not checkpoint_dir(out).exists()


def command(kind: str, model: Path, data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    argv = [
        kind, "--model", str(model), "--train", str(data["train"]),
        "--validation", str(data["validation"]), "--test", str(data["test"]),
        "--learning-rate", "5e-3", "--batch-size", "16", "--threads", "1", "--device", "cpu",
        "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    if kind in ("prune", "adapt"):
        argv += ["--target-sparsity", "0.5", "--no-onnx", "--no-latency"]
    return argv


# Small runs that cross epochs (64 labelled examples: 4 batches an epoch) and evaluate.
FINETUNE = ("--max-train-samples", "64", "--max-steps", "10", "--eval-steps", "3")
PRUNE_DISTILL_MLM = (
    "--max-train-samples", "64", "--distill", "--max-steps", "6", "--prune-max-steps", "8",
    "--final-max-steps", "6", "--aux", "mlm", "--aux-schedule", "constant",
    "--checkpoint-steps", "3",
)  # fmt: skip
# The teacher's predictions on the unlabelled rest: a padding-only stream, tied gates.
PRUNE_DISTILL_AUX = (
    "--max-train-samples", "64", "--distill", "--max-steps", "6", "--prune-max-steps", "8",
    "--final-max-steps", "6", "--aux", "distill", "--coupling", "tied", "--aux-schedule",
    "constant", "--checkpoint-steps", "3",
)  # fmt: skip
PRUNE_ROUNDS = (
    "--max-train-samples", "64", "--method", "magnitude", "--prune-rounds", "2",
    "--prune-max-steps", "8", "--final-max-steps", "6", "--checkpoint-steps", "3",
)  # fmt: skip
PRUNE_SEQUENTIAL = (
    "--max-train-samples", "64", "--aux", "mlm", "--coupling", "sequential", "--transfer",
    "both", "--aux-steps", "6", "--prune-max-steps", "6", "--final-max-steps", "4",
    "--checkpoint-steps", "2",
)  # fmt: skip
ADAPT_ROUNDS = (
    "--max-train-samples", "64", "--rank", "3", "--criterion", "taylor", "--prune-rounds",
    "2", "--epochs-per-round", "1", "--final-epochs", "2", "--checkpoint-steps", "3",
)  # fmt: skip

CASES = {
    "finetune": ("finetune", (*FINETUNE, "--checkpoint-steps", "4")),
    "prune-distill-mlm": ("prune", PRUNE_DISTILL_MLM),
    "prune-distill-aux": ("prune", PRUNE_DISTILL_AUX),
    "prune-rounds": ("prune", PRUNE_ROUNDS),
    "prune-sequential": ("prune", PRUNE_SEQUENTIAL),
    "adapt-rounds": ("adapt", ADAPT_ROUNDS),
}


@pytest.fixture(scope="module")
def references(tiny_models, data, tmp_path_factory) -> dict[str, Path]:
    """Each case run once without interruption (built on first use)."""
    root, built = tmp_path_factory.mktemp("references"), {}

    class Lazy(dict):
        def __missing__(self, case: str) -> Path:
            kind, extra = CASES[case]
            out = root / case
            assert main(command(kind, tiny_models["bert"], data, out, *extra)) == 0
            self[case] = out
            return out

    return Lazy(built)


@pytest.mark.parametrize(
    ("case", "phase", "step"),
    [
        ("finetune", "finetune", 4),  # mid-epoch, before the best evaluation
        ("prune-distill-mlm", "teacher", 3),
        ("prune-distill-mlm", "prune", 6),  # gates, multipliers, distiller, MLM stream
        ("prune-distill-mlm", "prune", None),  # between the pruning phase and compaction
        ("prune-distill-mlm", "final", 3),  # compact model, compacted MLM head
        ("prune-distill-aux", "prune", 6),  # distill stream, its own gate set
        ("prune-distill-aux", "final", 3),  # compact student against the dense teacher
        ("prune-rounds", "prune round 1", None),  # round 2's masks scored again
        ("prune-rounds", "final", 3),  # round 2's masks taken from the checkpoint
        ("prune-sequential", "auxiliary stage", 4),
        ("adapt-rounds", "prune round 1", 3),
        ("adapt-rounds", "final", 3),
    ],
)
def test_stopped_and_resumed_run_equals_the_uninterrupted_one(
    tiny_models, data, references, tmp_path, monkeypatch, case, phase, step
):
    kind, extra = CASES[case]
    argv = command(kind, tiny_models["bert"], data, tmp_path / "out", *extra)
    crash_then_resume(monkeypatch, argv, tmp_path / "out", phase, step)
    assert_same_run(tmp_path / "out", references[case])


def crash_then_resume(monkeypatch, argv: list[str], out: Path, phase: str, step: int) -> None:
    """Run ``argv`` until just after the save at ``step`` of ``phase`` (nothing written to
    ``out``, the checkpoint kept), then run it again with ``--resume`` to the end."""
    with monkeypatch.context() as patch:
        crash_after_save(patch, phase, step)
        with pytest.raises(Crash):
            main(argv)
    assert not out.exists()
    assert (checkpoint_dir(out) / "run.json").is_file()
    assert main([*argv, "--resume"]) == 0


# -- the training loop on its own -------------------------------------------------------


# Validation accuracy by step, scripted so that the best step (4) and early stopping (at
# step 10, after three evaluations without gain) do not hang on the numbers of a tiny
# random model; the real evaluation still runs (and draws from the global generator).
SCRIPTED_ACCURACY = {2: 0.5, 4: 0.8, 6: 0.7, 8: 0.6, 10: 0.7, 12: 0.9, 14: 0.9}


def _trainer(model_dir: Path, data: dict[str, Path], checkpoint=None, crash_at: int = 0):
    seed_everything(0)
    task = load_task(TaskDataConfig(train=str(data["train"]), validation=str(data["validation"])))
    model, tokenizer, _ = load_classifier(str(model_dir), task.label_names)
    config = TrainConfig(max_steps=14, batch_size=16, learning_rate=1e-3, eval_steps=2)
    loaders = build_loaders(task, tokenizer, config, max_length=32)
    multiplier = torch.nn.Parameter(torch.zeros(()))  # learns outside the model
    extra = torch.optim.Adam([multiplier], lr=0.1)
    current = {"step": 0}

    def loss_fn(model, batch):
        loss = model(**batch).loss
        return loss + (multiplier - 1.0) ** 2, {}

    def track(trainer, step, stats):
        if step == crash_at:
            raise Crash
        current["step"] = step

    def scripted_evaluation() -> dict[str, float]:
        return {
            **evaluate(model, loaders["validation"]),
            "accuracy": SCRIPTED_ACCURACY[current["step"]],
        }

    holder = torch.nn.ParameterList([multiplier])
    trainer = Trainer(
        model,
        loaders["train"],
        config,
        evaluate=scripted_evaluation,
        loss_fn=loss_fn,
        callbacks=[track],
        extra_optimizers=[extra],
        progress=False,
        checkpoint=checkpoint,
        checkpoint_modules=[holder],
    )
    return model, trainer, multiplier


# 6 batches an epoch, a save every 3 steps: mid-epoch after the best step, just after an
# epoch end, at the early-stopping step.
@pytest.mark.parametrize("crash_at", [5, 7, 10])
def test_trainer_resumes_bit_identically(tiny_models, data, tmp_path, crash_at):
    model, trainer, multiplier = _trainer(tiny_models["bert"], data)
    expected = trainer.fit()
    assert expected.stopped_early and expected.steps == 10 and expected.best_step == 4
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    directory = tmp_path / "checkpoint"
    _, trainer, _ = _trainer(tiny_models["bert"], data, Checkpointer(directory, "x", 3).phase("p"),
                             crash_at)  # fmt: skip
    with pytest.raises(Crash):
        trainer.fit()
    checkpoint = Checkpointer(directory, "x", 3)
    checkpoint.resume()
    model, trainer, resumed_multiplier = _trainer(tiny_models["bert"], data, checkpoint.phase("p"))
    result = trainer.fit()
    assert result.losses == expected.losses
    assert result.evaluations == expected.evaluations
    assert (result.best_step, result.steps) == (expected.best_step, expected.steps)
    assert torch.equal(resumed_multiplier, multiplier)
    for name, tensor in weights.items():  # the best (step 4) weights, kept in the checkpoint
        assert torch.equal(model.state_dict()[name], tensor), name

    # A finished phase returns its saved result at once, with its weights.
    checkpoint = Checkpointer(directory, "x", 3)
    checkpoint.resume()
    model, trainer, _ = _trainer(tiny_models["bert"], data, checkpoint.phase("p"), crash_at=1)
    assert trainer.fit().losses == expected.losses  # crash_at=1 would raise if it trained
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


# -- killed for real ----------------------------------------------------------------------


def _spruce(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "spruce", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"spruce ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.01)


def test_sigkill_during_pruning_then_resume(tiny_models, data, tmp_path):
    # --recipe plain: the pruning phase comes first, so its checkpoint is 00-prune.pt.
    extra = ("--max-train-samples", "64", "--prune-max-steps", "40", "--final-max-steps", "6",
             "--checkpoint-steps", "1", "--recipe", "plain")  # fmt: skip
    reference = tmp_path / "reference"
    assert main(command("prune", tiny_models["bert"], data, reference, *extra)) == 0
    out = tmp_path / "out"
    argv = command("prune", tiny_models["bert"], data, out, *extra)
    process = _spruce(argv)
    _wait_for(checkpoint_dir(out) / "00-prune.pt", process)
    time.sleep(0.2)  # a few more steps, then the kill lands wherever it lands
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not out.exists() and checkpoint_dir(out).is_dir()
    assert main([*argv, "--resume"]) == 0
    assert_same_run(out, reference)


def test_sigterm_saves_a_checkpoint_and_exits_143(tiny_models, data, tmp_path):
    out = tmp_path / "out"
    # Long enough (no early stopping) that the signal lands while it trains.
    argv = command("finetune", tiny_models["bert"], data, out, "--max-steps", "400",
                   "--patience", "1000", "--checkpoint-steps", "1")  # fmt: skip
    process = _spruce(argv)
    _wait_for(checkpoint_dir(out) / "00-finetune.pt", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("spruce: interrupted at step ")
    assert lines[0].endswith(
        f"of phase finetune; checkpoint saved in {checkpoint_dir(out)}; rerun the same "
        "command with --resume"
    )
    step = int(lines[0].split("step ")[1].split()[0])
    state = torch.load(checkpoint_dir(out) / "00-finetune.pt", weights_only=True)
    assert state["step"] == step and not state["finished"]
    assert not out.exists()


def test_sigint_saves_at_the_next_step_and_the_run_resumes(
    tiny_models, data, references, tmp_path, monkeypatch, capsys
):
    argv = command("finetune", tiny_models["bert"], data, tmp_path / "out", *FINETUNE)
    real, handler = PhaseCheckpoint.save, signal.getsignal(signal.SIGINT)

    def save_then_ctrl_c(self, state):
        real(self, state)
        if state["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(PhaseCheckpoint, "save", save_then_ctrl_c)
        capsys.readouterr()
        assert main([*argv, "--checkpoint-steps", "2"]) == 130
    err = capsys.readouterr().err
    directory = checkpoint_dir(tmp_path / "out")
    assert err == (
        f"spruce: interrupted at step 3 of phase finetune; checkpoint saved in {directory}; "
        "rerun the same command with --resume\n"
    )
    assert signal.getsignal(signal.SIGINT) is handler  # put back after the phase
    assert main([*argv, "--checkpoint-steps", "2", "--resume"]) == 0
    assert_same_run(tmp_path / "out", references["finetune"])


# -- refusals and damaged checkpoints ------------------------------------------------------


def _leave_a_checkpoint(argv: list[str], monkeypatch) -> Path:
    with monkeypatch.context() as patch:
        crash_after_save(patch, "finetune", 2)
        with pytest.raises(Crash):
            main([*argv, "--checkpoint-steps", "2"])
    return checkpoint_dir(Path(argv[argv.index("--out") + 1]))


def test_checkpoint_of_another_configuration_is_refused(
    tiny_models, data, tmp_path, monkeypatch, capsys
):
    argv = command("finetune", tiny_models["bert"], data, tmp_path / "out", *FINETUNE)
    directory = _leave_a_checkpoint(argv, monkeypatch)
    capsys.readouterr()
    changed = [*argv, "--learning-rate", "1e-2", "--resume"]
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert err == (
        f"spruce: error: the checkpoint in {directory} was written with train.learning_rate "
        f"0.005, this run has 0.01; rerun with the same options, or remove {directory} to "
        "start again\n"
    )
    assert main([*argv, "--resume", "--seed", "1", "--max-steps", "9"]) == 2
    assert "data.seed 0 and train.max_steps 10 and train.seed 0" in capsys.readouterr().err
    # Output and runtime settings may change (--checkpoint-steps, --threads, --device, ...).
    assert main([*argv, "--resume", "--checkpoint-steps", "5"]) == 0


def _written_before(directory: Path, setting: str) -> None:
    """Rewrite ``run.json`` as a spruce release without ``setting`` (``section.name``)
    would have written it: the setting absent, the fingerprint computed without it."""
    path = directory / "run.json"
    run = json.loads(path.read_text())
    section, name = setting.split(".")
    del run["configuration"][section][name]
    run["fingerprint"] = checkpoint_module.configuration_fingerprint(run["configuration"])
    path.write_text(json.dumps(run))


def test_checkpoint_older_than_a_setting_resumes_at_its_default(
    tiny_models, data, references, tmp_path, monkeypatch, capsys
):
    kind, extra = CASES["prune-rounds"]
    out = tmp_path / "out"
    argv = command(kind, tiny_models["bert"], data, out, *extra)
    with monkeypatch.context() as patch:
        crash_after_save(patch, "final", 3)
        with pytest.raises(Crash):
            main(argv)
    directory = checkpoint_dir(out)
    _written_before(directory, "prune.latency_runtime")
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert capsys.readouterr().err == (
        f"spruce: the checkpoint in {directory} predates prune.latency_runtime; "
        "continuing with the default\n"
    )
    assert_same_run(out, references["prune-rounds"])


def test_checkpoint_older_than_a_setting_needs_the_other_settings_equal(
    tiny_models, data, tmp_path, monkeypatch, capsys
):
    argv = command("finetune", tiny_models["bert"], data, tmp_path / "out", *FINETUNE)
    directory = _leave_a_checkpoint(argv, monkeypatch)
    _written_before(directory, "train.max_steps")
    capsys.readouterr()
    # max_steps is at 10, not its default: absent from the checkpoint, it differs.
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "written with train.max_steps (no such setting), this run has 10" in err


def test_existing_checkpoint_needs_resume_or_overwrite(
    tiny_models, data, tmp_path, monkeypatch, capsys
):
    argv = command("finetune", tiny_models["bert"], data, tmp_path / "out", *FINETUNE)
    directory = _leave_a_checkpoint(argv, monkeypatch)
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"spruce: error: a checkpoint of an unfinished run exists in {directory}; rerun with "
        "--resume to continue it, or --overwrite to start again\n"
    )
    assert main([*argv, "--overwrite"]) == 0
    assert not directory.exists() and (tmp_path / "out" / "report.json").is_file()


def test_resume_without_a_checkpoint_starts_from_the_beginning(tiny_models, data, tmp_path, capsys):
    out = tmp_path / "out"
    argv = command("finetune", tiny_models["bert"], data, out, "--max-steps", "2", "--resume")
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err == f"spruce: no checkpoint in {checkpoint_dir(out)}; starting from the beginning\n"
    assert main([*argv[:-1], "--overwrite", "--resume", "--checkpoint-steps", "0"]) == 2
    assert "--checkpoint-steps 0 turns off" in capsys.readouterr().err


def test_checkpoint_steps_zero_writes_nothing(tiny_models, data, tmp_path, monkeypatch):
    def no_write(*args, **kwargs):
        raise AssertionError("nothing should be written")

    monkeypatch.setattr(Checkpointer, "write", no_write)
    argv = command("finetune", tiny_models["bert"], data, tmp_path / "out", "--max-steps", "2")
    assert main([*argv, "--checkpoint-steps", "0"]) == 0


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint = Checkpointer(tmp_path / "run.checkpoint", "x", 1, {"seed": 0})
    phase = checkpoint.phase("finetune")
    phase.save({"format": 1, "step": 1, "weights": torch.arange(4.0)})
    real_save = torch.save

    def disk_full(state, handle):
        real_save({"half": torch.zeros(1000)}, handle)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(StorageError, match="no space left on the device while writing the "
                       "checkpoint") as caught:  # fmt: skip
        phase.save({"format": 1, "step": 2, "weights": torch.zeros(4)})
    assert "the previous checkpoint is kept" in caught.value.one_line()
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert sorted(p.name for p in checkpoint.directory.iterdir()) == ["00-finetune.pt", "run.json"]

    # A process killed while writing leaves a temporary file, which resume() removes.
    (checkpoint.directory / ".00-finetune.pt.tmp-abc123").write_bytes(b"\x00" * 10)
    reopened = Checkpointer(tmp_path / "run.checkpoint", "x", 1, {"seed": 0})
    reopened.resume()
    state = reopened.phase("finetune").load()
    assert state is not None and state["step"] == 1
    assert torch.equal(state["weights"], torch.arange(4.0))
    assert sorted(p.name for p in checkpoint.directory.iterdir()) == ["00-finetune.pt", "run.json"]


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE / SIGXFSZ as on Linux")
def test_real_file_size_limit_while_checkpointing(tiny_models, data, tmp_path):
    """The kernel refuses the checkpoint file (torch.save reports it as "unexpected pos",
    without the errno): one line, exit 2, no temporary file, nothing at --out."""
    from test_output_safety import FILE_SIZE_LIMIT

    script = tmp_path / "limited.py"
    script.write_text(FILE_SIZE_LIMIT)
    out = tmp_path / "out"
    argv = command("finetune", tiny_models["bert"], data, out, "--max-steps", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(script), *argv], capture_output=True,
                            text=True, timeout=300, env=env)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "spruce: error: a file is larger than the file system allows while writing the "
        f"checkpoint {checkpoint_dir(out)}; choose another --out (the previous checkpoint is "
        "kept)\n"
    )
    assert not out.exists()
    assert [p.name for p in checkpoint_dir(out).iterdir()] == ["run.json"]


def test_unreadable_or_unsafe_checkpoint_files_are_user_errors(tmp_path):
    marker = tmp_path / "marker"
    checkpoint = Checkpointer(tmp_path / "c", "x", 1)
    checkpoint.phase("finetune").save({"format": 1, "step": 1})
    (checkpoint.directory / "00-finetune.pt").write_bytes(b"garbage")
    with pytest.raises(SpruceError, match=r"cannot read the checkpoint file .*00-finetune\.pt"):
        Checkpointer(tmp_path / "c", "x", 1).resume()

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    torch.save({"format": 1, "evil": Evil()}, checkpoint.directory / "00-finetune.pt")
    with pytest.raises(SpruceError, match="cannot read the checkpoint file"):
        Checkpointer(tmp_path / "c", "x", 1).resume()
    assert not marker.exists()


def test_interrupted_exit_codes():
    assert Interrupted(signal.SIGINT).exit_code == 130
    assert Interrupted(signal.SIGTERM).exit_code == 143


# -- image tasks: CNN adapters on EfficientNet-Lite0 ---------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    from test_vision_adapt import _write_npz

    root = tmp_path_factory.mktemp("images")
    _write_npz(root / "train.npz", 16, 0)
    _write_npz(root / "test.npz", 6, 1)
    return {"train": root / "train.npz", "test": root / "test.npz"}


def image_command(images: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """16 images, 4 batches an epoch: phases dense (4 steps), round 1 (4), final (8),
    round 2's plan scored between round 1 and the final phase; a save every 3 steps."""
    return [
        "adapt", "--train", str(images["train"]), "--test", str(images["test"]),
        "--criterion", "taylor", "--target-sparsity", "0.5", "--prune-rounds", "2",
        "--epochs-per-round", "1", "--final-epochs", "2", "--batch-size", "4",
        "--no-latency", "--threads", "1", "--checkpoint-steps", "3", "--quiet",
        "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def image_references(images, tmp_path_factory) -> dict[str, Path]:
    """Adapt and fine-prune runs without interruption (built on first use)."""
    root = tmp_path_factory.mktemp("image-references")

    class Lazy(dict):
        def __missing__(self, mode: str) -> Path:
            extra = ("--fine-prune",) if mode == "fine-prune" else ()
            assert main(image_command(images, root / mode, *extra)) == 0
            self[mode] = root / mode
            return root / mode

    return Lazy()


def assert_same_image_run(out: Path, reference: Path) -> None:
    """Every file byte for byte (fused model, ONNX, task file) and the same report but for
    the wall time and where it was written; no checkpoint left."""
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(p.name for p in reference.iterdir())
    for name in files:
        if name != "report.json":
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name

    def untimed(path: Path) -> dict:
        report = json.loads(path.read_text())
        assert "latency" not in report  # --no-latency
        assert "out" not in report["config"]  # where a run writes is not a setting of it
        del report["cnn_config"]["out"]
        return comparable(report)

    assert untimed(out / "report.json") == untimed(reference / "report.json")
    assert not checkpoint_dir(out).exists()


@pytest.mark.parametrize(
    ("mode", "phase", "step"),
    [
        ("adapt", "dense", 3),
        ("adapt", "round 1", None),  # round 2's plan is scored again on the restored model
        ("adapt", "final", 6),  # mid-epoch; round 1 and 2 plans come from the checkpoint
        ("fine-prune", "round 1", 3),  # every weight and BatchNorm's statistics learn
    ],
)
def test_stopped_and_resumed_image_task_equals_the_uninterrupted_one(
    images, image_references, tmp_path, monkeypatch, mode, phase, step
):
    extra = ("--fine-prune",) if mode == "fine-prune" else ()
    argv = image_command(images, tmp_path / "out", *extra)
    crash_then_resume(monkeypatch, argv, tmp_path / "out", phase, step)
    assert_same_image_run(tmp_path / "out", image_references[mode])


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_during_an_image_task_saves_and_the_run_resumes(
    images, image_references, tmp_path, monkeypatch, capsys, signal_number
):
    argv = image_command(images, tmp_path / "out")
    real = PhaseCheckpoint.save

    def save_then_signal(self, state):
        real(self, state)
        if self.phase == "final" and state["step"] == 3 and not state["finished"]:
            os.kill(os.getpid(), signal_number)

    with monkeypatch.context() as patch:
        patch.setattr(PhaseCheckpoint, "save", save_then_signal)
        # main() sets SIGTERM's handler; the trainer's takes over inside each phase.
        capsys.readouterr()
        assert main(argv) == 128 + signal_number
    directory = checkpoint_dir(tmp_path / "out")
    assert capsys.readouterr().err == (
        f"spruce: interrupted at step 4 of phase final; checkpoint saved in {directory}; "
        "rerun the same command with --resume\n"
    )
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--resume"]) == 0
    assert_same_image_run(tmp_path / "out", image_references["adapt"])


def test_image_task_checkpoint_of_another_configuration_is_refused(
    images, tmp_path, monkeypatch, capsys
):
    argv = image_command(images, tmp_path / "out")
    with monkeypatch.context() as patch:
        crash_after_save(patch, "dense", 3)
        with pytest.raises(Crash):
            main(argv)
    directory = checkpoint_dir(tmp_path / "out")
    capsys.readouterr()
    assert main([*argv, "--target-sparsity", "0.4", "--resume"]) == 2
    assert capsys.readouterr().err == (
        f"spruce: error: the checkpoint in {directory} was written with target_sparsity 0.5, "
        f"this run has 0.4; rerun with the same options, or remove {directory} to start "
        "again\n"
    )
    assert main([*argv, "--fine-prune", "--lr", "1e-2", "--resume"]) == 2
    assert "with fine_prune false and lr 0.001, this run has true and 0.01" in (
        capsys.readouterr().err
    )
    assert main(argv) == 2  # an unfinished run's checkpoint needs --resume or --overwrite
    assert "a checkpoint of an unfinished run exists" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and directory.is_dir()
    # Output and runtime settings may change between attempts.
    assert main([*argv, "--checkpoint-steps", "5", "--resume"]) == 0
    assert not directory.exists() and (tmp_path / "out" / "report.json").is_file()


def test_only_settings_added_at_their_default_pass_the_fingerprint(tmp_path):
    written = {"command": "prune", "lr": 0.1, "prune": {"kept": 2}}
    Checkpointer.for_configuration(tmp_path, written).write(
        "00-prune.pt", {"format": checkpoint_module.FORMAT, "products": {}}
    )

    def resume(configuration):
        defaults = {"prune": {"new": 0}, "lr": 0.5}
        Checkpointer.for_configuration(tmp_path, configuration, defaults=defaults).resume()

    resume({**written, "prune": {"kept": 2, "new": 0}})  # added, at its default
    with pytest.raises(SpruceError, match=r"prune\.new \(no such setting\), this run has 1"):
        resume({**written, "prune": {"kept": 2, "new": 1}})  # added, not at its default
    with pytest.raises(SpruceError, match=r"written with lr 0\.1, this run has \(no such"):
        resume({"command": "prune", "prune": {"kept": 2, "new": 0}})  # one removed
    with pytest.raises(SpruceError, match=r"lr 0\.1, this run has 0\.5"):
        resume({**written, "lr": 0.5, "prune": {"kept": 2, "new": 0}})  # one changed
