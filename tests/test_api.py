"""The Python API: spruce.finetune / prune / adapt over the commands' settings."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

import spruce
from golden import digest
from spruce.api import make_run
from spruce.cli.main import main
from spruce.data import load_task
from spruce.errors import SpruceError
from spruce.pipelines.prune import PruneRun
from spruce.pruning.config import PruneConfig
from spruce.train import TrainConfig
from tiny_models import write_sentiment_files

# The same quick settings in Python and on the command line.
QUICK = {"learning_rate": 5e-3, "batch_size": 16, "threads": 1, "progress": False}
QUICK_ARGV = ["--learning-rate", "5e-3", "--batch-size", "16", "--threads", "1", "--quiet"]
PRUNE = {
    "recipe": "plain",
    "target_sparsity": 0.5,
    "prune_epochs": 1,
    "final_epochs": 1,
    "measure_latency": False,
    "export_onnx": False,
}
PRUNE_ARGV = ["--recipe", "plain", "--target-sparsity", "0.5", "--prune-epochs", "1",
              "--final-epochs", "1", "--no-latency", "--no-onnx"]  # fmt: skip
ADAPT = {
    "rank": 3,
    "target_sparsity": 0.5,
    "prune_rounds": 1,
    "epochs_per_round": 1,
    "final_epochs": 1,
    "measure_latency": False,
    "export_onnx": False,
}
ADAPT_ARGV = ["--rank", "3", "--target-sparsity", "0.5", "--prune-rounds", "1",
              "--epochs-per-round", "1", "--final-epochs", "1", "--no-latency",
              "--no-onnx"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_sentiment_files(tmp_path_factory.mktemp("api-data"), n_train=64)


def _rows(path: Path) -> list[dict[str, str]]:
    """A TSV file's rows as dicts, as a caller holding the data in memory has them."""
    header, *lines = path.read_text().splitlines()
    names = header.split("\t")
    return [dict(zip(names, line.split("\t"), strict=True)) for line in lines]


def _same_outputs(first: Path, second: Path, root: Path) -> None:
    """The two output folders hold the same weights, bit for bit, and the same reports
    (times and each folder's own name aside)."""

    def found(out: Path) -> dict:
        return json.loads(json.dumps(digest(out, root)).replace(str(out), "<out>"))

    assert found(second) == found(first)


def _same_weights(model: torch.nn.Module, saved: Path) -> None:
    """``model``'s parameters equal the tensors of the saved model.safetensors."""
    tensors = load_file(saved / "model" / "model.safetensors")
    state = model.state_dict()
    assert tensors
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor), name


def _argv(command: str, model: Path, data: dict[str, Path], out: Path, *extra: str) -> list:
    return [command, "--model", str(model), "--train", str(data["train"]), "--validation",
            str(data["validation"]), *QUICK_ARGV, *extra, "--out", str(out)]  # fmt: skip


# --- the API and the command line compute the same thing -----------------------------


def test_finetune_matches_the_command_line_bit_for_bit(tiny_models, data, tmp_path) -> None:
    cli, api = tmp_path / "cli", tmp_path / "api"
    assert main(_argv("finetune", tiny_models["bert"], data, cli, "--epochs", "1")) == 0
    result = spruce.finetune(
        model=tiny_models["bert"],
        train=data["train"],
        validation=str(data["validation"]),
        epochs=1,
        out=api,
        **QUICK,
    )
    _same_outputs(cli, api, tmp_path)
    _same_weights(result.model, api)
    assert isinstance(result, spruce.RunResult)
    assert not result.model.training
    assert {p.device.type for p in result.model.parameters()} == {"cpu"}
    assert json.loads(json.dumps(result.report)) == json.loads((api / "report.json").read_text())
    batch = result.tokenizer(["a good film"], return_tensors="pt")
    assert result.model(**batch).logits.shape == (1, 2)


