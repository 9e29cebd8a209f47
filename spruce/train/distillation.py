"""Knowledge distillation from a dense teacher (CoFi): prediction-layer KL plus
layer-wise hidden-state matching through a learned linear map.

``loss = task_weight * task + alpha * layer + (1 - alpha) * prediction`` where the
prediction term is the temperature-softened KL divergence and the layer term is the MSE
between each chosen teacher layer and its matched student layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spruce.config import NON_NEGATIVE, POSITIVE, Bounds, check_settings, setting


@dataclass
class DistillationConfig:
    """Weights of the distillation terms; ``alpha`` splits layer vs prediction loss."""

    temperature: float = setting(
        2.0,
        "softmax temperature of the prediction loss",
        flag="--distill-temperature",
        bounds=POSITIVE,
    )
    alpha: float = setting(
        0.5,
        "weight of the layer loss against the prediction loss",
        flag="--distill-alpha",
        bounds=Bounds(low=0, high=1),
    )
    task_weight: float = setting(
        1.0,
        "weight of the labelled cross-entropy beside the distillation losses",
        flag="--distill-task-weight",
        bounds=NON_NEGATIVE,
    )
    teacher_layers: tuple[int, ...] | None = None  # None: spread evenly (not an option)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> DistillationConfig:
        # An empty list means "the default layers" (to_dict writes it as None) either way.
        self.teacher_layers = tuple(self.teacher_layers) if self.teacher_layers else None
        check_settings(self)
        return self

    def to_dict(self) -> dict:
        values = asdict(self)
        values["teacher_layers"] = list(self.teacher_layers) if self.teacher_layers else None
        return values


def prediction_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, scaled by T^2 so that
    its gradient magnitude does not shrink as the temperature grows (Hinton et al.)."""
    student = F.log_softmax(student_logits / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


class LayerDistiller(nn.Module):
    """Match teacher layers to student layers through one learned linear map.

    Each chosen teacher layer is matched, in order, to the student layer after the previous
    match whose projected hidden state is closest (CoFi's dynamic layer matching): a pruned
    student may lose whole blocks, so a fixed one-to-one mapping would match layers that no
    longer do the same work.
    """

    def __init__(self, student_hidden: int, teacher_hidden: int, teacher_layers: Sequence[int]):
        super().__init__()
        self.projection = nn.Linear(student_hidden, teacher_hidden)
        # Identity start: a dense student begins with zero layer loss against its own teacher.
        with torch.no_grad():
            self.projection.weight.zero_()
            size = min(student_hidden, teacher_hidden)
            self.projection.weight[:size, :size] = torch.eye(size)
            self.projection.bias.zero_()
        self.teacher_layers = tuple(teacher_layers)

    def forward(
        self,
        student_states: Sequence[torch.Tensor],
        teacher_states: Sequence[torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """Mean MSE over matched pairs and the student layer chosen for each teacher layer.

        ``*_states`` are the per-layer outputs without the embedding output (index 0 is the
        first transformer layer).
        """
        weights = None
        if attention_mask is not None:
            weights = attention_mask.unsqueeze(-1).to(student_states[0].dtype)
        projected = [self.projection(state) for state in student_states]
        total, matches, start = student_states[0].new_zeros(()), [], 0
        for t in self.teacher_layers:
            target = teacher_states[t]
            candidates = range(start, len(projected))
            if not candidates:
                break
            errors = torch.stack([_mse(projected[s], target, weights) for s in candidates])
            best = int(errors.argmin())
            total = total + errors[best]
            matches.append(start + best)
            start = start + best + 1
        return total / max(1, len(matches)), matches


def _mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    squared = (a - b).pow(2)
    if weights is None:
        return squared.mean()
    return (squared * weights).sum() / (weights.sum() * a.shape[-1]).clamp_min(1)


def default_teacher_layers(num_layers: int) -> tuple[int, ...]:
    """Every other layer ending with the last, as CoFi does (e.g. 1, 3, 5 for 6 layers)."""
    return tuple(range(num_layers - 1, -1, -2))[::-1]


def distillation_loss_fn(teacher: nn.Module, distiller: LayerDistiller, config: DistillationConfig):
    """A ``Trainer`` loss function: task loss plus distillation from a frozen ``teacher``."""
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        outputs = model(**batch, output_hidden_states=True)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            teacher_outputs = teacher(**inputs, output_hidden_states=True)
        prediction = prediction_loss(outputs.logits, teacher_outputs.logits, config.temperature)
        layer, _ = distiller(
            outputs.hidden_states[1:],
            teacher_outputs.hidden_states[1:],
            batch.get("attention_mask"),
        )
        loss = (
            config.task_weight * outputs.loss
            + config.alpha * layer
            + (1 - config.alpha) * prediction
        )
        return loss, {
            "task": outputs.loss.item(),
            "kd_pred": prediction.item(),
            "kd_layer": layer.item(),
        }

    return loss_fn
