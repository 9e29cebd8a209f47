"""Structured Pruning Adapters for CNNs: masks on a shared base, fusion, task files, pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spruce.adapters import AdapterConfig, find_adapters
from spruce.criteria import CRITERIA
from spruce.errors import SpruceError
from spruce.pipelines.adapt_image import CNNAdaptConfig, run_cnn_adapt
from spruce.spa.cnn_model import (
    adapt_cnn,
    classifier_name,
    evaluate_cnn,
    learned_parameters,
    recalibrate_batchnorm,
)
from spruce.spa.cnn_task import (
    batchnorm_layers,
    load_compact,
    load_task,
    save_compact,
    save_task,
    task_statistics,
)
from spruce.units.channel_masks import (
    ChannelPlan,
    active_masks,
    apply_channel_plan,
    extend_plan,
    fuse_pruned,
    merged_copy,
)
from spruce.vision import EfficientNetLite, StageSpec, load_cnn

TOLERANCE = 1e-4


class TinyResidualCNN(nn.Module):
    """Stem, an inverted-residual block (1x1 expand, depthwise 3x3, 1x1 project, skip add),
    a strided conv with a bias, global pooling and a linear classifier; BN everywhere."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 16, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(16)
        self.project = nn.Conv2d(16, 8, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=True)
        self.down_bn = nn.BatchNorm2d(12)
        self.classifier = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        y = torch.relu(self.expand_bn(self.expand(x)))
        y = torch.relu(self.depthwise_bn(self.depthwise(y)))
        x = x + self.project_bn(self.project(y))
        x = torch.relu(self.down_bn(self.down(x)))
        return self.classifier(x.mean(dim=(2, 3)))


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_batchnorm(TinyResidualCNN())


def toy_lite() -> nn.Module:
    """EfficientNet-Lite code (TensorFlow padding, residual MBConv blocks) at toy width."""
    torch.manual_seed(0)
    stages = (StageSpec(1, 3, 1, 1, 8, 8), StageSpec(2, 3, 2, 4, 8, 12))
    return _randomise_batchnorm(EfficientNetLite(3, stages, stem_channels=8, head_channels=16))


BUILDERS = {"tiny": tiny_cnn, "toy-lite": toy_lite}


@pytest.fixture
def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 3, (8,), generator=generator)
    return [(images[:4], labels[:4]), (images[4:], labels[4:])]