def test_prune_matches_the_command_line_and_out_none_writes_nothing(
    tiny_models, data, tmp_path, monkeypatch
) -> None:
    cli = tmp_path / "cli"
    assert main(_argv("prune", tiny_models["bert"], data, cli, *PRUNE_ARGV)) == 0
    api = tmp_path / "api"
    spruce.prune(
        model=tiny_models["bert"],
        train=data["train"],
        validation=data["validation"],
        out=api,
        **PRUNE,
        **QUICK,
    )
    _same_outputs(cli, api, tmp_path)

    # Without out: the same model, and no file anywhere (the working directory, the
    # data's and the model's folders, the temporary directory).
    work, scratch = tmp_path / "work", tmp_path / "scratch"
    work.mkdir(), scratch.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    watched = [tmp_path, data["train"].parent, tiny_models["bert"]]
    before = [sorted(folder.rglob("*")) for folder in watched]
    result = spruce.prune(
        model=tiny_models["bert"],
        train=data["train"],
        validation=data["validation"],
        **PRUNE,
        **QUICK,
    )
    assert [sorted(folder.rglob("*")) for folder in watched] == before
    assert not any(work.iterdir()) and not any(scratch.iterdir())
    _same_weights(result.model, cli)
    assert type(result.model).__name__ == "CompactModelForSequenceClassification"
    assert result.report["sparsity"]["encoder"] > 0.3


def test_adapt_matches_the_command_line_bit_for_bit(tiny_models, data, tmp_path) -> None:
    cli, api = tmp_path / "cli", tmp_path / "api"
    argv = _argv("adapt", tiny_models["bert"], data, cli, *ADAPT_ARGV, "--learning-rate", "1e-2")
    assert main(argv) == 0
    result = spruce.adapt(
        model=tiny_models["bert"],
        train=data["train"],
        validation=data["validation"],
        out=api,
        **{**QUICK, "learning_rate": 1e-2},
        **ADAPT,
    )
    _same_outputs(cli, api, tmp_path)
    _same_weights(result.model, api)
    assert (api / "task.safetensors").exists()
    assert result.report["mode"] == "adapt"


# --- config objects, report files and overrides --------------------------------------


def test_a_run_object_with_overrides(tiny_models, data) -> None:
    run = make_run(
        "prune",
        model=tiny_models["bert"],
        train=data["train"],
        prune=PruneConfig(method="pdp", target_sparsity=0.7),
        training=TrainConfig(epochs=2, seed=3),
    )
    assert isinstance(run, PruneRun)
    assert (run.prune.method, run.train.epochs, run.data.seed) == ("pdp", 2, 3)
    # Keyword settings override the run: by leaf name, or a section as a dict, which
    # replaces only the settings it names.
    again = make_run("prune", run, target_sparsity=0.5, prune={"final_epochs": 1}, seed=4)
    assert again.prune.method == "pdp"
    assert (again.prune.target_sparsity, again.prune.final_epochs) == (0.5, 1)
    assert (again.train.seed, again.data.seed, again.train.epochs) == (4, 4, 2)
    assert run.prune.target_sparsity == 0.7  # the run given is left as it was
    # A section given as an object replaces the whole section.
    fresh = make_run("prune", run, prune=PruneConfig(target_sparsity=0.6))
    assert (fresh.prune.method, fresh.prune.target_sparsity) == ("l0", 0.6)
    assert make_run("prune", run) is run
    # transfer= is the section given a dict, the setting given a string.
    assert make_run("prune", run, transfer="masks").transfer.transfer == "masks"
    assert make_run("prune", run, transfer={"coupling": "joint"}).transfer.coupling == "joint"
    assert make_run("prune", run, text_columns="sentence").data.text_columns == ("sentence",)
    assert make_run("prune", run, aux="mlm").transfer.aux[0].kind == "mlm"


