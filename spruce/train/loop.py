"""The training loop every phase uses: AdamW, linear warm-up/decay, periodic evaluation,
early stopping on the validation metric and the best weights kept.

Later phases (pruning with gates, auxiliary tasks, distillation) extend it by passing a
``loss_fn`` that adds their terms and ``callbacks`` that run after each step, rather than
by writing another loop.

With a ``checkpoint`` (``spruce.train.checkpoint``) the loop saves its whole state every
``checkpoint.every_steps`` steps and at the end, continues from a saved state when
``fit()`` starts, and turns SIGINT/SIGTERM into a save at the next step boundary followed
by :class:`~spruce.train.interrupt.Interrupted` (``spruce.train.resume`` has the state).

Under ``torchrun`` (``spruce.train.distributed``) the loss is computed through a
``DistributedDataParallel`` wrapper of the model, the gradients of every other optimizer's
parameters (gates, multipliers, a distiller) are averaged over the processes before they
step, evaluation runs on rank 0 and is broadcast, and only rank 0 checkpoints. A phase
whose loss runs parts of the model directly (auxiliary tasks) passes ``wrap_ddp=False``:
the model's gradients are then averaged with the others, in one all-reduce after backward.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from spruce.errors import SpruceError
from spruce.train.config import TrainConfig
from spruce.train.distributed import context, optimizer_parameters, owned_optimizers
from spruce.train.interrupt import Interrupted, StopSignals
from spruce.train.resume import (
    LoaderPosition,
    Stateful,
    TrainerCheckpoint,
    restore_trainer,
    trainer_state,
)
from spruce.train.rng import set_global_rng_state

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


@dataclass
class _Progress:
    """Where a phase stands between two steps: what ``fit()`` carries from step to step."""

    result: TrainResult = field(default_factory=TrainResult)
    step: int = 0
    best_value: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    evals_without_gain: int = 0
    last_metric: float | None = None
    running_loss: float | None = None


class Trainer:
    """Train ``model`` on ``train_loader`` and keep the weights that scored best.

    ``checkpoint`` (a :class:`~spruce.train.resume.TrainerCheckpoint`, e.g. from
    :meth:`spruce.train.checkpoint.Checkpointer.phase`) makes the phase resumable; its
    state then includes ``checkpoint_modules``, anything with ``state_dict()`` and
    ``load_state_dict()`` that learns or draws outside the model (gates, a distiller's
    projection, auxiliary heads and data streams), and callbacks that have those methods.
    For an exact resume ``train_loader`` must shuffle with its own ``generator``
    (:func:`~spruce.data.make_loader` does).

    Under several processes the model is wrapped in ``DistributedDataParallel``, unless
    ``wrap_ddp`` is False (see :meth:`_replicate`): then the model's gradients are averaged
    like those of the parameters outside it, after backward.

    ``optimizer`` (and ``scheduler``) replace the AdamW with linear warm-up/decay that a
    phase otherwise creates for itself. An optimizer given here outlives the phase (a CNN
    task carries AdamW's moments from phase to phase), so a finished phase's checkpoint
    keeps its state too.
    """

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
        checkpoint: TrainerCheckpoint | None = None,
        checkpoint_modules: Sequence[Stateful] = (),
        wrap_ddp: bool = True,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
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
        self.distributed = context()
        self.progress = progress and self.distributed.is_main
        self.wrap_ddp = wrap_ddp
        self._forward_model: Any = model  # what loss_fn calls (see _replicate)
        # Parameters whose gradients are averaged after backward (see _averaged_parameters).
        self._outside: list[torch.nn.Parameter] = []
        self.description = description
        self.checkpoint = checkpoint
        self.checkpoint_modules = list(checkpoint_modules)
        self.total_steps = config.total_steps(len(train_loader))
        self.optimizer_outlives_phase = optimizer is not None
        self.optimizer = optimizer or torch.optim.AdamW(
            self._parameter_groups(), lr=config.learning_rate
        )
        self.scheduler = scheduler or get_linear_schedule_with_warmup(
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
        """Train to the end of the phase (or continue a checkpointed one) and return what
        happened; a phase whose checkpoint says it finished returns its saved result."""
        self.model.to(self.device).train()
        saved = self.checkpoint.load() if self.checkpoint is not None else None
        if saved is not None and saved["finished"]:
            restore_trainer(self, saved)
            return TrainResult(**saved["result"])
        if self.checkpoint is None:
            return self._train(None, None)
        with StopSignals() as stop:
            return self._train(saved, stop)

    def _replicate(self) -> Any:
        """What the loss_fn calls: the model itself, or with several processes a view whose
        calls go through ``DistributedDataParallel`` (which averages the model's gradients
        during backward) and whose attributes are the model's. Rank 0's weights and the
        values of the other optimizers' parameters are given to every process first."""
        if not self.distributed.active:
            return self.model
        if not self.wrap_ddp:
            # DDP reduces a parameter's gradient from autograd hooks that its own forward
            # arms, once per forward. A loss that runs submodules directly (the auxiliary
            # tasks' encode() calls model.base_model; sequential coupling's first stage
            # never calls the model itself) would leave the encoder's gradients unreduced
            # or rely on hooks armed by another forward, and calling the wrapper once per
            # task before one backward is not supported. So the model is used as is and
            # _step averages all gradients in one all-reduce after backward: correct
            # whatever path the forward takes, at the price of not overlapping the
            # communication with backward. Rank 0's weights and buffers go to every
            # process first, as DDP's constructor would send them.
            self.distributed.broadcast_parameters(
                [
                    *self.model.parameters(),
                    *self.model.buffers(),
                    *self._synchronized_parameters(),
                ]
            )
            return self.model
        self.distributed.broadcast_parameters(self._synchronized_parameters())
        # A static graph: the same parameters take part in every step of a phase, and
        # those that never do (an unused pooler, say) are found on the first step instead
        # of by a search of the graph at each step (find_unused_parameters).
        ddp = DistributedDataParallel(self.model, static_graph=True)
        return _Replicated(ddp)

    def _synchronized_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters that learn outside the model: those of the extra optimizers and of
        the callbacks' optimizers (gates and Lagrange multipliers)."""
        optimizers = [*self.extra_optimizers]
        for callback in self.callbacks:
            optimizers.extend(owned_optimizers(callback))
        in_model = {id(p) for p in self.model.parameters()}
        return [p for p in optimizer_parameters(optimizers) if id(p) not in in_model]

    def _averaged_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters whose gradients _step averages over the processes: those outside the
        model, and without the DDP wrapper the model's trainable ones too."""
        outside = self._synchronized_parameters()
        if not self.distributed.active or self.wrap_ddp:
            return outside
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return [*trainable, *outside]

    def _train(self, saved: dict[str, Any] | None, stop: StopSignals | None) -> TrainResult:
        state = _Progress()
        position = None
        if saved is not None:
            restore_trainer(self, saved)
            state = _Progress(result=TrainResult(**saved["result"]), **saved["progress"])
            position = LoaderPosition(**saved["loader"])
        self._forward_model = self._replicate()
        self._outside = self._averaged_parameters()
        start = time.perf_counter() - state.result.wall_time_s
        bar = tqdm(
            total=self.total_steps,
            initial=state.step,
            desc=self.description,
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        try:
            while state.step < self.total_steps:
                # The epoch's order is drawn from the loader's generator when its iterator
                # starts: a resumed epoch restarts from that state and skips what was done.
                sampler = getattr(self.train_loader, "sampler", None)
                if isinstance(sampler, DistributedSampler):
                    # The shards' order is drawn from (seed, epoch).
                    sampler.set_epoch(state.step // len(self.train_loader))
                epoch = LoaderPosition.start(self.train_loader, position)
                batches = iter(self.train_loader)
                if position is not None:
                    epoch.skip(batches, position.batches)
                    assert saved is not None
                    set_global_rng_state(saved["rng"])
                    position = None
                for batch in batches:
                    epoch.batches += 1
                    self._step(batch, state, bar)
                    if state.result.stopped_early or state.step >= self.total_steps:
                        break
                    every = self.checkpoint.every_steps if self.checkpoint is not None else 0
                    requested = self._stop_requested(stop)
                    if (every and state.step % every == 0) or requested:
                        self._save(state, epoch, finished=False, start=start)
                    if requested:
                        raise self._interrupted(stop, state.step)
                if state.result.stopped_early:
                    break
        finally:
            bar.close()
            self._forward_model = self.model
        if state.best_state is not None:
            self.model.load_state_dict(state.best_state)
        state.result.steps = state.step
        state.result.wall_time_s = time.perf_counter() - start
        if self.checkpoint is not None:
            self._save(state, None, finished=True, start=start)
        if self._stop_requested(stop):
            assert stop is not None
            raise self._interrupted(stop, state.step)
        return state.result

    def _step(self, batch: dict[str, torch.Tensor], state: _Progress, bar: tqdm) -> None:
        """One optimisation step, its callbacks and, when due, an evaluation."""
        config, result = self.config, state.result
        batch = {k: v.to(self.device) for k, v in batch.items()}
        loss, stats = self.loss_fn(self._forward_model, batch)
        if not torch.isfinite(loss):
            # Raised before the step: no checkpoint ever holds the diverged weights.
            kept = (
                f" (the checkpoint in {self.checkpoint.directory} keeps the last save before "
                "it: --resume after fixing the data, --overwrite to start again)"
                if self.checkpoint is not None and hasattr(self.checkpoint, "directory")
                else ""
            )
            raise SpruceError(
                f"the training loss became {loss.item()} at step {state.step + 1}",
                f"lower --learning-rate or check the data{kept}",
            )
        loss.backward()
        self.distributed.average_gradients(self._outside)
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        for optimizer in self.extra_optimizers:
            optimizer.step()
        for optimizer in (self.optimizer, *self.extra_optimizers):
            optimizer.zero_grad(set_to_none=True)
        state.step += 1
        step, value = state.step, loss.item()
        result.losses.append((step, value))
        running = state.running_loss
        state.running_loss = value if running is None else 0.9 * running + 0.1 * value
        for callback in self.callbacks:
            callback(self, step, {"loss": value, **stats})
        epoch_end = step % len(self.train_loader) == 0
        due = (config.eval_steps and step % config.eval_steps == 0) or epoch_end
        if self.evaluate_fn and (due or step == self.total_steps):
            # Rank 0 evaluates; every process gets its metrics, so that best weights and
            # early stopping are decided alike everywhere.
            metrics = self.distributed.on_main(self.evaluate_fn)
            state.last_metric = metrics[config.metric]
            result.evaluations.append(
                {"step": step, "epoch": step / len(self.train_loader), **metrics}
            )
            if state.last_metric > state.best_value:
                state.best_value, state.evals_without_gain = state.last_metric, 0
                result.best_step, result.best_metrics = step, metrics
                if self.keep_best:
                    state.best_state = copy.deepcopy(
                        {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
                    )
            else:
                state.evals_without_gain += 1
        postfix = {"loss": f"{state.running_loss:.4f}"}
        if state.last_metric is not None:
            postfix[config.metric] = f"{state.last_metric:.4f}"
        postfix.update({k: f"{v:.3g}" for k, v in stats.items()})
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
        if config.patience and state.evals_without_gain >= config.patience:
            result.stopped_early = True

    def _save(
        self, state: _Progress, epoch: LoaderPosition | None, *, finished: bool, start: float
    ) -> None:
        assert self.checkpoint is not None
        state.result.wall_time_s = time.perf_counter() - start
        if not self.distributed.is_main:
            return
        progress = {k: v for k, v in vars(state).items() if k != "result"}
        self.checkpoint.save(
            trainer_state(self, asdict(state.result), progress, epoch, finished=finished)
        )

    def _stop_requested(self, stop: StopSignals | None) -> bool:
        """Whether any process was asked to stop. A signal often reaches one rank only (a
        scheduler, ``kill PID``); the flag is shared at each step so that every rank saves
        and leaves at the same step instead of the others hanging in the next collective."""
        if stop is None:
            return False
        if self.distributed.active:
            signal_number = self.distributed.max_over_ranks(stop.requested or 0)
            if signal_number and stop.requested is None:
                stop.requested = signal_number
        return stop.requested is not None

    def _interrupted(self, stop: StopSignals, step: int) -> Interrupted:
        assert self.checkpoint is not None and stop.requested is not None
        directory = getattr(self.checkpoint, "directory", "the checkpoint")
        return Interrupted(stop.requested, step, self.checkpoint.phase, directory)


class _Replicated:
    """The model seen through ``DistributedDataParallel``: calls run the wrapper, attribute
    reads (``config``, ``base_model``, ...) reach the model."""

    def __init__(self, ddp: DistributedDataParallel) -> None:
        self._ddp = ddp

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ddp.module, name)
