"""Transfer from auxiliary tasks: every coupling, transfer and schedule does what it claims."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spruce.cli.main import main
from spruce.errors import SpruceError
from spruce.grid.spec import canonical
from spruce.models import load_classifier
from spruce.pruning.config import PruneConfig
from spruce.pruning.phases import LearnedMasks, PhaseExtras, PhaseInputs
from spruce.train import TrainConfig
from spruce.transfer import Schedule, TransferConfig, parse_aux
from spruce.transfer.data import Stream, mlm_stream, mlm_texts, text_stream
from spruce.transfer.heads import ClassifierHead, MaskedLMHead, encode
from spruce.transfer.objective import AuxiliaryObjective, AuxRuntime
from tiny_models import write_sentiment_files


def run_prune(model: Path, data: dict[str, Path], out: Path, *extra: str) -> dict:
    argv = [
        "prune", "--model", str(model), "--train", str(data["train"]),
        "--test", str(data["test"]), "--max-train-samples", "48", "--learning-rate", "5e-3",
        "--batch-size", "16", "--prune-epochs", "2", "--final-epochs", "1",
        "--target-sparsity", "0.5", "--no-latency", "--no-onnx", "--quiet",
        "--recipe", "plain",  # these tests are about --aux alone
        "--out", str(out), *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    return write_sentiment_files(tmp_path / "data", n_train=160)


# -- configuration -------------------------------------------------------------------


def test_auxiliary_loss_weights_default_per_kind():
    # MLM's loss through a fresh vocabulary head is ~15x the task's: it defaults to 0.3.
    assert [parse_aux(spec).weight for spec in ("mlm", "distill", "task:x.csv")] == [0.3, 1, 1]
    config = TransferConfig(aux=(parse_aux("mlm"),), coupling="joint").validate()
    assert config.aux[0].weight == 0.3
    assert config.to_dict()["aux"][0]["weight"] == 0.3
    assert replace(parse_aux("mlm"), weight=2.0).validate().weight == 2.0


def test_a_run_without_auxiliary_tasks_points_to_the_unlabelled_rest(
    tiny_models, data, tmp_path, capsys
):
    argv = ["prune", "--model", str(tiny_models["bert"]), "--train", str(data["train"]),
            "--max-train-samples", "48", "--prune-max-steps", "2", "--final-max-steps", "1",
            "--target-sparsity", "0.5", "--no-latency", "--no-onnx", "--recipe", "plain",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    unlabelled = json.loads((tmp_path / "out" / "report.json").read_text())["unlabelled_examples"]
    assert unlabelled > 0
    err = capsys.readouterr().err
    assert f"hint: {unlabelled:,} rows of --train were left unlabelled" in err
    assert "--aux distill (with --teacher or --distill) or --aux mlm" in err


def test_schedules_weight_the_auxiliary_loss_as_named():
    total = 100
    constant, prune_only = Schedule.parse("constant"), Schedule.parse("prune-only")
    assert constant.factor("final", 99, total) == 1.0
    assert prune_only.factor("prune", 10, total) == 1.0
    assert prune_only.factor("final", 10, total) == 0.0
    decay = [Schedule.parse("linear-decay").factor("prune", s, total) for s in (0, 50, 100)]
    assert decay == [1.0, 0.5, 0.0]
    warmup, delayed = Schedule.parse("warmup:5"), Schedule.parse("delayed:5")
    assert [warmup.factor("prune", s, total) for s in (0, 4, 5)] == [1.0, 1.0, 0.0]
    assert [delayed.factor("final", s, total) for s in (0, 4, 5)] == [0.0, 0.0, 1.0]
    for bad in ("warmup", "warmup:0", "delayed:x", "sometimes", "constant:3"):
        with pytest.raises(SpruceError, match="aux-schedule"):
            Schedule.parse(bad)


def test_configuration_validation_and_round_trip():
    with pytest.raises(SpruceError, match="needs at least one auxiliary task"):
        TransferConfig(coupling="joint").validate()
    with pytest.raises(SpruceError, match="task:PATH"):
        parse_aux("task")
    with pytest.raises(SpruceError, match="kind 'mlmm'"):
        parse_aux("mlmm")
    config = TransferConfig(aux=(parse_aux("mlm"), parse_aux("task:x.tsv")), coupling="tied")
    assert TransferConfig.from_dict(config.to_dict()) == config.validate()
    with pytest.raises(SpruceError, match="did you mean 'tie_strength'"):
        TransferConfig.from_dict({"tie_strenght": 2})


def test_canonical_settings_drop_what_a_coupling_ignores():
    base = {
        "transfer.transfer": "masks",
        "transfer.schedule": "prune-only",
        "transfer.tie_strength": 3,
        "transfer.aux": ["mlm"],
        "transfer.aux.weight": 0.3,
    }
    none = canonical({**base, "transfer.coupling": "none", "prune.method": "pdp"})
    assert none == {"transfer.coupling": "none", "prune.method": "pdp"}
    assert "transfer.schedule" not in canonical({**base, "transfer.coupling": "sequential"})
    assert "transfer.transfer" not in canonical({**base, "transfer.coupling": "tied"})
    # Joint coupling shares the encoder anyway: masks and both both mean shared gates.
    assert canonical({**base, "transfer.coupling": "joint"})["transfer.transfer"] == "both"
    sequential = canonical({**base, "transfer.coupling": "sequential"})
    assert sequential["transfer.transfer"] == "masks"


def test_canonical_settings_keep_what_a_run_uses_when_the_coupling_is_left_out():
    # aux without a coupling runs joint; without aux the distill recipe sets the transfer
    # itself, so its auxiliary settings apply; only recipe plain ignores them.
    given = {"transfer.aux": ["distill"], "transfer.augment": "concat"}
    assert canonical(given) == given
    recipe = {"transfer.select": "all", "transfer.augment": "concat"}
    assert canonical(recipe) == recipe
    assert canonical({**recipe, "prune.recipe": "distill"}) == {
        **recipe,
        "prune.recipe": "distill",
    }
    assert canonical({**recipe, "prune.recipe": "plain"}) == {"prune.recipe": "plain"}


# -- data and heads ------------------------------------------------------------------


def test_mlm_text_sources(tmp_path, tiny_models, data):
    from spruce.data import TaskDataConfig, load_task

    task = load_task(TaskDataConfig(train=str(data["train"]), max_train_samples=48))
    assert len(mlm_texts(parse_aux("mlm"), task)) == 160 - 48  # the unlabelled rest
    lines = tmp_path / "domain.txt"
    lines.write_text("good film\n\n  dull plot  \n")
    assert mlm_texts(parse_aux(f"mlm:{lines}"), task)["text_a"] == ["good film", "dull plot"]
    assert len(mlm_texts(parse_aux(f"mlm:{data['test']}"), task)) == 32  # a labelled file
    _, tokenizer, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    stream = mlm_stream(mlm_texts(parse_aux("mlm"), task), tokenizer, 8, 16, 0.3, seed=0)
    batch = next(stream)
    chosen = batch["labels"] != -100
    assert chosen.any() and (batch["labels"][chosen] >= 0).all()
    for _ in range(len(stream.loader)):
        next(stream)
    assert stream.epochs == 1  # cycles without end


def test_mlm_masking_follows_the_seed_and_resumes_in_a_later_epoch(tiny_models, data):
    from spruce.data import TaskDataConfig, load_task

    task = load_task(TaskDataConfig(train=str(data["train"]), max_train_samples=48))
    _, tokenizer, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    texts = mlm_texts(parse_aux("mlm"), task)

    def masks(stream, n):
        return [next(stream)["labels"] != -100 for _ in range(n)]

    first, again = (mlm_stream(texts, tokenizer, 8, 16, 0.3, seed=0) for _ in range(2))
    other = mlm_stream(texts, tokenizer, 8, 16, 0.3, seed=1)
    drawn = masks(first, 3)
    assert all(torch.equal(a, b) for a, b in zip(drawn, masks(again, 3), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(drawn, masks(other, 3), strict=True))
    masks(first, len(first.loader))  # into the second epoch: the replay alone misses epoch 1
    resumed = mlm_stream(texts, tokenizer, 8, 16, 0.3, seed=0)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(masks(first, 4), masks(resumed, 4), strict=True))


def test_text_stream_groups_rows_by_length_and_resumes_mid_epoch(tiny_models):
    import datasets

    _, tokenizer, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    words = ["good", "bad", "film", "plot", "dull", "fine"]
    texts = [" ".join(words[(i + j) % 6] for j in range(1 + i % 13)) for i in range(256)]
    rows = datasets.Dataset.from_dict({"text_a": texts})

    def epoch(stream):
        return [next(stream) for _ in range(len(stream.loader))]

    stream = text_stream(rows, tokenizer, batch_size=8, max_length=32, seed=0)
    batches = epoch(stream)
    seen = sorted(tuple(r[m.bool()].tolist()) for b in batches
                  for r, m in zip(b["input_ids"], b["attention_mask"], strict=True))  # fmt: skip
    assert seen == sorted(tuple(ids) for ids in tokenizer(texts)["input_ids"])  # each row once
    padded = sum(b["input_ids"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    assert padded < 1.2 * real  # random batches of these lengths pad ~1.6x
    epoch(stream)  # into the second epoch, then resume from its third batch
    [next(stream) for _ in range(3)]
    resumed = text_stream(rows, tokenizer, batch_size=8, max_length=32, seed=0)
    resumed.load_state_dict(stream.state_dict())
    for _ in range(4):
        assert torch.equal(next(stream)["input_ids"], next(resumed)["input_ids"])


@pytest.mark.parametrize("head_kind", ["mlm", "task"])
def test_compacted_heads_read_only_the_kept_hidden_dimensions(head_kind):
    torch.manual_seed(0)
    head = (
        MaskedLMHead(8, 20, "gelu", 1e-12) if head_kind == "mlm" else ClassifierHead(8, 3, 0, 0.5)
    ).eval()
    kept = torch.tensor([0, 2, 3, 7])
    hidden = torch.randn(2, 5, 8)
    hidden[..., [1, 4, 5, 6]] = 0.0  # what the masked encoder gives for removed dimensions
    labels = torch.randint(0, 20, (2, 5)) if head_kind == "mlm" else torch.tensor([0, 2])
    batch = {"labels": labels}
    small = head.compact(kept)
    assert small.input_layer().weight.shape[1] == 4
    assert torch.allclose(head.loss(hidden, batch), small.loss(hidden[..., kept], batch))


def test_encode_returns_last_hidden_states_for_every_family(tiny_models):
    for family, path in tiny_models.items():
        model, tokenizer, _ = load_classifier(str(path), ["a", "b"])
        batch = tokenizer(["good movie"], return_tensors="pt")
        hidden = encode(model, dict(batch))
        assert hidden.shape[-1] == model.config.hidden_size, family


# -- couplings, end to end -------------------------------------------------------------


def test_none_is_the_baseline_without_auxiliary_work(tiny_models, data, tmp_path):
    report = run_prune(tiny_models["bert"], data, tmp_path / "out")
    assert report["transfer"]["coupling"] == "none" and report["transfer"]["aux"] == []
    assert "aux_losses_computed" not in report["transfer"]


def test_aux_without_coupling_uses_the_documented_default(tiny_models, data, tmp_path):
    from spruce.transfer.config import DEFAULT_WITH_AUX

    report = run_prune(tiny_models["bert"], data, tmp_path / "out", "--aux", "mlm")
    assert report["transfer"]["coupling"] == DEFAULT_WITH_AUX["coupling"]
    assert [task["kind"] for task in report["transfer"]["aux"]] == ["mlm"]


@pytest.mark.parametrize(("schedule", "final_calls"), [("constant", True), ("prune-only", False)])
def test_joint_schedules_in_the_final_phase(tiny_models, data, tmp_path, schedule, final_calls):
    report = run_prune(tiny_models["bert"], data, tmp_path / "out", "--aux", "mlm",
                       "--coupling", "joint", "--aux-schedule", schedule)  # fmt: skip
    calls = report["transfer"]["aux_losses_computed"]
    assert calls["prune"] == report["phases"]["prune"][0]["steps"]  # one per target step
    assert (calls["final"] > 0) is final_calls
    assert report["transfer"]["schedule"] == schedule


@pytest.mark.parametrize(("schedule", "expected"), [("warmup:3", (3, 0)), ("delayed:4", (2, 3))])
def test_step_schedules_count_steps_across_phases(tiny_models, data, tmp_path, schedule, expected):
    # 48 examples / 16 = 3 steps per epoch: 6 pruning steps, then 3 final steps.
    report = run_prune(tiny_models["bert"], data, tmp_path / "out", "--aux", "mlm",
                       "--coupling", "joint", "--aux-schedule", schedule)  # fmt: skip
    calls = report["transfer"]["aux_losses_computed"]
    assert (calls["prune"], calls["final"]) == expected


def test_joint_with_a_labelled_task_and_shared_or_separate_gates(tiny_models, data, tmp_path):
    aux = ["--aux", "mlm", "--aux", f"task:{data['validation']}", "--aux-weight", "0.5"]
    shared = run_prune(tiny_models["bert"], data, tmp_path / "a", *aux,
                       "--coupling", "joint", "--transfer", "both")  # fmt: skip
    separate = run_prune(tiny_models["bert"], data, tmp_path / "b", *aux,
                         "--coupling", "joint", "--transfer", "weights")  # fmt: skip
    assert [t["own_gates"] for t in shared["transfer"]["tasks"]] == [False, False]
    assert [t["own_gates"] for t in separate["transfer"]["tasks"]] == [True, True]
    assert [t["weight"] for t in shared["transfer"]["aux"]] == [0.5, 0.5]
    for report in (shared, separate):
        assert abs(report["sparsity"]["encoder"] - 0.5) <= 0.02


def test_score_based_methods_accept_only_shared_structure(tiny_models, data, tmp_path, capsys):
    argv = ["prune", "--model", str(tiny_models["bert"]), "--train", str(data["train"]),
            "--method", "magnitude", "--aux", "mlm", "--coupling", "tied",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    assert "use --method l0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _record_phases(monkeypatch) -> list[dict]:
    """Capture the weights and initial gates every l0 phase starts from."""
    calls: list[dict] = []
    real = LearnedMasks.run

    def recording(self, inputs):
        model, start = inputs.model, self.extras.initial_gates
        calls.append(
            {
                "weights": {k: v.clone() for k, v in model.state_dict().items()},
                "initial_log_alpha": None
                if start is None
                else {k: v.clone() for k, v in start.state_dict().items()},
            }
        )
        result = real(self, inputs)
        calls[-1]["final_log_alpha"] = {k: v.clone() for k, v in result.gates.state_dict().items()}
        calls[-1]["final_weights"] = {k: v.clone() for k, v in model.state_dict().items()}
        return result

    monkeypatch.setattr(LearnedMasks, "run", recording)
    return calls


@pytest.mark.parametrize("transfer", ["weights", "masks", "both"])
def test_sequential_carries_over_what_transfer_names(
    tiny_models, data, tmp_path, monkeypatch, transfer
):
    calls = _record_phases(monkeypatch)
    report = run_prune(tiny_models["bert"], data, tmp_path / "out", "--aux", "mlm",
                       "--coupling", "sequential", "--transfer", transfer,
                       "--aux-steps", "4")  # fmt: skip
    first, target = calls
    assert report["transfer"]["aux_losses_computed"]["first_stage"] == 4
    assert report["transfer"]["aux_losses_computed"]["prune"] == 0
    encoder = [k for k in first["weights"] if "encoder" in k and k.endswith("weight")]
    changed = any(not torch.equal(first["weights"][k], first["final_weights"][k]) for k in encoder)
    assert changed  # the auxiliary stage trained the encoder
    kept_stage_weights = all(
        torch.equal(target["weights"][k], first["final_weights"][k]) for k in encoder
    )
    restored = all(torch.equal(target["weights"][k], first["weights"][k]) for k in encoder)
    assert kept_stage_weights == (transfer in ("weights", "both"))
    assert restored == (transfer == "masks")
    if transfer == "weights":
        assert target["initial_log_alpha"] is None  # fresh gates
    else:
        for key, value in first["final_log_alpha"].items():
            assert torch.equal(target["initial_log_alpha"][key], value)


def test_tied_gates_differ_but_move_together_as_the_penalty_grows(tiny_models, data):
    """Same data and seed, growing tie strength: the gap between the target's and the
    auxiliary task's keep probabilities shrinks, and without a tie they clearly differ."""
    from spruce.data import TaskDataConfig, load_task
    from spruce.pipelines.common import build_loaders
    from spruce.train import classification_loss, seed_everything
    from spruce.transfer.objective import build_objective

    task = load_task(TaskDataConfig(train=str(data["train"]), max_train_samples=48))
    gaps = []
    for strength in (0.0, 0.01, 0.1, 1000.0):
        seed_everything(0)
        model, tokenizer, source = load_classifier(str(tiny_models["bert"]), task.label_names)
        train = TrainConfig(learning_rate=5e-3, batch_size=16, epochs=1)
        loaders = build_loaders(task, tokenizer, train, 32)
        config = TransferConfig(aux=(parse_aux("mlm"),), coupling="tied", tie_strength=strength)
        objective = build_objective(config.validate(), task, model, tokenizer, source, 16, 32, 0)
        prune = PruneConfig(target_sparsity=0.5, prune_epochs=8, lr_gates=0.3).validate()
        inputs = PhaseInputs(
            model,
            loaders["train"],
            train,
            classification_loss,
            torch.device("cpu"),
            False,
            objective.optimizers(5e-3),
        )
        result = LearnedMasks(prune, PhaseExtras(
            aux_loss=objective.loss, other_gate_sets=objective.separate_gate_sets,
            coupling_penalty=objective.tie_penalty,
        )).run(inputs)  # fmt: skip
        (aux_gates,) = result.other_gates.values()
        target_probs, aux_probs = result.gates.probs(), aux_gates.probs()
        gap = sum(
            float((target_probs[u] - aux_probs[u]).abs().mean().detach()) for u in target_probs
        )
        gaps.append(gap)
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert gaps[0] > 0.02 and gaps[3] < gaps[0] / 4


def test_objective_ratio_draws_batches_on_average():
    class Counting(Stream):
        def __init__(self):
            self.drawn, self.epochs = 0, 0

        def __next__(self):
            self.drawn += 1
            return {"input_ids": torch.ones(1, 3, dtype=torch.long), "labels": torch.tensor([0])}

    class FixedHead(ClassifierHead):
        def loss(self, hidden, batch):
            return hidden.sum() * 0 + 1.0

    class Base(torch.nn.Module):
        def forward(self, input_ids=None):
            return (torch.zeros(1, 3, 4, requires_grad=True),)

    class Encoderless(torch.nn.Module):
        base_model = Base()

    stream = Counting()
    config = TransferConfig(aux=(parse_aux("mlm"),), coupling="joint", aux_ratio=0.5)
    objective = AuxiliaryObjective(
        config.validate(), [AuxRuntime(parse_aux("mlm"), FixedHead(4, 2, 0, 0.1), stream)]
    )
    results = [objective.loss(Encoderless())[0] for _ in range(10)]
    assert stream.drawn == 5 and sum(r is not None for r in results) == 5
