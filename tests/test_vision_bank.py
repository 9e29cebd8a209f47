"""CNNTaskBank and `spruce bank fuse` on image tasks: many pruned tasks on one frozen CNN."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_vision_adapt import BUILDERS, TOLERANCE, _perturb, _prune, _write_npz
from torch import nn

from spruce.adapters import AdapterConfig, find_adapters
from spruce.cli.main import main
from spruce.errors import SpruceError
from spruce.pipelines.adapt_image import CNNAdaptConfig, run_cnn_adapt
from spruce.spa.cnn_bank import CNNTaskBank
from spruce.spa.cnn_model import adapt_cnn, classifier_name
from spruce.spa.cnn_task import batchnorm_layers, load_compact, save_task

# name -> (classes, seed, criteria, targets): each task has its own adapters, plan and
# BatchNorm statistics; "c" has another number of classes, so its classifier is rebuilt.
TASKS = {
    "a": (3, 2, ("weight",), (0.5,)),
    "b": (3, 3, ("lrp", "taylor"), (0.2, 0.4)),
    "c": (5, 4, ("weight",), (0.3,)),
}
_generator = torch.Generator().manual_seed(1)
IMAGES = torch.randn(8, 3, 16, 16, generator=_generator)
DATA = [(IMAGES[:4], torch.tensor([0, 1, 2, 0])), (IMAGES[4:], torch.tensor([1, 2, 0, 1]))]


def build(name: str, num_classes: int) -> nn.Module:
    """A toy base as ``load_cnn`` would give it: the same weights whatever the number of
    classes, and a fresh classifier of that many outputs."""
    model = BUILDERS[name]()
    head = classifier_name(model)
    old = model.get_submodule(head)
    if old.out_features != num_classes:
        setattr(model, head, nn.Linear(old.in_features, num_classes))
    return model.eval()


def make_task(
    directory: Path, builder: str, classes: int, seed: int, criteria, targets, rank: int = 2
) -> torch.Tensor:
    """A task as spruce adapt leaves it (stand-in training by ``_perturb``); returns its
    logits on IMAGES before saving."""
    model = build(builder, classes)
    head = classifier_name(model)
    config = AdapterConfig(kind="splora", rank=rank)
    adapt_cnn(model, config, head)
    _perturb(model, seed)
    _prune(model, DATA, criteria, targets)
    with torch.no_grad():
        expected = model.eval()(IMAGES)
    meta = {
        "model": builder, "num_classes": classes,
        "class_names": [f"{directory.name}{i}" for i in range(classes)], "image_size": 16,
        "mean": [0.5] * 3, "std": [0.5] * 3, "classifier": head, "adapter": config.to_dict(),
    }  # fmt: skip
    save_task(model, directory, meta)
    return expected


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, tuple[Path, torch.Tensor]]:
    root = tmp_path_factory.mktemp("cnn-tasks")
    return {
        name: (root / name, make_task(root / name, "toy-lite", classes, seed, criteria, targets))
        for name, (classes, seed, criteria, targets) in TASKS.items()
    }


@pytest.fixture(scope="module")
def bank(tasks) -> CNNTaskBank:
    bank = CNNTaskBank(loader=build)  # base and adapter settings come from the first task
    for name, (directory, _) in tasks.items():
        bank.add(name, directory)
    return bank


def test_each_task_through_the_bank_equals_its_model_before_saving(bank, tasks):
    assert bank.tasks == list(TASKS)
    assert (tasks["a"][1] - tasks["b"][1]).abs().max() > 1e-2  # the tasks do differ
    for name in ["a", "b", "c", "a", "c", "b", "a"]:
        logits = bank.run(name, IMAGES)
        assert bank.active == name and logits.shape == (len(IMAGES), TASKS[name][0])
        assert (logits - tasks[name][1]).abs().max() <= TOLERANCE, name
    expected = [f"c{i}" for i in tasks["c"][1].argmax(-1).tolist()]
    assert bank.predict("c", IMAGES) == expected


def _frozen_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base's frozen parameters: adapted layers' base weights and BatchNorm's affine."""
    frozen = {
        f"{name}.{key}": parameter
        for name, layer in find_adapters(model).items()
        for key, parameter in layer.base_layer.named_parameters()
    }
    for name, bn in batchnorm_layers(model).items():
        frozen.update({f"{name}.{key}": parameter for key, parameter in bn.named_parameters()})
    return frozen


