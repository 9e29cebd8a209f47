"""The pruning phase of each method: learn or choose masks on a model that keeps its
full size (the masks act through hooks); compaction happens afterwards.

``l0``: hard-concrete gates and weights learn together under a Lagrangian that lands the
expected sparsity on a target ramped up over a warm-up (CoFi).
``magnitude`` / ``taylor``: score units with a criterion, remove the least important,
fine-tune with the masks applied, and repeat for ``prune_rounds`` rounds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from spruce.compact import apply_masks
from spruce.criteria import CRITERIA, accumulate_gradients
from spruce.masks import UnitMasks
from spruce.masks.gates import EncoderGates
from spruce.masks.lagrangian import SparsityController, SparsityStep, make_optimizers
from spruce.models.structure import encoder_shape
from spruce.pruning.config import PruneConfig
from spruce.pruning.selection import select_units
from spruce.train import TrainConfig, Trainer, TrainResult
from spruce.train.loop import LossFn

GRADIENT_BATCHES = 32  # enough batches for stable Taylor scores on a few thousand examples


@dataclass
class PhaseResult:
    masks: UnitMasks
    results: list[TrainResult]
    gates: EncoderGates | None = None


def phase_config(train: TrainConfig, epochs: float, max_steps: int | None) -> TrainConfig:
    """The run's optimisation settings with this phase's length; no early stopping while
    the structure is still changing."""
    return replace(train, epochs=max(epochs, 1e-9), max_steps=max_steps, patience=None)


def learn_l0_masks(
    model: PreTrainedModel,
    loader: DataLoader,
    train: TrainConfig,
    prune: PruneConfig,
    base_loss: LossFn,
    evaluate: Callable[[], dict[str, float]] | None,
    device: torch.device,
    progress: bool,
    extra_optimizers: Sequence[torch.optim.Optimizer] = (),
) -> PhaseResult:
    config = phase_config(train, prune.prune_epochs, prune.prune_max_steps)
    gates = EncoderGates(
        encoder_shape(model.config), prune.units, size_multiple=prune.size_multiple
    ).to(device)
    trainer_steps = config.max_steps or max(1, round(config.epochs * len(loader)))
    controller = SparsityController(
        prune.target_sparsity, warmup_steps=int(prune.sparsity_warmup * trainer_steps)
    ).to(device)
    gate_optimizer, lambda_optimizer = make_optimizers(
        gates, controller, prune.lr_gates, prune.lr_lambda
    )

    def loss_fn(model: PreTrainedModel, batch: dict[str, torch.Tensor]):
        loss, stats = base_loss(model, batch)
        penalty = controller.gate_penalty(gates)
        c = controller.stats()
        stats = {
            **stats,
            "sparsity": c["expected_sparsity"],
            "target": c["target_sparsity"],
            "lambda1": c["lambda1"],
            "lambda2": c["lambda2"],
        }
        return loss + penalty, stats

    def evaluate_with_structure() -> dict[str, float]:
        gates.eval()
        try:
            return evaluate() if evaluate else {}
        finally:
            gates.train()

    handle = apply_masks(model, gates)
    try:
        gates.train()
        trainer = Trainer(
            model,
            loader,
            config,
            loss_fn=loss_fn,
            callbacks=[SparsityStep(controller, gate_optimizer, lambda_optimizer)],
            extra_optimizers=extra_optimizers,
            evaluate=evaluate_with_structure if evaluate else None,
            keep_best=False,
            device=device,
            progress=progress,
            description="prune (l0)",
        )
        result = trainer.fit()
    finally:
        handle.remove()
    gates.eval()
    masks = gates.deterministic_masks(target_sparsity=prune.target_sparsity)
    return PhaseResult(masks=masks.detach(), results=[result], gates=gates)


def score_and_prune(
    model: PreTrainedModel,
    loader: DataLoader,
    train: TrainConfig,
    prune: PruneConfig,
    base_loss: LossFn,
    device: torch.device,
    progress: bool,
    extra_optimizers: Sequence[torch.optim.Optimizer] = (),
) -> PhaseResult:
    """Iterative structured pruning by ``prune.method``; one round is one-shot pruning
    (the final fine-tune of the compact model then recovers accuracy)."""
    criterion = CRITERIA["weight" if prune.method == "magnitude" else prune.method]()
    shape = encoder_shape(model.config)
    model.to(device)
    masks: UnitMasks | None = None
    results = []
    for round_index in range(1, prune.prune_rounds + 1):
        with apply_masks(model, masks) if masks is not None else contextlib.nullcontext():
            if criterion.needs_gradients:
                accumulate_gradients(
                    model,
                    loader,
                    device,
                    max_batches=GRADIENT_BATCHES,
                    loss_fn=lambda m, b: base_loss(m, b)[0],
                )
            scores = criterion(model)
            model.zero_grad(set_to_none=True)
        target = prune.target_sparsity * round_index / prune.prune_rounds
        masks = select_units(
            scores, shape, target, current=masks, size_multiple=prune.size_multiple
        )
        if round_index < prune.prune_rounds:
            config = phase_config(
                train,
                prune.prune_epochs / prune.prune_rounds,
                prune.prune_max_steps // prune.prune_rounds if prune.prune_max_steps else None,
            )
            with apply_masks(model, masks):
                trainer = Trainer(
                    model,
                    loader,
                    config,
                    loss_fn=base_loss,
                    extra_optimizers=extra_optimizers,
                    keep_best=False,
                    device=device,
                    progress=progress,
                    description=f"prune ({prune.method}) round {round_index}",
                )
                results.append(trainer.fit())
    assert masks is not None
    return PhaseResult(masks=masks, results=results)
