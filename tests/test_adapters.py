"""Structured Pruning Adapters on tiny random layers: fusion, masks, counts, state, config."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from spruce.adapters import (
    AdapterConfig,
    SPAdapterLayer,
    SPLoPALayer,
    SPLoRALayer,
    SPPaRALayer,
    adapter_state,
    fuse_adapters,
    inject_adapters,
    load_adapter_state,
    merge_adapters,
    unmerge_adapters,
)
from spruce.errors import SpruceError

TOL = {"atol": 1e-5, "rtol": 0.0}

# name -> (factory of the base layer, input shape)
BASES = {
    "linear": (lambda: nn.Linear(12, 8), (3, 12)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), (2, 4, 9)),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 7, 7)),
    "conv3d": (lambda: nn.Conv3d(4, 6, 3, padding=1), (2, 4, 5, 5, 5)),
    "conv2d_1x1": (lambda: nn.Conv2d(4, 6, 1), (2, 4, 5, 5)),
    "grouped": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (2, 4, 6, 6)),
    "depthwise": (lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6), (2, 6, 6, 6)),
    "depthwise_x2": (lambda: nn.Conv1d(3, 6, 3, padding=1, groups=3), (2, 3, 8)),
}
CONVS = [name for name in BASES if name != "linear"]
CASES = (
    [("splora", name) for name in BASES]
    + [("sppara", name) for name in CONVS]
    + [("splopa", "linear")]
)


def make(kind: str, base_name: str, seed: int = 0) -> tuple[SPAdapterLayer, torch.Tensor]:
    torch.manual_seed(seed)
    factory, shape = BASES[base_name]
    base = factory()
    if kind == "splora":
        layer = SPLoRALayer(base, rank=3, scaling=0.5)
    elif kind == "sppara":
        layer = SPPaRALayer(base)
    else:  # Linear(12, 8) in blocks of 2 x 4: a 4 x 3 block grid
        layer = SPLoPALayer(base, block_size=(2, 4), num_prototypes=3, rank=2)
    return layer, torch.randn(shape)


def group_consistent_masks(layer: SPAdapterLayer, seed: int = 1) -> None:
    """Random masks that a grouped convolution can be fused with: every surviving group
    keeps the same numbers of inputs and outputs; with 3+ groups one group is dropped."""
    gen = torch.Generator().manual_seed(seed)
    groups = layer.groups
    fan_in, fan_out = layer.in_features // groups, layer.out_features // groups
    keep_in, keep_out = max(1, round(0.6 * fan_in)), max(1, round(0.6 * fan_out))
    dropped = set(torch.randperm(groups, generator=gen)[: groups // 3].tolist())
    in_mask, out_mask = torch.zeros(layer.in_features), torch.zeros(layer.out_features)
    for g in range(groups):
        if g in dropped:
            continue
        in_mask[g * fan_in + torch.randperm(fan_in, generator=gen)[:keep_in]] = 1
        out_mask[g * fan_out + torch.randperm(fan_out, generator=gen)[:keep_out]] = 1
    layer.set_masks(in_mask, out_mask)
    if isinstance(layer, SPLoPALayer):
        blocks = (torch.rand(layer.block_mask.shape, generator=gen) > 0.3).float()
        blocks[1] = 0  # a whole row of blocks pruned: its outputs go, too
        layer.set_block_mask(blocks)


def train_a_little(layer: nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    """A few SGD steps towards a random target, so that the adapter's delta is non-zero."""
    params = [p for p in layer.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    target = torch.randn_like(layer(x))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(layer(x), target).backward()
        optimizer.step()


def trained_masked(kind: str, base_name: str) -> tuple[SPAdapterLayer, torch.Tensor]:
    layer, x = make(kind, base_name)
    group_consistent_masks(layer)
    train_a_little(layer, x)
    assert layer.delta_weight().abs().max() > 1e-3
    return layer, x


@pytest.mark.parametrize(("kind", "base_name"), CASES)
def test_fused_layer_equals_masked_adapted_layer(kind, base_name):
    layer, x = trained_masked(kind, base_name)
    in_keep, out_keep = layer.keep()
    assert 0 < int(out_keep.sum()) < layer.out_features
    fused = layer.fused()
    assert type(fused) is type(layer.base_layer)
    assert fused.weight.shape[0] == int(out_keep.sum())
    with torch.no_grad():
        torch.testing.assert_close(fused(x[:, in_keep]), layer(x)[:, out_keep], **TOL)


@pytest.mark.parametrize(("kind", "base_name"), CASES)
def test_masks_are_respected(kind, base_name):
    layer, x = trained_masked(kind, base_name)
    in_keep, out_keep = layer.keep()
    with torch.no_grad():
        y = layer(x)
        assert torch.all(y[:, ~out_keep] == 0)
        x_changed = x.clone()
        x_changed[:, ~in_keep] = torch.randn_like(x_changed[:, ~in_keep]) * 100
        assert torch.equal(layer(x_changed), y)


@pytest.mark.parametrize(("kind", "base_name"), CASES)
def test_adapted_layer_equals_base_at_initialization(kind, base_name):
    layer, x = make(kind, base_name)
    assert torch.count_nonzero(layer.delta_weight()) == 0
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base_layer(x))


