"""CNN support: EfficientNet-Lite0 weights, image readers, channel criteria and pruning."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spruce.criteria import CRITERIA
from spruce.errors import SpruceError
from spruce.pruning.cnn import prune_cnn
from spruce.units.channel_groups import (
    apply_plan,
    build_graph,
    channel_groups,
    image_batches,
    image_loss,
    mask_channels,
    plan_pruning,
    prunable_parameter_count,
    replay_pruning,
)
from spruce.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite,
    StageSpec,
    load_cnn,
    load_images,
)

REPO = Path(__file__).resolve().parents[1]
SPARSITY_TOLERANCE = 0.03
"""Channels are whole units: on the toy net one channel of the widest group is ~1-2% of
the prunable parameters, so the achieved sparsity lands within 0.03 of the target."""


# --- models -----------------------------------------------------------------------------


def test_efficientnet_lite0_loads_the_shipped_weights_strictly():
    model = load_cnn("efficientnet-lite0", 1000).eval()  # load_state_dict(strict=True) inside
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 49 and all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)
    torch.manual_seed(0)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert logits.std() > 0.1  # not a degenerate (constant) output


def test_new_task_replaces_only_the_classifier(tmp_path):
    imagenet = load_cnn("efficientnet-lite0", 1000)
    model = load_cnn("efficientnet-lite0", 7)
    assert model.classifier.out_features == 7
    assert torch.equal(model._conv_head.weight, imagenet._conv_head.weight)
    path = tmp_path / "finetuned.pth"
    torch.save(model.state_dict(), path)
    again = load_cnn(str(path), 7)
    assert torch.equal(again.classifier.weight, model.classifier.weight)


def test_model_errors_are_user_errors(tmp_path):
    pickled = tmp_path / "whole-model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a pickled module, not a state dict
    with pytest.raises(SpruceError, match="plain state dict"):
        load_cnn(str(pickled), 3)
    with pytest.raises(SpruceError, match="does not exist"):
        load_cnn(str(tmp_path / "missing.pth"), 3)
    with pytest.raises(SpruceError, match="unknown CNN"):
        load_cnn("vgg16", 3)
    with pytest.raises(SpruceError, match=r"torchvision|weights"):
        load_cnn("resnet18", 3)


# --- data -------------------------------------------------------------------------------


def _write_png(path: Path, value: int, mode: str = "RGB", size: tuple[int, int] = (12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)


def test_image_folder_reader(tmp_path):
    root = tmp_path / "images"
    _write_png(root / "cat" / "a.png", 255)
    _write_png(root / "cat" / "b.jpg", 0, mode="L", size=(20, 20))
    _write_png(root / "dog" / "c.PNG", 128, mode="L")
    _write_png(root / "dog" / "d.png", 64)
    (root / "dog" / "notes.txt").write_text("ignored")
    data = load_images(root, size=16)
    assert data.class_names == ["cat", "dog"] and data.labels == [0, 0, 1, 1]
    x, label = data[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and label == 0
    white = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x.mean(dim=(1, 2)), white, atol=1e-5)
    assert data[1][0].shape == (3, 16, 16)  # grayscale becomes three channels
    subset = load_images(root, size=16, max_train_samples=2, seed=1)
    assert sorted(subset.labels) == [0, 1] and len(subset) == 2


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpruceError, match="no class sub-folders"):
        load_images(tmp_path / "empty")
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    with pytest.raises(SpruceError, match="holds no images"):
        load_images(tmp_path / "noimages")
    bad = tmp_path / "bad"
    _write_png(bad / "cat" / "ok.png", 10)
    (bad / "cat" / "broken.png").write_text("not a png")
    with pytest.raises(SpruceError, match=r"cannot read image .*broken\.png"):
        load_images(bad)
    with pytest.raises(SpruceError, match="does not exist"):
        load_images(tmp_path / "nowhere")
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(SpruceError, match=r"neither a folder nor an \.npz"):
        load_images(tmp_path / "table.csv")


def test_npz_reader(tmp_path):
    gray = tmp_path / "gray.npz"
    images = np.zeros((6, 8, 8), dtype=np.uint8)
    images[3:] = 255
    np.savez(gray, images=images, labels=np.array([0, 0, 0, 1, 1, 1]), label_names=["a", "b"])
    data = load_images(gray, size=4, mean=(0, 0, 0), std=(1, 1, 1))
    assert data.class_names == ["a", "b"] and len(data) == 6
    assert data[0][0].shape == (3, 4, 4) and data[0][0].max() == 0 and data[5][0].min() == 1
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.full((2, 5, 5, 3), 0.5, np.float32), labels=np.array([1, 0]))
    data = load_images(rgb, size=5, mean=(0, 0, 0), std=(1, 1, 1))
    assert data.class_names == ["0", "1"] and data[0][1] == 1
    assert torch.allclose(data[0][0], torch.full((3, 5, 5), 128 / 255))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(2, int)}, "3 images"),
        ({"images": np.zeros((3, 4), np.uint8), "labels": np.zeros(3, int)}, "shape"),
        ({"images": np.zeros((3, 4, 4, 2), np.uint8), "labels": np.zeros(3, int)}, "shape"),
        ({"images": np.zeros((3, 4, 4), np.uint8)}, "lacks"),
        ({"images": np.full((1, 4, 4), 7.0), "labels": np.zeros(1, int)}, r"\[0, 1\]"),
        ({"images": np.zeros((1, 4, 4), np.uint8), "labels": np.array([0.5])}, "integers"),
        (
            {
                "images": np.zeros((2, 4, 4), np.uint8),
                "labels": np.array([0, 2]),
                "label_names": np.array(["x", "y"]),
            },
            "label_names",
        ),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(SpruceError, match=message):
        load_images(path)


# --- channel criteria and pruning on a toy EfficientNet-Lite -----------------------------


def _toy_net() -> EfficientNetLite:
    """Residual MBConv blocks with depthwise convs and BatchNorm, random BN statistics."""
    torch.manual_seed(0)
    stages = (
        StageSpec(1, 3, 1, 1, 8, 8),
        StageSpec(2, 3, 2, 4, 8, 12),
        StageSpec(2, 5, 1, 3, 12, 12),
    )
    model = EfficientNetLite(3, stages, stem_channels=8, head_channels=24)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 3, (8,), generator=generator)
    return [(images[:4], labels[:4]), (images[4:], labels[4:])]


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_each_criterion_scores_every_channel_of_every_group(name, batches):
    model = _toy_net()
    groups = channel_groups(build_graph(model, batches[0][0][:1]), [model.classifier])
    assert len(groups) >= 5
    criterion = CRITERIA[name]()
    criterion.prepare(model, image_batches(batches), loss_fn=image_loss)
    for group in groups:
        scores = criterion.group_scores(group)
        assert scores.shape == (len(group[0].idxs),)
        assert torch.isfinite(scores).all() and (scores >= 0).all()


@pytest.mark.parametrize("name", ["weight", "lrp"])
@pytest.mark.parametrize("global_ranking", [False, True])
def test_masked_channels_equal_the_physically_pruned_model(name, global_ranking, batches):
    model = _toy_net()
    images = torch.cat([b[0] for b in batches])
    groups = channel_groups(build_graph(model, images[:1]), [model.classifier])
    criterion = CRITERIA[name]()
    criterion.prepare(model, image_batches(batches), loss_fn=image_loss)
    base = prunable_parameter_count(model, [model.classifier])
    scores = [criterion.group_scores(g) for g in groups]
    plan = plan_pruning(groups, scores, base // 2, [model.classifier], global_ranking)
    assert sum(len(remove) for _, remove in plan) > 10
    with torch.no_grad(), mask_channels(plan):
        masked = model(images)
    with torch.no_grad():
        dense = model(images)
    apply_plan(plan)
    with torch.no_grad():
        pruned = model(images)
    assert (masked - pruned).abs().max() <= 1e-4
    assert (dense - pruned).abs().max() > 1e-3  # the channels did matter
    assert abs(prunable_parameter_count(model, [model.classifier]) / base - 0.5) <= 0.03


def test_progressive_pruning_reaches_the_target_sparsity(batches):
    model = _toy_net()
    calls = []
    result = prune_cnn(model, batches, "taylor", 0.6, rounds=3, finetune_fn=calls.append)
    assert len(calls) == 2 and all(m is model for m in calls)  # between rounds only
    assert [r.round for r in result.rounds] == [1, 2, 3]
    for report in result.rounds:
        assert abs(report.sparsity - report.target_sparsity) <= SPARSITY_TOLERANCE
    assert result.sparsity == pytest.approx(1 - result.parameters / result.base_parameters)
    assert model.classifier.out_features == 3
    rebuilt = replay_pruning(_toy_net(), batches[0][0][:1], result.history)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(rebuilt(batches[0][0]), model(batches[0][0]), atol=1e-6)


def test_pruning_arguments_are_checked(batches):
    with pytest.raises(SpruceError, match="unknown channel criterion"):
        prune_cnn(_toy_net(), batches, "random", 0.5)
    with pytest.raises(SpruceError, match="outside"):
        prune_cnn(_toy_net(), batches, "weight", 1.0)


# --- the digits example -----------------------------------------------------------------


def test_digits_prepare_writes_stratified_rgb_arrays(tmp_path):
    spec = importlib.util.spec_from_file_location("prepare", REPO / "examples/digits/prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    paths = prepare.prepare_digits(tmp_path / "digits", size=16, max_samples=100)
    with np.load(paths["train"]) as train, np.load(paths["test"]) as test:
        assert train["images"].shape == (75, 16, 16, 3) and train["images"].dtype == np.uint8
        assert test["images"].shape == (25, 16, 16, 3) and test["labels"].shape == (25,)
        assert set(train["labels"].tolist()) == set(range(10)) == set(test["labels"].tolist())
        assert train["images"].max() > 200
    data = load_images(paths["test"], size=16)
    assert data.class_names == [str(c) for c in range(10)] and data[0][0].shape == (3, 16, 16)
