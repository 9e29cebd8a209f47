"""Hard-concrete gates (Louizos, Welling & Kingma 2018), the mask distribution CoFi learns.

A gate has one learnable ``log_alpha`` per unit. While training it is *sampled*: noise
``u ~ U(eps, 1 - eps)`` gives ``s = sigmoid((logit(u) + log_alpha) / beta)``, stretched
to ``(gamma, zeta)`` and clamped to ``[0, 1]``, so exact zeros and ones occur with
non-zero probability and the sample is still differentiable in ``log_alpha``. The
probability of a non-zero value has a closed form, which makes the expected model size
differentiable (see :mod:`spruce.masks.accounting`).

Once the structure is fixed the gate becomes *deterministic*: the ``num_keep`` units with
the largest ``log_alpha`` keep their test-time value, the rest are 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1
EPS = 1e-6

# Initial log_alpha mean. CoFi starts its layer, head and hidden gates at 10 (keep
# probability 1 - 4e-6), which saturates the sigmoid: the expected-size gradient is
# ~1e-5 and only Adam's normalisation gets the gates moving, after ~1000 steps at lr 0.01.
# Limited-data pruning runs are a few hundred to a few thousand steps, so we start at 3:
# keep probability sigmoid(3 + 1.6) = 0.99, deterministic value 1, ~80 % of samples
# exactly 1 -- the model starts (almost) dense -- but the gradient is ~1e-2 and gates can
# close within the run.
INIT_MEAN = 3.0
INIT_STD = 0.01

# A kept unit whose log_alpha is below beta * log(-gamma / zeta) (~ -1.6, i.e. keep
# probability < 0.5) has a clamped test-time value of exactly 0. That happens when a
# group's expected count is rounded up over many hesitant units; the unit is *counted* as
# kept, so it must not silently be a zero. Its value is floored here instead.
KEPT_VALUE_FLOOR = 0.05


def rank_descending(scores: torch.Tensor) -> torch.Tensor:
    """Indices that sort ``scores`` (last dim) from largest to smallest, ties by index.

    Every deterministic selection in spruce goes through this one ordering so that the
    units counted by the accounting are exactly the units the masks keep.
    """
    return torch.argsort(scores.detach(), dim=-1, descending=True, stable=True)


class HardConcreteGate(nn.Module):
    """A tensor of hard-concrete gates of any ``shape`` with learnable ``log_alpha``."""

    def __init__(
        self,
        shape: Sequence[int] | int,
        *,
        init_mean: float = INIT_MEAN,
        init_std: float = INIT_STD,
        beta: float = BETA,
        gamma: float = GAMMA,
        zeta: float = ZETA,
        eps: float = EPS,
    ) -> None:
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if not (gamma < 0.0 < 1.0 < zeta) or beta <= 0.0:
            raise ValueError("hard-concrete gates need beta > 0 and gamma < 0 < 1 < zeta")
        self.shape = shape
        self.beta, self.gamma, self.zeta, self.eps = beta, gamma, zeta, eps
        self.init_mean, self.init_std = init_mean, init_std
        self.log_alpha = nn.Parameter(torch.empty(shape))
        # A common offset of every log_alpha, set by the exact sparsity control
        # (spruce.masks.control) so that the expected size sits on its target; a
        # shift keeps the ranking of units, so the structure is still chosen by
        # log_alpha. ``_offset`` is this step's zero-valued term that carries the
        # implicit gradient of the shift (None outside a pruning step).
        self.register_buffer("shift", torch.zeros(()))
        self._offset: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.log_alpha.normal_(self.init_mean, self.init_std)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, beta={self.beta:.3g}, gamma={self.gamma}, zeta={self.zeta}"

    # -- distribution -------------------------------------------------------------------

    @property
    def _log_ratio(self) -> float:
        # log(-gamma / zeta): the logit of the stretched point that maps to 0.
        return math.log(-self.gamma / self.zeta)

    def effective_log_alpha(self) -> torch.Tensor:
        """``log_alpha`` plus the shift (and this step's offset): what the distribution uses."""
        shifted = self.log_alpha + self.shift
        return shifted if self._offset is None else shifted + self._offset

    def sample(self) -> torch.Tensor:
        """One draw of every gate (differentiable in ``log_alpha``), values in [0, 1]."""
        u = torch.empty_like(self.log_alpha).uniform_(self.eps, 1.0 - self.eps)
        logits = torch.log(u) - torch.log1p(-u) + self.effective_log_alpha()
        s = torch.sigmoid(logits / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def prob_nonzero(self) -> torch.Tensor:
        """P(z > 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)), differentiable."""
        return torch.sigmoid(self.effective_log_alpha() - self.beta * self._log_ratio)

    def deterministic_value(self) -> torch.Tensor:
        """The test-time gate value: the sample at median noise (u = 1/2), clamped.

        This is Louizos et al.'s test-time estimator of ``E[z]`` (no closed form exists
        for the mean itself): 1 for confident gates, smaller for hesitant ones, 0 below
        ``log_alpha = beta * log(-gamma / zeta)``. Detached: it fixes a structure.
        """
        s = torch.sigmoid(self.effective_log_alpha().detach() / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def expected_num_nonzero(self, per_row: bool = False) -> torch.Tensor:
        """Sum of ``prob_nonzero`` over the gate (or over the last dim, one per row)."""
        probs = self.prob_nonzero()
        return probs.sum(dim=-1) if per_row else probs.sum()

    # -- fixed structure ----------------------------------------------------------------

    def keep_mask(
        self, num_keep: int | Sequence[int] | torch.Tensor, *, per_row: bool = False
    ) -> torch.Tensor:
        """Boolean mask of the ``num_keep`` largest ``log_alpha`` (globally or per row).

        ``per_row`` (for 2-D gates such as heads [L, H]) keeps ``num_keep`` units in every
        row; ``num_keep`` may then also be one count per row.
        """
        log_alpha = self.log_alpha.detach()
        if not per_row:
            flat = log_alpha.reshape(-1)
            k = int(num_keep)
            if not 0 <= k <= flat.numel():
                raise ValueError(f"num_keep={k} outside [0, {flat.numel()}]")
            keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
            keep[rank_descending(flat)[:k]] = True
            return keep.reshape(log_alpha.shape)
        if log_alpha.ndim != 2:
            raise ValueError("per_row selection needs a 2-D gate")
        rows, width = log_alpha.shape
        counts = torch.as_tensor(num_keep, device=log_alpha.device).long().reshape(-1)
        counts = counts.expand(rows) if counts.numel() == 1 else counts
        if counts.numel() != rows or counts.min() < 0 or counts.max() > width:
            raise ValueError(f"per-row num_keep must be {rows} counts in [0, {width}]")
        position = torch.empty_like(log_alpha, dtype=torch.long)
        ranks = torch.arange(width, device=log_alpha.device).expand(rows, width)
        position.scatter_(1, rank_descending(log_alpha), ranks)  # rank of each unit
        return position < counts.unsqueeze(1)

    def deterministic(
        self, num_keep: int | Sequence[int] | torch.Tensor, *, per_row: bool = False
    ) -> torch.Tensor:
        """Fixed gate values: the kept units' test-time value (at least
        ``KEPT_VALUE_FLOOR``), 0 for the others."""
        keep = self.keep_mask(num_keep, per_row=per_row)
        value = self.deterministic_value().clamp(min=KEPT_VALUE_FLOOR)
        return torch.where(keep, value, torch.zeros_like(value))

    def forward(self) -> torch.Tensor:
        """A sample while training; in eval mode, the rounded expected number kept
        (globally; :class:`~spruce.masks.gates.EncoderGates` does the per-group choice)."""
        if self.training:
            return self.sample()
        return self.deterministic(round(self.expected_num_nonzero().item()))