@pytest.mark.parametrize(("kind", "base_name"), CASES)
def test_merge_then_unmerge_restores_the_base(kind, base_name):
    layer, x = trained_masked(kind, base_name)
    original = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        assert layer.merged
        assert not torch.allclose(layer.base_layer.weight, original)
        torch.testing.assert_close(layer(x), unmerged, **TOL)
        torch.testing.assert_close(
            layer.fused()(x[:, layer.keep()[0]]), unmerged[:, layer.keep()[1]], **TOL
        )
        layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, original, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kind", "base_name"), CASES)
def test_task_state_round_trip_holds_only_task_tensors(kind, base_name):
    layer, x = trained_masked(kind, base_name)
    state = layer.task_state()
    base_shape = layer.base_layer.weight.shape
    assert all(t.shape != base_shape for t in state.values())
    for name in layer.mask_buffers:
        assert state[name].dtype == torch.uint8
        packed = np.packbits(getattr(layer, name).flatten().numpy().astype(bool))
        assert np.array_equal(state[name].numpy(), packed)
    # Everything but the masks is a learned number, and all of them are counted.
    learned = sum(t.numel() for k, t in state.items() if k not in layer.mask_buffers)
    assert learned == layer.learned_parameters()

    fresh, _ = make(kind, base_name, seed=7)
    fresh.base_layer = layer.base_layer  # the same frozen base
    fresh.load_task_state(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), layer(x), atol=1e-6, rtol=0)
    for name in layer.mask_buffers:
        assert torch.equal(getattr(fresh, name), getattr(layer, name))


def test_task_state_of_another_layer_is_rejected():
    layer, _ = trained_masked("splora", "linear")
    other = SPLoRALayer(nn.Linear(20, 8), rank=3)
    with pytest.raises(SpruceError, match="does not fit a mask"):
        other.load_task_state(layer.task_state())


def _kept(layer: SPAdapterLayer) -> tuple[int, int]:
    in_keep, out_keep = layer.keep()
    return int(in_keep.sum()), int(out_keep.sum())