def test_switching_never_touches_the_base(bank):
    model = bank.model
    frozen = _frozen_tensors(model)
    copies = {k: v.detach().clone() for k, v in frozen.items()}
    fresh = build("toy-lite", 3)  # adding the tasks did not change the base either
    for name, layer in find_adapters(model).items():
        assert torch.equal(layer.base_layer.weight, fresh.get_submodule(name).weight), name
    for name in ["b", "a", "c", "b", "c", "a"]:
        bank.run(name, IMAGES)
    after = _frozen_tensors(model)
    assert after.keys() == frozen.keys() and bank.model is model
    for key, parameter in after.items():
        assert parameter is frozen[key], key  # the same tensors, not reloaded copies
        assert torch.equal(parameter, copies[key]), key


def test_tasks_are_read_once(tasks, tmp_path):
    """Activation switches from memory: the task folders may be gone by then."""
    bank = CNNTaskBank(loader=build)
    for name in ("a", "c"):
        shutil.copytree(tasks[name][0], tmp_path / name)
        bank.add(name, tmp_path / name)
        shutil.rmtree(tmp_path / name)
    for name in ("a", "c", "a"):
        assert (bank.run(name, IMAGES) - tasks[name][1]).abs().max() <= TOLERANCE, name


def test_fuse_equals_what_the_bank_computes(bank):
    base_parameters = sum(p.numel() for p in build("toy-lite", 3).parameters())
    for name in TASKS:
        fused = bank.fuse(name)
        with torch.no_grad():
            compact = fused(IMAGES)
        assert (compact - bank.run(name, IMAGES)).abs().max() <= TOLERANCE, name
        assert sum(p.numel() for p in fused.parameters()) < base_parameters
        assert not find_adapters(fused)


def test_tasks_that_do_not_fit_the_bank_are_refused(bank, tasks, tmp_path):
    make_task(tmp_path / "rank3", "toy-lite", 3, 5, ("weight",), (0.3,), rank=3)
    with pytest.raises(SpruceError, match="adapter"):
        bank.add("rank3", tmp_path / "rank3")
    make_task(tmp_path / "tiny", "tiny", 3, 5, ("weight",), (0.3,))
    with pytest.raises(SpruceError, match="base 'tiny'"):
        bank.add("tiny", tmp_path / "tiny")
    other = CNNTaskBank(adapter=AdapterConfig(kind="splora", rank=3), loader=build)
    with pytest.raises(SpruceError, match="adapter"):
        other.add("a", tasks["a"][0])
    with pytest.raises(SpruceError, match=r"task\.json"):
        bank.add("nothing", tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(tasks["a"][0], broken)
    meta = json.loads((broken / "task.json").read_text())
    (broken / "task.json").write_text(json.dumps({**meta, "num_classes": 4}))
    with pytest.raises(SpruceError, match="classes"):
        bank.add("broken", broken)
    # A plan naming a layer the base lacks is found by the trial activation, and leaves
    # no masks of its own behind.
    meta["plan"][-1]["members"][-1][0] = "nowhere"
    (broken / "task.json").write_text(json.dumps(meta))
    with pytest.raises(SpruceError, match="nowhere"):
        bank.add("broken", broken)
    with pytest.raises(SpruceError, match="already has"):
        bank.add("a", tasks["a"][0])
    assert bank.tasks == list(TASKS)
    for name in ("c", "a"):
        assert (bank.run(name, IMAGES) - tasks[name][1]).abs().max() <= TOLERANCE, name


def test_bank_fuse_cli_on_an_image_task(tmp_path, capsys):
    _write_npz(tmp_path / "train.npz", 16, 0)
    run = tmp_path / "run"
    config = CNNAdaptConfig(
        train=tmp_path / "train.npz", out=run, image_size=32, batch_size=8, criterion="weight",
        target_sparsity=0.3, rounds=1, max_steps=1, score_batches=1, progress=False,
        export_onnx=False, measure_latency=False,
    )  # fmt: skip
    run_cnn_adapt(config)
    out = tmp_path / "fused"
    assert main(["bank", "fuse", "--task", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "task run fused with its base efficientnet-lite0" in printed
    assert (out / "model.onnx").is_file() and "ONNX max |diff|" in printed
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (load_compact(out)(images) - load_compact(run)(images)).abs().max() <= TOLERANCE
    own, fused = (json.loads((d / "model.json").read_text()) for d in (run, out))
    assert fused["class_names"] == own["class_names"] == ["a", "b", "c"]
    assert fused["added_biases"] == own["added_biases"]
    # Another base, and a folder that holds no task: one line, exit 2, nothing written.
    for argv, words in (
        (["--base", "resnet18", "--task", str(run)], "base 'efficientnet-lite0'"),
        (["--task", str(tmp_path)], "no task file"),
    ):
        bad = tmp_path / "bad"
        assert main(["bank", "fuse", *argv, "--no-onnx", "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "Traceback" not in err
        assert not bad.exists()
