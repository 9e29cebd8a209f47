"""TaskBank and `spruce bank fuse`: many pruned tasks on one frozen tiny base."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import spruce
from spruce.adapters import AdapterConfig, find_adapters
from spruce.cli.main import main
from spruce.compact import apply_masks, compact_model
from spruce.errors import SpruceError
from spruce.masks.units import UnitMasks
from spruce.models import TASK_METADATA_KEY, load_classifier
from spruce.spa import (
    BaseReference,
    TaskBank,
    inject_transformer_adapters,
    load_task,
    merged_plain_copy,
    save_task,
    set_unit_masks,
)
from tiny_models import SIZES, write_sentiment_files

CONFIG = AdapterConfig(kind="splora", rank=3)
TEXTS = ["good movie", "the plot was dull and boring", "a very lovely film", "awful"]
# name -> (labels, seed); "three" has another number of labels: its head is rebuilt.
TASKS = {"one": (["neg", "pos"], 1), "two": (["no", "yes"], 2), "three": (["a", "b", "c"], 3)}


def random_masks(seed: int) -> UnitMasks:
    """Gate-like values (not all 1) with removed heads, neurons and one removed FFN block."""
    g = torch.Generator().manual_seed(seed)
    layers, heads, ffn = SIZES["layers"], SIZES["heads"], SIZES["ffn"]

    def values(*shape: int, keep: float) -> torch.Tensor:
        kept = torch.rand(*shape, generator=g) < keep
        return (0.5 + 0.5 * torch.rand(*shape, generator=g)) * kept

    head = values(layers, heads, keep=0.6)
    head[:, 0] = 1.0  # every layer keeps a head
    return UnitMasks(
        head=head,
        mha_layer=torch.ones(layers),
        ffn_neuron=values(layers, ffn, keep=0.5),
        ffn_layer=torch.tensor([1.0, 0.0] if seed % 2 else [0.8, 1.0]),
    )


def make_task(base: Path, directory: Path, labels: list[str], seed: int):
    """A task as spruce adapt would leave it, with random adapters, biases, head and masks;
    returns its masked model's and its own fused model's logits on TEXTS."""
    torch.manual_seed(seed)
    model, tokenizer, resolved = load_classifier(str(base), labels)
    inject_transformer_adapters(model, CONFIG)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.2 * torch.randn_like(parameter))
    masks = random_masks(seed)
    set_unit_masks(model, masks)
    setattr(model.config, TASK_METADATA_KEY, {"task": directory.name, "max_length": 32})
    save_task(directory, model, masks, BaseReference.of(model, str(base), resolved), CONFIG)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad(), apply_masks(model, masks):
        masked = model(**batch).logits
    with torch.no_grad():
        fused = compact_model(merged_plain_copy(model), masks)(**batch).logits
    return masked, fused


@pytest.fixture(scope="module")
def tasks(tiny_models, tmp_path_factory) -> dict[str, tuple[Path, torch.Tensor, torch.Tensor]]:
    root = tmp_path_factory.mktemp("tasks")
    made = {}
    for name, (labels, seed) in TASKS.items():
        masked, fused = make_task(tiny_models["bert"], root / name, labels, seed)
        made[name] = (root / name, masked, fused)
    return made


@pytest.fixture(scope="module")
def bank(tasks) -> TaskBank:
    bank = TaskBank()  # base and adapter settings come from the first task
    for name, (directory, _, _) in tasks.items():
        bank.add(name, directory)
    return bank


def batch_for(bank: TaskBank) -> dict[str, torch.Tensor]:
    return dict(bank.tokenizer(TEXTS, padding=True, return_tensors="pt"))


def test_task_file_round_trips_masks_and_labels(tasks):
    record = load_task(tasks["three"][0])
    expected = random_masks(TASKS["three"][1])
    for unit, value in expected.items():
        assert torch.equal(getattr(record.masks, unit), value), unit
    assert record.label_names == ["a", "b", "c"] and record.adapter == CONFIG
    assert record.task == {"task": "three", "max_length": 32}


def test_each_task_through_the_bank_equals_its_own_fused_model(bank, tasks):
    assert bank.tasks == list(TASKS)
    batch = batch_for(bank)
    for name, (_, masked, fused) in tasks.items():
        logits = bank.run(name, batch)
        assert logits.shape == (len(TEXTS), len(TASKS[name][0]))
        assert (logits - masked).abs().max() <= 1e-5
        assert (logits - fused).abs().max() <= 1e-4
        compact, _ = bank.fuse(name)
        with torch.no_grad():
            assert (compact(**batch).logits - fused).abs().max() <= 1e-5
    assert bank.predict("three", TEXTS) == [
        ["a", "b", "c"][i] for i in tasks["three"][1].argmax(-1).tolist()
    ]


def test_switching_is_fast_repeatable_and_never_touches_the_base(bank):
    batch = batch_for(bank)
    frozen = {n: p for n, p in bank.model.named_parameters() if not p.requires_grad}
    copies = {n: p.detach().clone() for n, p in frozen.items()}
    first = {name: bank.run(name, batch) for name in TASKS}
    order = ["one", "three", "two", "one", "two", "three", "one", "three"]
    timings = []
    for name in order:
        start = time.perf_counter()
        bank.activate(name)
        timings.append(time.perf_counter() - start)
        assert torch.equal(bank.run(name, batch), first[name]), name
    assert sum(timings) / len(timings) < 0.1, timings
    after = {n: p for n, p in bank.model.named_parameters() if not p.requires_grad}
    assert after.keys() == frozen.keys()
    for name, parameter in after.items():
        assert parameter is frozen[name], name  # the same tensors, not reloaded copies
        assert torch.equal(parameter, copies[name]), name
    assert len(find_adapters(bank.model)) == 6 * SIZES["layers"]


def test_tasks_that_do_not_fit_the_bank_are_refused(bank, tasks, tiny_models, tmp_path):
    make_task(tiny_models["roberta"], tmp_path / "roberta", ["x", "y"], 5)
    with pytest.raises(SpruceError, match="differ from the bank's base"):
        bank.add("roberta", tmp_path / "roberta")
    other = TaskBank(base=str(tiny_models["bert"]), adapter=AdapterConfig(kind="splora", rank=4))
    with pytest.raises(SpruceError, match="adapter"):
        other.add("one", tasks["one"][0])
    with pytest.raises(SpruceError, match="no task file"):
        bank.add("nothing", tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "task.safetensors").write_bytes((tasks["one"][0] / "task.safetensors").read_bytes())
    meta = json.loads((tasks["one"][0] / "task.json").read_text())
    del meta["units"]
    (broken / "task.json").write_text(json.dumps(meta))
    with pytest.raises(SpruceError, match="malformed"):
        bank.add("broken", broken)
    assert bank.tasks == list(TASKS)


def test_bank_fuse_cli_writes_the_model_task_bank_fuse_builds(bank, tasks, tiny_models, tmp_path):
    out = tmp_path / "fused"
    argv = ["bank", "fuse", "--base", str(tiny_models["bert"]), "--task", str(tasks["two"][0]),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert (out / "model.onnx").exists()
    model, tokenizer = spruce.load_pruned(out)
    expected, _ = bank.fuse("two")
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, expected(**batch).logits, atol=1e-6)
    assert model.config.id2label == {0: "no", 1: "yes"}
    # Without --base the task's recorded base is used.
    assert main(["bank", "fuse", "--task", str(tasks["one"][0]), "--out", str(tmp_path / "b"),
                 "--no-onnx"]) == 0  # fmt: skip
    assert not (tmp_path / "b" / "model.onnx").exists()


def test_bank_fuse_cli_refuses_a_task_from_another_base(tasks, tiny_models, tmp_path, capsys):
    out = tmp_path / "fused"
    argv = ["bank", "fuse", "--base", str(tiny_models["distilbert"]), "--task",
            str(tasks["one"][0]), "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "base" in err and "Traceback" not in err
    assert not out.exists()


def test_a_trained_adapt_run_is_a_bank_task(tiny_models, tmp_path):
    data = write_sentiment_files(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["adapt", "--model", str(tiny_models["roberta"]), "--train", str(data["train"]),
            "--test", str(data["test"]), "--rank", "3", "--learning-rate", "1e-2",
            "--batch-size", "16", "--prune-rounds", "1", "--epochs-per-round", "1",
            "--final-epochs", "1", "--no-onnx", "--no-latency", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    bank = TaskBank(base=str(tiny_models["roberta"]), adapter=AdapterConfig(rank=3))
    bank.add("sentiment", out)
    own, tokenizer = spruce.load_pruned(out)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        assert (bank.run("sentiment", batch) - own(**batch).logits).abs().max() <= 1e-4
    assert report["fused_max_abs_diff"] <= 1e-4