def test_learned_parameter_counts_follow_the_formulas():
    # SPLoRA, Linear(12 -> 8), r = 3: r * (kept_in + kept_out) + kept_out.
    layer, _ = make("splora", "linear")
    layer.set_masks(in_mask=[1] * 7 + [0] * 5, out_mask=[0, 1] * 4)
    assert _kept(layer) == (7, 4)
    assert layer.learned_parameters() == 3 * (7 + 4) + 4 == 37
    assert layer.mask_bits() == 12 + 8
    # Unpruned: r * (in + out) + out.
    assert make("splora", "linear")[0].learned_parameters() == 3 * (12 + 8) + 8

    # SPLoRA, depthwise Conv2d(6, 6, groups=6): the rank is capped at 1 per channel.
    layer, _ = make("splora", "depthwise")
    layer.set_masks(in_mask=[1, 1, 0, 1, 0, 1], out_mask=[1, 1, 0, 1, 0, 1])
    assert layer.rank == 1
    assert layer.learned_parameters() == 1 * (4 + 4) + 4 == 12

    # SPPaRA, Conv2d(4 -> 6, groups=2): sum over groups of kept_out_g * kept_in_g, + kept_out.
    layer, _ = make("sppara", "grouped")
    layer.set_masks(in_mask=[1, 1, 0, 1], out_mask=[1, 1, 0, 1, 0, 0])
    assert layer.learned_parameters() == (2 * 2 + 1 * 1) + 3 == 8
    # SPPaRA, Conv1d(4 -> 6): kept_out * kept_in + kept_out.
    layer, _ = make("sppara", "conv1d")
    layer.set_masks(in_mask=[1, 0, 1, 1], out_mask=[1, 1, 1, 1, 0, 0])
    assert layer.learned_parameters() == 4 * 3 + 4 == 16

    # SPLoPA, Linear(12 -> 8), blocks 2 x 4 (grid 4 x 3), K = 3 prototypes of rank 2:
    # kept_blocks * K + K * r * (bo + bi) + kept_out.
    layer, _ = make("splopa", "linear")
    blocks = torch.ones(4, 3)
    blocks[0, 1] = blocks[2, 2] = 0
    blocks[3] = 0  # block row 3 gone: its 2 output channels are pruned with it
    layer.set_block_mask(blocks)
    assert _kept(layer) == (12, 6)
    assert layer.learned_parameters() == 7 * 3 + 3 * 2 * (2 + 4) + 6 == 63
    assert layer.mask_bits() == 12 + 8 + 12


def test_rank_resolution():
    assert SPLoRALayer(nn.Linear(12, 8), rank=0.25).rank == 2  # 0.25 * 8 outputs
    assert SPLoRALayer(nn.Linear(12, 8), rank=0.01).rank == 1  # at least 1
    assert SPLoRALayer(nn.Linear(12, 8), rank=100).rank == 8  # at most min(out, in)
    assert SPLoRALayer(nn.Conv2d(8, 12, 3, groups=4), rank=0.5).rank == 2  # of out/groups
    for bad in (0, -2, 1.5, 0.0, True, "4"):
        with pytest.raises(SpruceError):
            SPLoRALayer(nn.Linear(12, 8), rank=bad)


def test_kinds_reject_layers_they_cannot_adapt():
    with pytest.raises(SpruceError, match="splora"):
        SPPaRALayer(nn.Linear(4, 4))
    with pytest.raises(SpruceError, match="convolutions"):
        SPLoPALayer(nn.Conv2d(4, 4, 3), block_size=2)
    with pytest.raises(SpruceError, match=r"block size 3x4 does not divide the 8x12"):
        SPLoPALayer(nn.Linear(12, 8), block_size=(3, 4))
    with pytest.raises(SpruceError, match="cannot wrap"):
        SPLoRALayer(nn.ConvTranspose2d(4, 4, 3))


def test_grouped_fusion_needs_masks_consistent_per_group():
    layer, _ = make("splora", "grouped")  # groups of 2 inputs -> 3 outputs
    layer.set_masks(in_mask=[1, 1, 1, 0], out_mask=[1, 1, 0, 1, 1, 0])
    with pytest.raises(SpruceError, match="valid grouped convolution"):
        layer.fused()
    depthwise, _ = make("sppara", "depthwise")
    depthwise.set_masks(in_mask=[1, 1, 1, 1, 1, 1], out_mask=[1, 0, 1, 1, 1, 1])
    with pytest.raises(SpruceError, match="in_mask == out_mask"):
        depthwise.fused()
    # A group that keeps nothing at all is dropped: groups 6 -> 5.
    depthwise.set_masks(in_mask=[1, 0, 1, 1, 1, 1])
    assert depthwise.fused().groups == 5


def test_bad_masks_are_rejected():
    layer, _ = make("splora", "linear")
    with pytest.raises(SpruceError, match="has 3 entries"):
        layer.set_masks(in_mask=[1, 0, 1])
    with pytest.raises(SpruceError, match="only 0 and 1"):
        layer.set_masks(out_mask=torch.full((8,), 0.5))


