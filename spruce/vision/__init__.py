"""Image data and CNN definitions: what the rest of spruce needs to know of images.

:func:`load_images` reads class folders and ``.npz`` arrays; :func:`load_cnn` builds a
pre-trained CNN (EfficientNet-Lite0 matching the shipped weights, ResNets) with a fresh
classifier. Pruning a CNN is :func:`spruce.pruning.cnn.prune_cnn` (the same criteria as
transformer units, over torch-pruning's channel groups in :mod:`spruce.units`); adapting
one is ``spruce adapt`` / :func:`spruce.adapt` on image data
(:mod:`spruce.pipelines.adapt_image`); many adapted image tasks on one base CNN are a
:class:`spruce.spa.cnn_bank.CNNTaskBank`.
"""

from spruce.vision.data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, load_images
from spruce.vision.efficientnet_lite import EfficientNetLite, StageSpec
from spruce.vision.models import CNN_NAMES, classifier_of, input_normalization, load_cnn

__all__ = [
    "CNN_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EfficientNetLite",
    "ImageDataset",
    "StageSpec",
    "classifier_of",
    "input_normalization",
    "load_cnn",
    "load_images",
]
