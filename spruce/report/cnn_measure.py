"""Cost of a CNN: CPU latency at a batch size and FLOPs of one image."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor, nn


@torch.no_grad()
def cnn_latency_ms(model: nn.Module, batch_size: int, image_size: int, repeats: int = 10) -> float:
    """Median wall-clock ms of one eval-mode forward pass (3 warm-up calls first)."""
    model.eval()
    images = torch.randn(batch_size, 3, image_size, image_size)
    for _ in range(3):
        model(images)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        model(images)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000.0, 4)


@torch.no_grad()
def cnn_flops(model: nn.Module, image_size: int) -> int:
    """FLOPs of one image (2 per multiply-accumulate, convolutions and linear layers only)."""
    macs = [0]

    def count(module: nn.Module, args: tuple, out: Tensor) -> None:
        per_output = module.weight[0].numel()  # in/groups * kernel, or in_features
        macs[0] += out[0].numel() * per_output

    layers = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]
    hooks = [m.register_forward_hook(count) for m in layers]
    try:
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
    return 2 * macs[0]