# ----- config ---------------------------------------------------------------------------
def test_config_round_trips_through_save_pretrained(tmp_path):
    config = AdapterConfig(
        kind="splopa",
        rank=0.25,
        scaling=2.0,
        block_size=(4, 8),
        num_prototypes=5,
        target_modules=["query", "encoder.*.dense"],
        trainable=["classifier"],
    )
    path = config.save_pretrained(tmp_path / "task")
    assert path.name == "adapter_config.json"
    assert [p.name for p in path.parent.iterdir()] == ["adapter_config.json"]
    loaded = AdapterConfig.from_pretrained(tmp_path / "task")
    assert loaded == config
    assert AdapterConfig.from_dict(AdapterConfig(rank=4).to_dict()) == AdapterConfig(rank=4)
    assert isinstance(AdapterConfig.from_dict({"rank": 4}).rank, int)
    assert AdapterConfig.from_dict({"block_size": 16}).block_size == (16, 16)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(SpruceError, match="did you mean 'rank'"):
        AdapterConfig.from_dict({"rnak": 4})
    with pytest.raises(SpruceError, match="did you mean 'splora'"):
        AdapterConfig(kind="splra").validate()
    for bad in ({"rank": 0}, {"rank": 1.5}, {"rank": True}, {"rank": "8"}):
        with pytest.raises(SpruceError, match="rank"):
            AdapterConfig.from_dict(bad)
    for bad in (0, [4], [4, 0], "4x4", 2.5):
        with pytest.raises(SpruceError, match="block_size"):
            AdapterConfig(block_size=bad).validate()
    with pytest.raises(SpruceError, match="num_prototypes"):
        AdapterConfig(num_prototypes=0).validate()
    with pytest.raises(SpruceError, match="target_modules"):
        AdapterConfig(target_modules="query").validate()
    with pytest.raises(SpruceError, match=r"no adapter_config\.json"):
        AdapterConfig.from_pretrained(tmp_path)


