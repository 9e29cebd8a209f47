"""Forward passes without gradients: logits, predictions and metrics over a loader."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from spruce.report.metrics import compute_metrics


@torch.no_grad()
def predict(
    model: PreTrainedModel, loader: DataLoader, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated logits and labels of every batch (labels empty if the data has none)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        target = batch.pop("labels", None)
        logits.append(model(**batch).logits.float().cpu())
        if target is not None:
            labels.append(target.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)


def evaluate(
    model: PreTrainedModel, loader: DataLoader, device: torch.device | str = "cpu"
) -> dict[str, float]:
    logits, labels = predict(model, loader, device)
    return compute_metrics(labels.tolist(), logits.argmax(-1).tolist())
