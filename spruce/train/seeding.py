"""Seeding and determinism: the same seed gives the same run on the same CPU."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: a few CUDA kernels have no deterministic version; CPU runs are exact.
    torch.use_deterministic_algorithms(True, warn_only=True)
