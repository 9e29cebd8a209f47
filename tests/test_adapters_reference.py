"""spruce's adapters against the reference library of the SPA paper (``sp_adapters``).

Same base weights, bias and adapter factors on both sides; outputs must agree. The
reference has no mask buffers: it prunes by removing channels (its torch-pruning hooks),
so a masked spruce layer is compared with a physically pruned reference layer, or with the
reference applied to ``x * in_mask`` and multiplied by ``out_mask``. Its initialization
differs (B small-uniform, not zero), which is why every factor is copied across.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

sp = pytest.importorskip("sp_adapters")

from sp_adapters import splora as sp_splora  # noqa: E402
from sp_adapters.torch_pruning import splora_linear_pruner  # noqa: E402

from spruce.adapters import SPLoPALayer, SPLoRALayer, SPPaRALayer  # noqa: E402

# The reference indexes the kernel centre with a list, which torch deprecates; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")

TOL = {"atol": 1e-5, "rtol": 0.0}
IN_MASK = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0.0])
OUT_MASK = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0.0])


def splora_pair() -> tuple[SPLoRALayer, nn.Module]:
    torch.manual_seed(0)
    base = nn.Linear(12, 8)
    ours = SPLoRALayer(copy.deepcopy(base), rank=3)
    reference = sp.SPLoRALinear.from_module(base, rank=3)
    with torch.no_grad():
        ours.lora_A.normal_()
        ours.lora_B.normal_()
        ours.bias.normal_()
        reference.adapter.rows.copy_(ours.lora_A)  # 1 x r x in: our A
        reference.adapter.cols.copy_(ours.lora_B)  # 1 x out x r: our B
        reference.bias.copy_(ours.bias)
    return ours, reference


@pytest.mark.parametrize("training", [True, False])  # the reference's two forward paths
def test_splora_linear_matches_reference(training):
    ours, reference = splora_pair()
    reference.train(training)
    x = torch.randn(5, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), **TOL)
        torch.testing.assert_close(ours.fused().weight, reference.to_module().weight, **TOL)


def test_masked_splora_linear_matches_pruned_reference():
    ours, reference = splora_pair()
    ours.set_masks(IN_MASK, OUT_MASK)
    in_keep, out_keep = ours.keep()

    # The reference's own count of per-task parameters under the same masks.
    counted = sum(
        p.numel()
        for p in sp_splora.parameters(
            reference, in_features_mask=in_keep, out_features_mask=out_keep
        )
    )
    assert ours.learned_parameters() == counted == 3 * (8 + 5) + 5

    splora_linear_pruner.prune_in_channels(reference, (~in_keep).nonzero().flatten().tolist())
    splora_linear_pruner.prune_out_channels(reference, (~out_keep).nonzero().flatten().tolist())
    reference.eval()
    x = torch.randn(5, 12)
    with torch.no_grad():
        expected = reference(x[:, in_keep])
        torch.testing.assert_close(ours(x)[:, out_keep], expected, **TOL)
        torch.testing.assert_close(ours.fused()(x[:, in_keep]), expected, **TOL)


def test_splora_conv_matches_reference():
    torch.manual_seed(0)
    base = nn.Conv2d(4, 6, 3, padding=1)
    ours = SPLoRALayer(copy.deepcopy(base), rank=2)
    reference = sp.SPLoRAConv2d.from_module(base, rank=2)
    with torch.no_grad():
        ours.lora_B.normal_()
        reference.adapter.rows.copy_(ours.lora_A)
        reference.adapter.cols.copy_(ours.lora_B)
    in_mask, out_mask = torch.tensor([1, 0, 1, 1.0]), torch.tensor([1, 1, 0, 1, 0, 1.0])
    ours.set_masks(in_mask, out_mask)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        expected = reference(x * in_mask.view(-1, 1, 1)) * out_mask.view(-1, 1, 1)
        torch.testing.assert_close(ours(x), expected, **TOL)


@pytest.mark.parametrize("groups", [1, 2])
def test_sppara_conv_matches_reference(groups):
    torch.manual_seed(0)
    base = nn.Conv2d(4, 6, 3, padding=1, groups=groups)
    ours = SPPaRALayer(copy.deepcopy(base))
    reference = sp.SPPaRAConv2d.from_module(base)
    with torch.no_grad():
        ours.para_weight.normal_()
        reference.adapter.copy_(ours.para_weight)  # out x in/groups, at the centre tap
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), **TOL)


def test_splopa_linear_matches_reference():
    torch.manual_seed(0)
    base = nn.Linear(12, 8)
    ours = SPLoPALayer(copy.deepcopy(base), block_size=(2, 4), num_prototypes=3, rank=2)
    reference = sp.SPLoPALinear.from_module(
        base, num_prototypes=3, block_shape=(2, 4), prototype_rank=2, shared_prototypes=False
    )
    blocks = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 0.0]])
    ours.set_block_mask(blocks)
    adapter = reference.adapter
    with torch.no_grad():
        ours.coefficients.normal_()
        adapter.prototypes.cols.copy_(ours.proto_U)  # K x bo x r
        adapter.prototypes.rows.copy_(ours.proto_V)  # K x r x bi
        # Reference: one weight per prototype and block; it has no block mask, so the
        # pruned blocks are zeroed in its base weight and block weights instead.
        adapter.pos_weights.copy_(ours.coefficients.permute(2, 0, 1) * blocks)
        dense = blocks.repeat_interleave(2, 0).repeat_interleave(4, 1)
        reference.weight.mul_(dense)
    x = torch.randn(5, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), **TOL)
