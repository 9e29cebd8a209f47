"""The default `spruce prune`: its recipe, `--unlabelled`, the pruning trajectory and its
plot, sparsity that tracks its schedule, and PDP, on tiny random encoders."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from test_cli_errors import assert_nothing_written, assert_user_error, run_cli

from spruce.cli.main import main
from spruce.data.augment import augment_texts, select_texts
from tiny_models import write_sentiment_files

FAST = [
    "--learning-rate", "5e-3", "--batch-size", "16", "--epochs", "1",
    "--final-max-steps", "2", "--no-onnx", "--no-latency", "--quiet",
]  # fmt: skip


def prune(model: Path, data: dict[str, Path], out: Path, *extra: str) -> dict:
    argv = [
        "prune", "--model", str(model), "--train", str(data["train"]),
        "--validation", str(data["validation"]), "--out", str(out), *FAST, *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_sentiment_files(tmp_path_factory.mktemp("recipe-data"), n_train=96)


def worst_tracking_error(trajectory: dict[str, list[float]], ramp_steps: int) -> float:
    """Largest |expected - target| from 20% of the ramp on."""
    return max(
        abs(s - t)
        for step, s, t in zip(
            trajectory["step"], trajectory["sparsity"], trajectory["target"], strict=True
        )
        if step >= 0.2 * ramp_steps
    )


@pytest.mark.parametrize("control", ["exact", "lagrangian"])
def test_expected_sparsity_tracks_the_ramp_in_a_short_run(tiny_models, data, tmp_path, control):
    # 24 pruning steps, the target ramped to 0.8 over 12: the demo's schedule, shrunk.
    out = tmp_path / "out"
    report = prune(
        tiny_models["bert"], data, out, "--recipe", "plain", "--target-sparsity", "0.8",
        "--prune-max-steps", "24", "--sparsity-control", control,
    )  # fmt: skip
    trajectory = report["phases"]["prune_trajectory"]
    assert trajectory["step"] == list(range(1, 25))
    assert {"sparsity", "target", "task_loss", "loss"} <= set(trajectory)
    assert (out / "prune_phase.png").stat().st_size > 0
    error = worst_tracking_error(trajectory, ramp_steps=12)
    if control == "exact":
        assert error <= 0.02
        assert trajectory["sparsity"][-1] == pytest.approx(0.8, abs=1e-4)
        assert "shift" in trajectory
    else:
        # CoFi's multipliers cannot follow this ramp: the gates move about lr_gates a step.
        assert error > 0.02
        assert {"lambda1", "lambda2"} <= set(trajectory)
    assert abs(report["sparsity"]["encoder"] - 0.8) <= 0.02


def test_pdp_masks_meet_the_target(tiny_models, data, tmp_path):
    report = prune(
        tiny_models["bert"], data, tmp_path / "out", "--recipe", "plain", "--method", "pdp",
        "--target-sparsity", "0.5", "--prune-max-steps", "16",
    )  # fmt: skip
    assert report["method"] == "pdp"
    trajectory = report["phases"]["prune_trajectory"]
    # The units above the threshold follow the ramp (within one head of the tiny encoder).
    assert worst_tracking_error(trajectory, ramp_steps=8) <= 1024 / 16384
    assert abs(report["sparsity"]["encoder"] - 0.5) <= 512 / 16384
    assert report["structure"]["hidden"] == 32  # PDP prunes heads and neurons only


def test_default_recipe_fine_tunes_a_teacher_and_distils_on_the_unlabelled_rest(
    tiny_models, data, tmp_path
):
    report = prune(
        tiny_models["bert"], data, tmp_path / "out", "--target-sparsity", "0.5",
        "--max-train-samples", "48", "--prune-max-steps", "8",
    )  # fmt: skip
    recipe = report["recipe"]
    assert recipe["name"] == "distill" and recipe["teacher"] == "fine-tuned"
    assert recipe["unlabelled"] == {"from_train": 48, "from_file": 0}
    assert recipe["auxiliary"] == "distill on the unlabelled text"
    assert "teacher" in report["phases"]
    assert [task["kind"] for task in report["transfer"]["aux"]] == ["distill"]
    assert report["transfer"]["coupling"] == "joint"
    assert report["transfer"]["schedule"] == "constant"  # the final fine-tune distils too
    assert report["transfer"]["select"] == "longest"  # the longest texts it can read
    assert report["transfer"]["augment"] == "none"
    assert report["transfer"]["aux_losses_computed"]["final"] == 2
    assert {"aux", "kd_pred"} <= set(report["phases"]["prune_trajectory"])  # losses per step
    assert report["config"]["prune"]["recipe"] == "distill"
    assert report["config"]["prune"]["prune_epochs"] == 5.0
    # The final fine-tune distils for 5 epochs without early stopping (best step kept).
    assert report["config"]["prune"]["final_epochs"] == 5.0
    assert report["config"]["prune"]["final_patience"] == 0
    assert report["config"]["prune"]["group_by_length"] is True


def test_default_recipe_uses_a_fine_tuned_model_as_its_own_teacher(
    tiny_models, data, tmp_path, capsys
):
    teacher = tmp_path / "teacher"
    argv = ["finetune", "--model", str(tiny_models["bert"]), "--train", str(data["train"]),
            "--out", str(teacher), "--epochs", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    extra = tmp_path / "more.txt"
    extra.write_text("alpha beta gamma\n\n  \ndelta epsilon\n")
    report = prune(
        teacher, data, tmp_path / "out", "--target-sparsity", "0.5",
        "--prune-max-steps", "8", "--unlabelled", str(extra),
    )  # fmt: skip
    recipe = report["recipe"]
    assert recipe["teacher"] == "model"
    assert "teacher" not in report["phases"]  # no second fine-tune
    assert recipe["unlabelled"] == {"from_train": 0, "from_file": 2}  # blank lines dropped
    assert report["unlabelled_examples"] == 2
    # --distill asks for a fresh teacher even when --model could teach (--model may be
    # a run's --out: its model/ folder is read).
    again = prune(teacher, data, tmp_path / "again", "--distill", "--target-sparsity", "0.5",
                  "--prune-max-steps", "4")  # fmt: skip
    assert again["recipe"]["teacher"] == "fine-tuned" and "teacher" in again["phases"]


def test_no_unlabelled_text_falls_back_to_the_labelled_text_and_says_so(
    tiny_models, data, tmp_path, capsys
):
    report = prune(
        tiny_models["bert"], data, tmp_path / "out", "--target-sparsity", "0.5",
        "--prune-max-steps", "8",
    )  # fmt: skip
    assert report["recipe"]["auxiliary"] == "none"
    assert "no unlabelled text" in report["recipe"]["note"]
    assert "no unlabelled text" in capsys.readouterr().err
    assert report["transfer"]["coupling"] == "none"


def test_plain_recipe_prunes_on_the_labelled_data_alone(tiny_models, data, tmp_path):
    report = prune(
        tiny_models["bert"], data, tmp_path / "out", "--recipe", "plain",
        "--target-sparsity", "0.5", "--max-train-samples", "48", "--prune-max-steps", "8",
    )  # fmt: skip
    assert report["recipe"] == {"name": "plain", "unlabelled": {"from_train": 48, "from_file": 0}}
    assert report["config"]["prune"]["prune_epochs"] == 10.0
    assert report["config"]["prune"]["final_epochs"] == 5.0
    assert report["config"]["prune"]["final_patience"] is None  # --patience decides
    assert report["config"]["prune"]["group_by_length"] is False
    assert "teacher" not in report["phases"] and report["dense_metrics"] is None
    assert report["transfer"]["coupling"] == "none"


def test_unlabelled_pairs_file_reads_the_tasks_columns(tiny_models, tmp_path):
    pairs = write_sentiment_files(tmp_path / "pairs", n_train=48, pair=True)
    extra = tmp_path / "more.tsv"
    extra.write_text("sentence1\tsentence2\nalpha beta\tgamma\ndelta\tepsilon\n")
    report = prune(
        tiny_models["bert"], pairs, tmp_path / "out", "--recipe", "plain",
        "--target-sparsity", "0.5", "--prune-max-steps", "4", "--unlabelled", str(extra),
    )  # fmt: skip
    assert report["recipe"]["unlabelled"]["from_file"] == 2


@pytest.mark.parametrize(
    ("content", "suffix", "pair", "fragments"),
    [
        (None, ".txt", False, ["--unlabelled", "missing"]),
        ("\n  \n", ".txt", False, ["--unlabelled", "no text"]),
        ("", ".csv", False, ["empty"]),
        ("id,score\n1,2\n", ".csv", False, ["--unlabelled", "text"]),
        ("one text a line\n", ".txt", True, ["--unlabelled", "sentence pairs"]),
        ("sentence1\n only one side\n", ".tsv", True, ["--unlabelled", "sentence2"]),
    ],
    ids=["missing", "blank", "empty-csv", "wrong-columns", "lines-for-pairs", "half-pair"],
)
def test_bad_unlabelled_files_exit_2_with_one_line_and_write_nothing(
    tiny_models, tmp_path, capsys, content, suffix, pair, fragments
):
    files = write_sentiment_files(tmp_path / "data", n_train=16, pair=pair)
    path = tmp_path / f"missing{suffix}" if content is None else tmp_path / f"extra{suffix}"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys,
        ["prune", "--model", tiny_models["bert"], "--train", files["train"],
         "--unlabelled", path, "--out", out, "--quiet"],
    )  # fmt: skip
    assert_user_error(code, stdout, err, *fragments)
    assert_nothing_written(out)


def test_concat_augmentation_joins_every_text_with_another_once():
    texts = datasets.Dataset.from_dict({"text_a": [f"t{i}" for i in range(7)]})
    joined = augment_texts(texts, "concat", seed=3)["text_a"]
    firsts, seconds = zip(*(row.split(" ") for row in joined), strict=True)
    assert list(firsts) == texts["text_a"]  # row i starts with text i
    assert sorted(seconds) == sorted(texts["text_a"])  # every text is a partner once
    assert all(a != b for a, b in zip(firsts, seconds, strict=True))
    assert augment_texts(texts, "none", seed=3) is texts


def test_longest_selection_keeps_the_longest_texts_in_file_order():
    texts = datasets.Dataset.from_dict({"text_a": ["a b", "a b c d", "a", "a b c", "x y z"]})
    assert select_texts(texts, "longest", 3)["text_a"] == ["a b c d", "a b c", "x y z"]
    assert select_texts(texts, "longest", 5) is texts  # as many rows as it has
    assert select_texts(texts, "longest", None) is texts
    assert select_texts(texts, "all", 1) is texts
    pairs = datasets.Dataset.from_dict(
        {"text_a": ["a", "a b c", "a b"], "text_b": ["a b c", "a", "a"]}
    )
    assert select_texts(pairs, "longest", 2)["text_a"] == ["a", "a b c"]  # both texts count


def test_default_recipe_reads_only_the_longest_unlabelled_texts_it_has_steps_for(
    tiny_models, data, tmp_path
):
    # 2 + 2 target steps of 4 auxiliary rows: 16 of the 48 unlabelled rows, the longest.
    report = prune(
        tiny_models["bert"], data, tmp_path / "out", "--target-sparsity", "0.5",
        "--max-train-samples", "48", "--prune-max-steps", "2", "--final-max-steps", "2",
        "--aux-batch-size", "4",
    )  # fmt: skip
    assert report["recipe"]["unlabelled"]["from_train"] == 48
    assert report["transfer"]["tasks"][0]["examples"] == 16
    everything = prune(
        tiny_models["bert"], data, tmp_path / "all", "--target-sparsity", "0.5",
        "--max-train-samples", "48", "--prune-max-steps", "2", "--final-max-steps", "2",
        "--aux-batch-size", "4", "--aux-select", "all",
    )  # fmt: skip
    assert everything["transfer"]["tasks"][0]["examples"] == 48


def test_default_recipe_distils_on_joined_unlabelled_texts(tiny_models, data, tmp_path):
    report = prune(
        tiny_models["bert"], data, tmp_path / "out", "--target-sparsity", "0.5",
        "--max-train-samples", "48", "--prune-max-steps", "4", "--aux-augment", "concat",
    )  # fmt: skip
    assert report["config"]["transfer"]["augment"] == "concat"
    assert report["transfer"]["augment"] == "concat"
    assert report["transfer"]["aux"][0]["kind"] == "distill"


def test_concat_augmentation_of_sentence_pairs_exits_2_before_training(
    tiny_models, tmp_path, capsys
):
    pairs = write_sentiment_files(tmp_path / "pairs", n_train=48, pair=True)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys,
        ["prune", "--model", tiny_models["bert"], "--train", pairs["train"],
         "--max-train-samples", "16", "--aux-augment", "concat", "--out", out, "--quiet"],
    )  # fmt: skip
    assert_user_error(code, stdout, err, "--aux-augment", "sentence pairs")
    assert "teacher" not in stdout + err
    assert_nothing_written(out)


def test_layer_distillation_on_the_unlabelled_text_survives_compaction(tiny_models, data, tmp_path):
    # --aux-schedule constant: the head (its projection sliced to the kept hidden
    # dimensions) keeps training in the final fine-tune of the compact model.
    report = prune(
        tiny_models["bert"], data, tmp_path / "out", "--target-sparsity", "0.5",
        "--max-train-samples", "48", "--prune-max-steps", "4", "--aux-distill-layers",
        "--aux", "distill", "--aux-schedule", "constant", "--units", "hidden,head",
    )  # fmt: skip
    assert report["config"]["transfer"]["distill_layers"] is True
    assert report["structure"]["hidden"] < 32  # hidden dimensions were removed
    assert report["transfer"]["aux_losses_computed"]["final"] == 2


def test_default_recipe_does_not_join_sentence_pairs(tiny_models, tmp_path):
    pairs = write_sentiment_files(tmp_path / "pairs", n_train=48, pair=True)
    report = prune(
        tiny_models["bert"], pairs, tmp_path / "out", "--target-sparsity", "0.5",
        "--max-train-samples", "24", "--prune-max-steps", "2",
    )  # fmt: skip
    assert report["recipe"]["auxiliary"] == "distill on the unlabelled text"
    assert report["transfer"]["augment"] == "none"


def test_student_phases_draw_labelled_batches_by_length_and_the_teacher_does_not(
    tiny_models, monkeypatch
):
    from types import SimpleNamespace

    from spruce.models import load_classifier
    from spruce.pipelines import common
    from spruce.train import TrainConfig

    _, tokenizer, _ = load_classifier(str(tiny_models["bert"]), ["neg", "pos"])
    words = ["good", "bad", "film", "plot", "dull", "fine"]
    texts = [" ".join(words[(i + j) % 6] for j in range(1 + i % 13)) for i in range(256)]
    labels = [i % 2 for i in range(256)]
    task = SimpleNamespace(
        train=datasets.Dataset.from_dict({"text_a": texts, "label": labels}),
        validation=None,
        test=None,
    )
    train = TrainConfig(batch_size=8, seed=0)

    def padded_and_real(grouped: bool) -> tuple[int, int]:
        batches = list(common.train_loader(task, tokenizer, train, 32, group_by_length=grouped))
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        return sum(b["input_ids"].numel() for b in batches), real

    grouped, real = padded_and_real(True)
    shuffled, same_real = padded_and_real(False)
    assert real == same_real  # every row once either way
    assert grouped < 1.2 * real < shuffled  # random batches of these lengths pad ~1.6x
    # build_loaders (the teacher's fine-tune, spruce finetune) keeps the random order.
    teacher_batches = list(common.build_loaders(task, tokenizer, train, 32)["train"])
    assert sum(b["input_ids"].numel() for b in teacher_batches) == shuffled
