"""Training: the shared loop, its settings, evaluation and seeding."""

from spruce.train.config import TrainConfig
from spruce.train.evaluation import evaluate, predict
from spruce.train.loop import Trainer, TrainResult, classification_loss
from spruce.train.seeding import seed_everything

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "classification_loss",
    "evaluate",
    "predict",
    "seed_everything",
]
