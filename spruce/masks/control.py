"""Sparsity control: hold the gates' expected sparsity on a target ramped over a warm-up.

Two controls (``--sparsity-control``):

``exact`` (the default) meets the expected size *by construction*. Before each step,
a common shift ``b`` of every log_alpha of a gate set is solved for (bisection: the
expected sparsity falls monotonically in ``b``) so that the expected sparsity equals the
step's target. The shift enters the step with its implicit gradient,
``d b / d log_alpha_i = -(d s / d log_alpha_i) / (d s / d b)``, which removes from the
gates' gradient its common part (a move of every log_alpha alike, which the next solve
would undo): what reaches the gates only ranks units against each other, so they
compete for the budget instead of all drifting with the task's wish to keep everything
(Adam would turn such a drift into equal steps for all). There are no multipliers to
tune, and the size cannot lag the schedule.

``lagrangian`` (CoFi): ``penalty = lambda1 * (s - t) + lambda2 * (s - t) ** 2`` is added
to the task loss; the gates *minimize* it, the multipliers *maximize* it (a second
optimizer with ``maximize=True``), so the pressure grows until ``s`` sits on ``t``.
Why it misses in short runs (docs/results.md, "Sparsity that tracks its schedule"):
Adam moves each log_alpha by about ``lr_gates`` per step whatever the pull, so
the gates cannot follow a ramp steeper than that; lambda1 integrates the error from 0,
so the pull builds up late and then overshoots (an integral-only controller); and its
balance with the task loss depends on the task loss's scale.

The target ramps from ``start_sparsity`` to ``target_sparsity`` over ``warmup_steps``,
linearly (CoFi) or cubically (movement pruning: fast first, gentle near the target).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spruce.masks.accounting import expected_sparsity
from spruce.masks.gates import EncoderGates

DEFAULT_LR_GATES = 0.1
DEFAULT_LR_LAMBDA = 0.1
CONTROLS = ("exact", "lagrangian")
RAMPS = ("linear", "cubic")
# The shift is searched in [-SHIFT_RANGE, SHIFT_RANGE]: at +-40 every keep probability is
# 1 or 0 to float precision, so a target outside that range is unreachable anyway.
SHIFT_RANGE = 40.0
BISECTION_STEPS = 48  # 80 / 2**48: far below a float32 log_alpha's resolution


class SparsityController(nn.Module):
    """The target schedule and its control: the exact shift, or learned multipliers
    lambda1, lambda2 (init 0)."""

    def __init__(
        self,
        target_sparsity: float,
        *,
        warmup_steps: int = 0,
        start_sparsity: float = 0.0,
        control: str = "exact",
        ramp: str = "linear",
    ) -> None:
        super().__init__()
        if not 0.0 <= target_sparsity < 1.0 or not 0.0 <= start_sparsity < 1.0:
            raise ValueError("sparsities must lie in [0, 1)")
        if control not in CONTROLS or ramp not in RAMPS:
            raise ValueError(f"control must be one of {CONTROLS}, ramp one of {RAMPS}")
        self.control, self.ramp = control, ramp
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
        """The target after ``step`` steps: the ramp, then flat."""
        if self.warmup_steps <= 0:
            return self.target_sparsity
        fraction = min(1.0, max(0, step) / self.warmup_steps)
        if self.ramp == "cubic":
            fraction = 1.0 - (1.0 - fraction) ** 3
        return self.start_sparsity + (self.target_sparsity - self.start_sparsity) * fraction

    def place(self, gates: EncoderGates, step: int | None = None) -> None:
        """Exact control: shift ``gates`` so that their expected sparsity is this step's
        target, with the shift's implicit gradient attached (see the module doc). Call
        it before the forward pass that samples the gates; a no-op for ``lagrangian``."""
        if self.control != "exact":
            return
        step = int(self.num_steps) if step is None else step
        target = self.target_at(step)
        shift = solve_shift(gates, target)
        gates.set_shift(shift)
        expected = expected_sparsity(gates)  # a graph in the log_alphas, at the shift
        parameters = [p for p in gates.parameters() if p.requires_grad]
        slope = 0.0
        if torch.is_grad_enabled() and parameters and expected.requires_grad:
            grads = torch.autograd.grad(expected, parameters, retain_graph=True)
            slope = float(sum(g.sum() for g in grads))  # d expected / d shift (< 0)
        if slope < 0.0:
            gates.set_offset((expected - expected.detach()) / -slope)
        self._last = {
            "expected_sparsity": float(expected.detach()),
            "target_sparsity": target,
            "shift": shift,
        }

    def penalty(self, expected: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """The Lagrangian term for expected sparsity ``expected`` (differentiable in both
        the gates and the lambdas); 0 under exact control, which :meth:`place` holds."""
        if self.control == "exact":
            return torch.zeros((), device=expected.device)
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
        """Values of the last :meth:`place` or :meth:`penalty` call, for a progress bar
        or log: expected and target sparsity, and the shift or the multipliers."""
        return dict(self._last)

    def advance(self, steps: int = 1) -> None:
        self.num_steps += steps


def solve_shift(gates: EncoderGates, target: float) -> float:
    """The common log_alpha shift at which ``gates`` expect ``target`` sparsity (bisection;
    clamped to +-``SHIFT_RANGE`` when the target is out of reach)."""
    low, high = -SHIFT_RANGE, SHIFT_RANGE  # sparsity(low) ~ 1 >= target >= sparsity(high)
    with torch.no_grad():
        for _ in range(BISECTION_STEPS):
            middle = 0.5 * (low + high)
            gates.set_shift(middle)
            if float(expected_sparsity(gates)) > target:
                low = middle  # too sparse: shift up, keep more
            else:
                high = middle
    return 0.5 * (low + high)


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
