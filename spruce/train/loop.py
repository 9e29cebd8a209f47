"""The training loop every phase uses: AdamW, linear warm-up/decay, periodic evaluation,
early stopping on the validation metric and the best weights kept.

Later phases (pruning with gates, auxiliary tasks, distillation) extend it by passing a
``loss_fn`` that adds their terms and ``callbacks`` that run after each step, rather than
by writing another loop.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from spruce.errors import SpruceError
from spruce.train.config import TrainConfig

LossFn = Callable[[PreTrainedModel, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


class StepCallback(Protocol):
    def __call__(self, trainer: Trainer, step: int, stats: dict[str, float]) -> None: ...


def classification_loss(
    model: PreTrainedModel, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy from the model's own head (``labels`` in the batch)."""
    loss = model(**batch).loss
    return loss, {}


@dataclass
class TrainResult:
    """What happened: losses per step, evaluations, where the best model was."""

    steps: int = 0
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    losses: list[tuple[int, float]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    wall_time_s: float = 0.0


class Trainer:
    """Train ``model`` on ``train_loader`` and keep the weights that scored best."""

    def __init__(
        self,
        model: PreTrainedModel,
        train_loader: DataLoader,
        config: TrainConfig,
        *,
        evaluate: Callable[[], dict[str, float]] | None = None,
        loss_fn: LossFn = classification_loss,
        callbacks: Sequence[StepCallback] = (),
        extra_optimizers: Sequence[torch.optim.Optimizer] = (),
        keep_best: bool = True,
        device: torch.device | str = "cpu",
        progress: bool = True,
        description: str = "finetune",
    ) -> None:
        self.model = model
        self.train_loader = train_loader
        self.config = config
        self.evaluate_fn = evaluate
        self.loss_fn = loss_fn
        self.callbacks = list(callbacks)
        # Gates and Lagrange multipliers have optimizers of their own (the multipliers
        # ascend); they step in lock-step with the weights.
        self.extra_optimizers = list(extra_optimizers)
        # While a pruning phase changes the structure, an early checkpoint is not "best".
        self.keep_best = keep_best
        self.device = torch.device(device)
        self.progress = progress
        self.description = description
        steps_per_epoch = len(train_loader)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
        self.optimizer = torch.optim.AdamW(self._parameter_groups(), lr=config.learning_rate)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(config.warmup_ratio * self.total_steps), self.total_steps
        )

    def _parameter_groups(self) -> list[dict[str, Any]]:
        # Biases and LayerNorm weights are not decayed (standard BERT fine-tuning practice).
        decay, no_decay = [], []
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            is_norm_or_bias = parameter.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
            (no_decay if is_norm_or_bias else decay).append(parameter)
        return [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def fit(self) -> TrainResult:
        config, result = self.config, TrainResult()
        start = time.perf_counter()
        self.model.to(self.device).train()
        best_value, best_state, evals_without_gain = -math.inf, None, 0
        last_metric = None
        bar = tqdm(
            total=self.total_steps,
            desc=self.description,
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        running_loss = None
        step = 0
        while step < self.total_steps:
            for batch in self.train_loader:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                loss, stats = self.loss_fn(self.model, batch)
                if not torch.isfinite(loss):
                    bar.close()
                    raise SpruceError(
                        f"the training loss became {loss.item()} at step {step + 1}",
                        "lower --learning-rate or check the data",
                    )
                loss.backward()
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                for optimizer in self.extra_optimizers:
                    optimizer.step()
                for optimizer in (self.optimizer, *self.extra_optimizers):
                    optimizer.zero_grad(set_to_none=True)
                step += 1
                value = loss.item()
                result.losses.append((step, value))
                running_loss = value if running_loss is None else 0.9 * running_loss + 0.1 * value
                for callback in self.callbacks:
                    callback(self, step, {"loss": value, **stats})
                epoch_end = step % len(self.train_loader) == 0
                due = (config.eval_steps and step % config.eval_steps == 0) or epoch_end
                if self.evaluate_fn and (due or step == self.total_steps):
                    metrics = self.evaluate_fn()
                    last_metric = metrics[config.metric]
                    result.evaluations.append(
                        {"step": step, "epoch": step / len(self.train_loader), **metrics}
                    )
                    if last_metric > best_value:
                        best_value, evals_without_gain = last_metric, 0
                        result.best_step, result.best_metrics = step, metrics
                        if self.keep_best:
                            best_state = copy.deepcopy(
                                {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
                            )
                    else:
                        evals_without_gain += 1
                postfix = {"loss": f"{running_loss:.4f}"}
                if last_metric is not None:
                    postfix[config.metric] = f"{last_metric:.4f}"
                postfix.update({k: f"{v:.3g}" for k, v in stats.items()})
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                if config.patience and evals_without_gain >= config.patience:
                    result.stopped_early = True
                    break
                if step >= self.total_steps:
                    break
            if result.stopped_early:
                break
        bar.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        result.steps = step
        result.wall_time_s = time.perf_counter() - start
        return result
