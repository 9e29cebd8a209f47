"""Models: loading encoders and describing where their prunable parts live."""

from spruce.models.loading import (
    DEFAULT_MODEL,
    TASK_METADATA_KEY,
    load_classifier,
    load_saved_classifier,
    resolve_model_source,
    task_classifier_dir,
)
from spruce.models.structure import (
    ArchitectureDescription,
    EncoderShape,
    LayerLayout,
    LayerModules,
    describe,
    encoder_parameters,
    encoder_shape,
    layer_modules,
    register_description,
)

__all__ = [
    "DEFAULT_MODEL",
    "TASK_METADATA_KEY",
    "ArchitectureDescription",
    "EncoderShape",
    "LayerLayout",
    "LayerModules",
    "describe",
    "encoder_parameters",
    "encoder_shape",
    "layer_modules",
    "load_classifier",
    "load_saved_classifier",
    "register_description",
    "resolve_model_source",
    "task_classifier_dir",
]