def _perturb(model: nn.Module, seed: int, scale: float = 0.3) -> None:
    """Stand-in for training: non-zero adapter factors and biases, a new classifier, the
    task's own BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in find_adapters(model).values():
            for parameter in layer.parameters(recurse=False):
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
        head = model.get_submodule(classifier_name(model))
        head.weight.copy_(scale * torch.randn(head.weight.shape, generator=generator))
        for bn in batchnorm_layers(model).values():
            bn.running_mean.add_(scale * torch.randn(bn.num_features, generator=generator))
            bn.running_var.mul_(1 + scale * torch.rand(bn.num_features, generator=generator))


def _adapted(builder: str, kind: str | None, seed: int = 2) -> nn.Module:
    model = BUILDERS[builder]()
    if kind is None:  # fine-prune: every weight changes
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        return model
    adapt_cnn(model, AdapterConfig(kind=kind, rank=2), classifier_name(model))
    _perturb(model, seed)
    return model


def _prune(model: nn.Module, data, criteria=("taylor", "lrp"), targets=(0.3, 0.6)) -> ChannelPlan:
    """Progressive: each round scores with the previous masks in place, then grows the plan."""
    head, plan = classifier_name(model), ChannelPlan()
    for name, target in zip(criteria, targets, strict=True):
        step = extend_plan(model, plan, data, CRITERIA[name](), target, data[0][0], [head])
        assert all(set(g.remove) <= set(step.plan.removed(g.root)) for g in plan.groups)
        assert abs(step.sparsity - target) <= 0.08
        plan = step.plan
        apply_channel_plan(model, plan)
    return plan


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("kind", ["splora", "sppara"])
def test_adapted_model_at_init_equals_its_base(builder, kind, data):
    base = BUILDERS[builder]()
    model = BUILDERS[builder]()
    layers = adapt_cnn(model, AdapterConfig(kind=kind, rank=2), classifier_name(model))
    assert "classifier" not in " ".join(layers) and "_fc" not in layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".base_layer." not in n and "bn" not in n for n in trainable)
    assert any(n.startswith(("classifier.", "_fc.")) for n in trainable)
    with torch.no_grad():
        assert torch.equal(model.eval()(data[0][0]), base(data[0][0]))


def test_training_an_adapted_model_leaves_the_shared_base_alone(data):
    model = tiny_cnn()
    adapt_cnn(model, AdapterConfig(kind="splora", rank=2), "classifier")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    for images, labels in data:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    statistics = {k for k in changed if k.endswith(("running_mean", "running_var", "_tracked"))}
    # BatchNorm's statistics are the task's own (saved in its file); its affine parameters
    # and every other base tensor stay the shared base's.
    assert statistics and all("_bn." in k for k in statistics)
    learned = changed - statistics
    assert learned and all(k.startswith("classifier.") or "lora_" in k or k.endswith(".bias")
                           for k in learned)  # fmt: skip
    assert not any("base_layer" in k or "_bn" in k for k in learned)


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("kind", ["splora", "sppara", None])
def test_masked_model_equals_the_fused_compact_model(builder, kind, data):
    model = _adapted(builder, kind)
    images = torch.cat([d[0] for d in data])
    with torch.no_grad():
        merged = merged_copy(model)(images)
        dense = model.eval()(images)
    assert (merged - dense).abs().max() <= TOLERANCE  # the merged copy is the adapted model
    plan = _prune(model, data)
    fused, history = fuse_pruned(model, plan, images[:1], [classifier_name(model)])
    with torch.no_grad():
        masked, compact = model.eval()(images), fused(images)
    assert (masked - compact).abs().max() <= TOLERANCE
    assert (masked - dense).abs().max() > 1e-3  # the removed channels did matter
    assert sum(p.numel() for p in fused.parameters()) < 0.8 * sum(
        p.numel() for p in merged_copy(model).parameters()
    )
    assert len(history) == 1 and history[0]
    # Masks only: the frozen base weights are untouched, so other tasks still see them.
    base = BUILDERS[builder]()
    if kind is not None:
        for name, layer in find_adapters(model).items():
            assert torch.equal(layer.base_layer.weight, base.get_submodule(name).weight)


@pytest.mark.parametrize("kind", ["splora", "sppara"])
def test_learned_parameters_follow_the_kept_channels(kind, data):
    model = _adapted("tiny", kind)
    _prune(model, data)
    expected = 0
    for layer in find_adapters(model).values():
        in_keep, out_keep = layer.in_mask > 0.5, layer.out_mask > 0.5
        kin, kout = int(in_keep.sum()), int(out_keep.sum())
        if kind == "splora":
            expected += layer.rank * (kin + kout) + kout
        else:  # a pointwise matrix per group: kept out x kept in within the group
            per_in = in_keep.view(layer.groups, -1).sum(1)
            per_out = out_keep.view(layer.groups, -1).sum(1)
            expected += int((per_in * per_out).sum()) + kout
    kept_features = int((model.down.out_mask > 0.5).sum())
    expected += 3 * kept_features + 3  # classifier: kept input columns and the bias
    masks = active_masks(model)
    assert learned_parameters(model, "classifier", masks) == expected
    assert kept_features < 12  # the classifier's inputs were pruned too


def test_task_file_holds_only_the_task(tmp_path, data):
    model = _adapted("tiny", "splora")
    _prune(model, data)
    save_task(model, tmp_path, {"classifier": "classifier", "model": "tiny"})
    tensors = load_file(str(tmp_path / "task.safetensors"))
    assert all(k.startswith(("adapter.", "classifier.", "batchnorm.")) for k in tensors)
    assert not any("base_layer" in k for k in tensors)
    masks = active_masks(model)
    for name, bn in batchnorm_layers(model).items():  # statistics of the kept channels only
        kept = masks.output_keep(name, bn.num_features)
        assert torch.equal(tensors[f"batchnorm.{name}.running_mean"], bn.running_mean[kept])
        assert torch.equal(tensors[f"batchnorm.{name}.running_var"], bn.running_var[kept])
    assert not any(k.startswith("batchnorm.") and "running" not in k for k in tensors)
    channels = sum(bn.num_features for bn in batchnorm_layers(model).values())
    assert task_statistics(model) < 2 * channels
    frozen = [t for n, t in model.state_dict().items() if "base_layer" in n or "_bn.weight" in n
              or "_bn.bias" in n]  # fmt: skip
    for value in tensors.values():
        assert not any(v.shape == value.shape and torch.equal(v, value) for v in frozen)
    floats = sum(v.numel() for v in tensors.values() if v.is_floating_point())
    assert floats == learned_parameters(model, "classifier", masks) + task_statistics(model)
    meta = json.loads((tmp_path / "task.json").read_text())
    assert meta["plan"] and meta["classifier"] == "classifier"


def test_switching_tasks_on_one_base(tmp_path, data):
    images = torch.cat([d[0] for d in data])
    model = _adapted("toy-lite", "splora", seed=2)
    head = classifier_name(model)
    _prune(model, data, ("weight",), (0.5,))
    with torch.no_grad():
        first = model.eval()(images)
    save_task(model, tmp_path / "a", {"classifier": head})
    _perturb(model, seed=3)
    _prune(model, data, ("lrp", "taylor"), (0.2, 0.4))
    with torch.no_grad():
        second = model.eval()(images)
    save_task(model, tmp_path / "b", {"classifier": head})
    assert (first - second).abs().max() > 1e-2
    fresh = toy_lite()
    adapt_cnn(fresh, AdapterConfig(kind="splora", rank=2), head)
    for name, expected in (("a", first), ("b", second), ("a", first)):
        load_task(fresh, tmp_path / name)
        with torch.no_grad():
            assert (fresh.eval()(images) - expected).abs().max() <= TOLERANCE
    with pytest.raises(SpruceError, match=r"task\.json"):
        load_task(fresh, tmp_path)


def test_a_task_file_without_batchnorm_statistics_is_refused(tmp_path, data):
    model = _adapted("tiny", "splora")
    _prune(model, data, ("weight",), (0.5,))
    save_task(model, tmp_path, {"classifier": "classifier"})
    path = tmp_path / "task.safetensors"
    tensors = load_file(str(path))
    save_file({k: v for k, v in tensors.items() if not k.startswith("batchnorm.")}, str(path))
    fresh = tiny_cnn()
    adapt_cnn(fresh, AdapterConfig(kind="splora", rank=2), "classifier")
    with pytest.raises(SpruceError, match="running_mean of BatchNorm 'stem_bn'") as error:
        load_task(fresh, tmp_path)
    assert "re-run spruce adapt" in error.value.fix


def test_efficientnet_lite0_masked_equals_fused_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = load_cnn("efficientnet-lite0", 10)
    head = classifier_name(model)
    adapt_cnn(model, AdapterConfig(kind="splora", rank=4), head)
    _perturb(model, seed=0, scale=0.02)  # trained adapters are small changes
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    step = extend_plan(model, ChannelPlan(), [], CRITERIA["weight"](), 0.5, images[:1], [head])
    apply_channel_plan(model, step.plan)
    fused, history = fuse_pruned(model, step.plan, images[:1], [head])
    with torch.no_grad():
        masked, compact = model.eval()(images), fused(images)
    assert (masked - compact).abs().max() <= TOLERANCE
    assert abs(step.sparsity - 0.5) <= 0.03
    added = [n for n, m in fused.named_modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    meta = {"model": "efficientnet-lite0", "num_classes": 10, "image_size": 32}
    save_compact(fused, tmp_path, {**meta, "history": history, "added_biases": added})
    with torch.no_grad():
        assert (load_compact(tmp_path)(images) - compact).abs().max() <= 1e-6


def _write_npz(path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    images = rng.integers(0, 256, size=(count, 20, 20, 3), dtype=np.uint8)
    images[..., 0] = (labels * 100)[:, None, None].astype(np.uint8)  # a learnable signal
    np.savez(path, images=images, labels=labels, label_names=np.array(["a", "b", "c"]))


REPORT_KEYS = {
    "metrics", "sparsity", "params", "learned_params", "task_file_bytes", "base_model_bytes",
    "latency", "flops", "mode", "criterion", "adapter", "onnx_max_abs_diff",
}  # fmt: skip


@pytest.mark.parametrize("fine_prune", [False, True])
def test_pipeline_end_to_end(tmp_path, fine_prune):
    _write_npz(tmp_path / "train.npz", 24, 0)
    _write_npz(tmp_path / "test.npz", 9, 1)
    out = tmp_path / "run"
    config = CNNAdaptConfig(
        train=tmp_path / "train.npz", test=tmp_path / "test.npz", out=out, image_size=32,
        batch_size=8, criterion="taylor", target_sparsity=0.5, rounds=2, max_steps=2,
        score_batches=1, latency_repeats=1, fine_prune=fine_prune, progress=False,
    )  # fmt: skip
    report = run_cnn_adapt(config)
    assert set(report) >= REPORT_KEYS and json.loads((out / "report.json").read_text()) == report
    assert report["mode"] == ("fine-prune" if fine_prune else "adapt")
    assert 0.0 <= report["metrics"]["test"]["accuracy"] <= 1.0
    assert abs(report["sparsity"]["achieved"] - 0.5) <= 0.03
    assert report["masked_vs_fused_max_abs_diff"] <= TOLERANCE
    assert report["onnx_max_abs_diff"] <= TOLERANCE
    assert report["params"]["total"] < report["params"]["dense"]
    assert report["flops"]["fused"] < report["flops"]["dense"]
    assert set(report["latency"]["batch_32"]) == {"dense", "fused"}
    compact = load_compact(out)
    assert sum(p.numel() for p in compact.parameters()) == report["params"]["total"]
    if fine_prune:
        assert report["adapter"] is None and not (out / "task.safetensors").exists()
        assert report["learned_params"] == report["params"]["total"]
        return
    assert report["task_file_bytes"] == (out / "task.safetensors").stat().st_size
    assert report["task_file_bytes"] < 0.25 * report["base_model_bytes"]
    assert report["learned_params"] < 0.25 * report["params"]["total"]
    # The task file on a fresh copy of the shared base computes the fused model.
    base = load_cnn("efficientnet-lite0", 3)
    adapt_cnn(base, AdapterConfig.from_pretrained(out), classifier_name(base))
    load_task(base, out)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (base.eval()(images) - compact(images)).abs().max() <= TOLERANCE


def test_no_onnx_and_no_latency_are_honoured(tmp_path):
    _write_npz(tmp_path / "train.npz", 16, 0)
    out = tmp_path / "run"
    config = CNNAdaptConfig(
        train=tmp_path / "train.npz", out=out, image_size=32, batch_size=8, rounds=1,
        max_steps=1, score_batches=1, progress=False, export_onnx=False,
        measure_latency=False,
    )  # fmt: skip
    report = run_cnn_adapt(config)
    assert "latency" not in report and "onnx_max_abs_diff" not in report
    assert not (out / "model.onnx").exists() and (out / "task.safetensors").is_file()


def test_config_errors_are_user_errors(tmp_path):
    with pytest.raises(SpruceError, match="criterion"):
        CNNAdaptConfig(train="x", out=tmp_path, criterion="random").validate()
    with pytest.raises(SpruceError, match="adapter"):
        CNNAdaptConfig(train="x", out=tmp_path, adapter="splopa").validate()
    with pytest.raises(SpruceError, match="sparsity"):
        CNNAdaptConfig(train="x", out=tmp_path, target_sparsity=1.0).validate()
    with pytest.raises(SpruceError, match="rank"):
        CNNAdaptConfig(train="x", out=tmp_path, rank=0).validate()


def test_spruce_adapt_runs_cnns_on_image_data(tmp_path, capsys):
    from spruce.cli.main import main

    _write_npz(tmp_path / "train.npz", 16, 0)
    _write_npz(tmp_path / "test.npz", 6, 1)
    argv = ["adapt", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"),
            "--criterion", "weight", "--target-sparsity", "0.3", "--prune-rounds", "1",
            "--max-steps", "1", "--batch-size", "8", "--latency-repeats", "1", "--quiet",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    assert "efficientnet-lite0 (adapt, weight): test accuracy" in capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["model"] == "efficientnet-lite0" and report["cnn_config"]["lr"] == 1e-3
    bad = [*argv[:-2], "--criterion", "l0", "--out", str(tmp_path / "bad")]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use weight, gradient, taylor or lrp" in err[0]
    assert not (tmp_path / "bad").exists()


def test_recalibrated_batchnorm_holds_the_data_statistics_without_dropout() -> None:
    """After recalibration each BatchNorm's running mean and variance are the average of
    its batch statistics over the data (not ImageNet's, nor a momentum's mix), stochastic
    depth and dropout were off while they were gathered, and the momentum is restored."""
    torch.manual_seed(0)
    stages = (StageSpec(1, 3, 1, 1, 8, 8), StageSpec(2, 3, 2, 4, 8, 12))
    model = EfficientNetLite(num_classes=3, stages=stages, stem_channels=8, head_channels=16,
                             drop_connect_rate=0.9, dropout=0.9)  # fmt: skip
    batches = [(torch.randn(4, 3, 16, 16) * 3 + 1, torch.zeros(4, dtype=torch.long))
               for _ in range(3)]  # fmt: skip
    bn = model._bn0
    seen = []
    handle = bn.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    recalibrate_batchnorm(model, batches)
    handle.remove()
    assert not model.training and bn.momentum == 0.01  # eval mode, momentum as it was
    means = torch.stack([x.mean((0, 2, 3)) for x in seen])
    variances = torch.stack([x.var((0, 2, 3), unbiased=True) for x in seen])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, variances.mean(0), atol=1e-4)
    # Stochastic depth was off: recalibrating again gives the same statistics.
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    recalibrate_batchnorm(model, batches)
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_evaluation_and_recalibration_record_no_gradients() -> None:
    """Both run the model over whole splits: an autograd graph there is memory and time
    spent for nothing."""
    grad_seen = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(3)
            self.fc = nn.Linear(3, 2)

        def forward(self, images):
            grad_seen.append(torch.is_grad_enabled())
            return self.fc(self.norm(images).mean((2, 3)))

    batches = [(torch.randn(4, 3, 5, 5), torch.zeros(4, dtype=torch.long))]
    evaluate_cnn(Probe(), batches)
    recalibrate_batchnorm(Probe(), batches)
    assert grad_seen == [False, False]