def test_a_run_object_runs_as_given(tiny_models, data) -> None:
    run = make_run("finetune", model=tiny_models["bert"], train=data["train"], max_steps=2)
    result = spruce.finetune(run, **QUICK)
    assert result.report["steps"] == 2
    assert result.report["config"]["train"]["max_steps"] == 2


def test_a_report_file_reruns_its_run(tiny_models, data, tmp_path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    spruce.prune(model=tiny_models["bert"], train=data["train"], out=first, **PRUNE, **QUICK)
    spruce.prune(first / "report.json", out=second, **QUICK)
    _same_outputs(first, second, tmp_path)
    report = json.loads((first / "report.json").read_text())
    assert make_run("prune", report).to_config() == report["config"]
    assert make_run("prune", report["config"]).to_config() == report["config"]
    with pytest.raises(SpruceError, match="report of a spruce prune run"):
        make_run("finetune", first / "report.json")
    with pytest.raises(SpruceError, match="report of a spruce prune run"):
        make_run("adapt", report)


# --- data in memory --------------------------------------------------------------------


def test_rows_in_memory_train_as_the_file_does(tiny_models, data, tmp_path) -> None:
    """The rows of the TSV files as dicts, columns, a Dataset (and a DataFrame) give the
    model the files give, bit for bit; the report names the data as in-memory."""
    train, validation = _rows(data["train"]), _rows(data["validation"])
    settings = {"model": tiny_models["bert"], "max_steps": 3, **QUICK}
    from_file = spruce.finetune(train=data["train"], validation=data["validation"], **settings)
    columns = {name: [row[name] for row in train] for name in train[0]}
    forms = [train, columns, datasets.Dataset.from_list(train)]
    try:
        import pandas

        forms.append(pandas.DataFrame(train))
    except ImportError:
        pass
    for form in forms:
        result = spruce.finetune(train=form, validation=validation, **settings)
        for name, tensor in from_file.model.state_dict().items():
            assert torch.equal(result.model.state_dict()[name], tensor), (type(form), name)
        assert result.report["task"] == "in-memory"
        assert result.report["train_examples"] == len(train)
        assert result.report["validation_metrics"] == from_file.report["validation_metrics"]
        marker = result.report["config"]["data"]["train"]
        assert marker.startswith("<in-memory: 64 rows, sha256 "), marker


def test_a_pandas_data_frame(tiny_models, data) -> None:
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(_rows(data["train"]))
    run = make_run("prune", train=frame, validation=frame.head(8), name="frame")
    task = load_task(run.data)
    assert (task.name, len(task.train), len(task.validation)) == ("frame", 64, 8)


def test_unlabelled_text_in_memory(data) -> None:
    texts = ["a good film", "the plot was dull", "  "]
    run = make_run("prune", train=data["train"], max_train_samples=16, unlabelled=texts)
    task = load_task(run.data)
    assert task.extra == {"unlabelled_from_train": 48, "unlabelled_from_file": 2}
    assert task.unlabelled["text_a"][-2:] == ["a good film", "the plot was dull"]
    rows = [{"sentence": "a good film", "label": "1"}]
    run = make_run("prune", train=data["train"], unlabelled=rows)
    assert load_task(run.data).unlabelled["text_a"] == ["a good film"]


def test_a_rerun_of_in_memory_data_asks_for_it(tiny_models, data, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    spruce.finetune(
        model=tiny_models["bert"], train=_rows(data["train"]), max_steps=1, out=out, **QUICK
    )
    with pytest.raises(SpruceError, match="given in memory to a Python call") as error:
        spruce.finetune(out / "report.json", **QUICK)
    assert "give the train data again" in str(error.value)
    argv = ["finetune", "--config", str(out / "report.json"), "--out", str(tmp_path / "again")]
    assert main(argv) == 2
    assert "given in memory to a Python call" in capsys.readouterr().err
    # Given again, the data replaces the marker.
    again = make_run("finetune", out / "report.json", train=data["train"])
    assert again.data.train == str(data["train"]) and not again.data.tables


def test_the_same_table_gives_the_same_marker(data) -> None:
    rows = _rows(data["train"])
    first = make_run("finetune", train=rows).data.train
    assert make_run("finetune", train=list(rows)).data.train == first
    changed = [dict(rows[0], sentence="another text"), *rows[1:]]
    assert make_run("finetune", train=changed).data.train != first


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "train= holds no rows"),
        (["a good film"], "train= is a list of str, not of rows"),
        ({"sentence": "a film", "label": 1}, "not all column lists"),
        (42, "train= cannot be data of type int"),
        ([{"sentence": "a", "label": 1}, {"sentence": "b", "label": "x"}], "cannot be read"),
    ],
)
def test_data_that_is_not_a_table(value, message) -> None:
    with pytest.raises(SpruceError, match=message):
        make_run("finetune", train=value)