# ----- injection --------------------------------------------------------------------------
def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)
    )  # fmt: skip


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def _trainable(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_inject_into_mlp_freezes_all_but_adapters_and_head():
    model = mlp()
    x = torch.randn(4, 6)
    reference = model(x)
    layers = inject_adapters(model, AdapterConfig(kind="splora", rank=2), trainable=["4"])
    assert sorted(layers) == ["0", "2"]
    assert isinstance(model[0], SPLoRALayer) and isinstance(model[4], nn.Linear)
    assert _trainable(model) == {
        f"{i}.{p}" for i in (0, 2) for p in ("bias", "lora_A", "lora_B")
    } | {"4.weight", "4.bias"}
    assert torch.equal(model(x), reference)
    with pytest.raises(SpruceError, match="already has adapters"):
        inject_adapters(model, AdapterConfig())


def test_inject_into_cnn_by_kind_and_pattern():
    model = cnn()
    x = torch.randn(2, 3, 6, 6)
    reference = model(x)
    layers = inject_adapters(model, AdapterConfig(kind="sppara", trainable=["6"]))
    assert sorted(layers) == ["0", "2"]  # sppara adapts the convolutions only
    assert _trainable(model) == {f"{i}.{p}" for i in (0, 2) for p in ("bias", "para_weight")} | {
        "6.weight",
        "6.bias",
    }
    assert torch.equal(model(x), reference)

    model = cnn()
    layers = inject_adapters(model, AdapterConfig(kind="splora", target_modules=["2"]))
    assert sorted(layers) == ["2"]
    assert _trainable(model) == {"2.bias", "2.lora_A", "2.lora_B"}


def test_inject_rejects_bad_targets():
    with pytest.raises(SpruceError, match="did you mean '2'"):
        inject_adapters(mlp(), AdapterConfig(target_modules=["2x"]))
    with pytest.raises(SpruceError, match="use kind splora"):
        inject_adapters(cnn(), AdapterConfig(kind="sppara", target_modules=["6"]))
    with pytest.raises(SpruceError, match="0: block size"):
        inject_adapters(mlp(), AdapterConfig(kind="splopa", block_size=4), trainable=["4"])
    with pytest.raises(SpruceError, match="trainable pattern 'head'"):
        inject_adapters(mlp(), AdapterConfig(), trainable=["head"])


def _mask_pair(model: nn.Sequential, first: int, second: int, out_keep: list[int]) -> None:
    """The second layer reads exactly the channels the first one keeps."""
    mask = torch.zeros(model[first].out_features)
    mask[out_keep] = 1
    model[first].set_masks(out_mask=mask)
    model[second].set_masks(in_mask=mask)


@pytest.mark.parametrize("kind", ["splora", "sppara", "splopa"])
def test_fused_network_equals_masked_adapted_network(kind):
    if kind == "splopa":
        model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 4))
        x = torch.randn(5, 8)
        inject_adapters(model, AdapterConfig(kind=kind, block_size=2, num_prototypes=2))
        model[0].set_block_mask(torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0]] * 2))
        _mask_pair(model, 0, 2, [0, 1, 5])
    else:
        model = cnn()[:4] if kind == "sppara" else mlp()[:4]
        x = torch.randn(2, 3, 6, 6) if kind == "sppara" else torch.randn(5, 6)
        inject_adapters(model, AdapterConfig(kind=kind, rank=2))
        _mask_pair(model, 0, 2, [0, 3, 5, 6])  # two channels in each of conv 2's groups
        model[2].set_masks(out_mask=[1, 0, 1, 0, 0, 1, 1, 0])
        model[0].set_masks(in_mask=torch.tensor([1, 0, 1, 1, 1, 1][: model[0].in_features]))
    train_a_little(model, x)
    in_keep = model[0].keep()[0]
    out_keep = model[2].keep()[1]
    with torch.no_grad():
        masked = model(x)[:, out_keep]
        fuse_adapters(model)
        assert not any(isinstance(m, SPAdapterLayer) for m in model.modules())
        torch.testing.assert_close(model(x[:, in_keep]), masked, **TOL)


def test_adapter_state_switches_tasks_on_one_base():
    base = mlp()
    x = torch.randn(4, 6)
    task_a, task_b = copy.deepcopy(base), copy.deepcopy(base)
    config = AdapterConfig(rank=2)
    inject_adapters(task_a, config, trainable=["4"])
    inject_adapters(task_b, config, trainable=["4"])
    task_a[0].set_masks(out_mask=[1, 1, 0, 1, 1, 0, 1, 1])
    train_a_little(task_a, x)
    state = adapter_state(task_a)
    assert all(key.split(".")[0] in ("0", "2") for key in state)
    assert state["0.out_mask"].dtype == torch.uint8
    load_adapter_state(task_b, state)
    task_b[4].load_state_dict(task_a[4].state_dict())  # the head travels separately
    with torch.no_grad():
        torch.testing.assert_close(task_b(x), task_a(x), atol=1e-6, rtol=0)
        merge_adapters(task_b)
        torch.testing.assert_close(task_b(x), task_a(x), **TOL)
        unmerge_adapters(task_b)
    torch.testing.assert_close(task_b[0].base_layer.weight, base[0].weight, atol=1e-6, rtol=0)
    with pytest.raises(SpruceError, match="nothing for 2"):
        load_adapter_state(task_b, {k: v for k, v in state.items() if k.startswith("0.")})
    with pytest.raises(SpruceError, match="matches no module"):
        load_adapter_state(task_b, {**state, "9.bias": state["0.bias"]})


def test_inject_refuses_layers_with_a_forward_of_their_own():
    class PaddingConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

    model = nn.Sequential(PaddingConv(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(SpruceError, match="forward of its own"):
        inject_adapters(model, AdapterConfig(kind="splora", rank=2))
    layers = inject_adapters(
        model, AdapterConfig(kind="splora", rank=2), handled_subclasses=(PaddingConv,)
    )
    assert set(layers) == {"0", "2"}
