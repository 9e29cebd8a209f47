"""CNN support: image data, pre-trained CNNs and progressive channel pruning.

Data flows one way, as for the transformers: :func:`load_images` -> :func:`load_cnn` ->
a criterion of :data:`spruce.criteria.CRITERIA` (the same classes score transformer
units and channel groups) -> :func:`prune_cnn`, which uses torch-pruning's dependency
graph for the coupled channels and the physical removal.
:class:`CNNTaskBank` serves many adapted image tasks from one base CNN.
"""

from spruce.units.channel_groups import (
    apply_plan,
    build_graph,
    channel_groups,
    mask_channels,
    plan_pruning,
    prunable_parameter_count,
    replay_pruning,
)
from spruce.vision.bank import CNNTaskBank
from spruce.vision.data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, load_images
from spruce.vision.efficientnet_lite import EfficientNetLite, StageSpec
from spruce.vision.models import CNN_NAMES, classifier_of, input_normalization, load_cnn
from spruce.vision.pruner import CNNPruneResult, RoundReport, prune_cnn

__all__ = [
    "CNN_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CNNPruneResult",
    "CNNTaskBank",
    "EfficientNetLite",
    "ImageDataset",
    "RoundReport",
    "StageSpec",
    "apply_plan",
    "build_graph",
    "channel_groups",
    "classifier_of",
    "input_normalization",
    "load_cnn",
    "load_images",
    "mask_channels",
    "plan_pruning",
    "prunable_parameter_count",
    "prune_cnn",
    "replay_pruning",
]