def test_a_dataset_dict_names_its_splits() -> None:
    table = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 1]})
    splits = datasets.DatasetDict({"train": table, "test": table})
    with pytest.raises(SpruceError, match="DatasetDict of splits train, test"):
        make_run("finetune", train=splits)


# --- names and values the settings do not have ---------------------------------------


@pytest.mark.parametrize(
    ("command", "settings", "message"),
    [
        ("prune", {"target_sparsty": 0.5}, "did you mean 'target_sparsity'"),
        ("prune", {"learn_rate": 1e-3}, "did you mean 'learning_rate'"),
        ("finetune", {"target_sparsity": 0.5}, "it is a setting of spruce.prune and spruce.adapt"),
        ("finetune", {"quiet": True}, "--quiet on the command line is progress= here"),
        ("finetune", {"unlabelled": ["text"]}, "spruce.finetune reads no unlabelled data"),
        ("prune", {"prune": {"methd": "pdp"}}, "setting 'methd'; did you mean 'method'"),
        ("prune", {"train": TrainConfig()}, "training=TrainConfig"),
        ("prune", {"prune": TrainConfig()}, "prune= takes a PruneConfig or a dict"),
        ("prune", {"target_sparsity": 1.5}, "--target-sparsity must be in \\(0, 1\\)"),
        ("prune", {"epochs": "2"}, "'epochs' must be a finite number"),
        ("prune", {"method": "random"}, "--method random is not known"),
        ("finetune", {"out": 3}, "out= takes a folder path"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line_errors(data, command, settings, message) -> None:
    with pytest.raises(SpruceError, match=message):
        make_run(command, {"data": {"train": str(data["train"])}}, **settings)


def test_without_training_data() -> None:
    with pytest.raises(SpruceError, match=r"spruce\.prune needs training data; give train="):
        spruce.prune(target_sparsity=0.5)
    with pytest.raises(SpruceError, match="config cannot be a int"):
        spruce.finetune(3)
    with pytest.raises(SpruceError, match="takes a FinetuneRun or a dict"):
        make_run("finetune", make_run("prune", train="x.csv"))


def test_adapt_runs_image_tasks_too(tmp_path) -> None:
    from golden import make_inputs

    make_inputs(tmp_path)
    images = tmp_path / "images"
    settings = dict(
        train=str(images / "train.npz"), test=str(images / "test.npz"), criterion="weight",
        target_sparsity=0.3, prune_rounds=1, max_steps=1, batch_size=8,
        measure_latency=False, threads=1, progress=False,
    )  # fmt: skip
    with pytest.raises(SpruceError, match="an image task writes its outputs"):
        spruce.adapt(**settings)
    result = spruce.adapt(**settings, out=tmp_path / "out")
    assert result.tokenizer is None and result.report["mode"] == "adapt"
    assert json.loads((tmp_path / "out" / "report.json").read_text())["metrics"]
    with torch.no_grad():
        assert result.model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_import_spruce_stays_light() -> None:
    code = "import sys, spruce, spruce.api; spruce.prune; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
