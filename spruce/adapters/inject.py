"""Put adapter layers into a model and take them out again.

:func:`inject_adapters` swaps matching ``nn.Linear`` / ``nn.Conv{1,2,3}d`` submodules for
adapter-wrapped ones in place and freezes everything else except the ``trainable``
modules (e.g. a classifier head), so an optimizer over ``requires_grad`` parameters
trains exactly the task's own numbers. :func:`adapter_state` collects every layer's task
state under its module name -- the per-task file -- and :func:`load_adapter_state` puts
one back into a model that has the same base and adapters, switching tasks without
reloading the base.

:func:`fuse_adapters` replaces every adapter layer by its compact plain layer. Channel
masks change layer shapes, so the masks of consecutive layers must agree (a layer's
``in_mask`` equal to the ``out_mask`` of the layer feeding it); keeping them coupled is the
pruning method's job, not this module's.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from spruce.adapters.base import ADAPTABLE, SPAdapterLayer
from spruce.adapters.config import AdapterConfig
from spruce.adapters.splopa import SPLoPALayer
from spruce.adapters.splora import SPLoRALayer
from spruce.adapters.sppara import SPPaRALayer
from spruce.errors import SpruceError

ADAPTER_LAYERS: dict[str, type[SPAdapterLayer]] = {
    "splora": SPLoRALayer,
    "sppara": SPPaRALayer,
    "splopa": SPLoPALayer,
}
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# What each kind adapts when target_modules is None (and accepts when it is named).
SUPPORTED = {"splora": ADAPTABLE, "sppara": CONVS, "splopa": (nn.Linear,)}


def make_adapter_layer(module: nn.Module, config: AdapterConfig) -> SPAdapterLayer:
    """Wrap one layer in the adapter ``config`` describes."""
    if config.kind == "splora":
        return SPLoRALayer(module, rank=config.rank, scaling=config.scaling)
    if config.kind == "sppara":
        return SPPaRALayer(module, scaling=config.scaling)
    return SPLoPALayer(
        module,
        block_size=config.block_size,
        num_prototypes=config.num_prototypes,
        rank=config.rank,
        scaling=config.scaling,
    )


def name_matches(name: str, pattern: str) -> bool:
    """Exact name, dotted suffix (``"query"`` matches ``"layer.0.query"``) or wildcard."""
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def _under(name: str, patterns: Iterable[str]) -> bool:
    """Whether module ``name`` or one of the modules containing it matches a pattern."""
    parts = name.split(".") if name else []
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(name_matches(prefix, p) for prefix in prefixes for p in patterns)


def find_adapters(model: nn.Module) -> dict[str, SPAdapterLayer]:
    """Every adapter layer of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SPAdapterLayer)}


def _no_match(what: str, pattern: str, names: Sequence[str]) -> SpruceError:
    close = difflib.get_close_matches(pattern, [*names, *(n.rsplit(".", 1)[-1] for n in names)])
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return SpruceError(f"{what} pattern '{pattern}' matches no module{hint}", f"modules: {shown}")


def _targets(model: nn.Module, config: AdapterConfig, trainable: list[str]) -> list[str]:
    layers = {n: m for n, m in model.named_modules() if n and isinstance(m, ADAPTABLE)}
    supported = SUPPORTED[config.kind]
    if config.target_modules is None:
        return [
            n for n, m in layers.items() if isinstance(m, supported) and not _under(n, trainable)
        ]
    targets = []
    for pattern in config.target_modules:
        matched = [n for n in layers if name_matches(n, pattern)]
        if not matched:
            raise _no_match("target_modules", pattern, list(layers))
        targets += [n for n in matched if n not in targets]
    for name in targets:
        if not isinstance(layers[name], supported):
            other = "splora" if isinstance(layers[name], nn.Linear) else "splora or sppara"
            raise SpruceError(
                f"'{name}' is a {type(layers[name]).__name__}, which {config.kind} cannot adapt",
                f"use kind {other} for it, or leave it out of target_modules",
            )
        if _under(name, trainable):
            raise SpruceError(
                f"'{name}' is both adapted (target_modules) and fully trained (trainable)",
                "name it in only one of the two",
            )
    return targets


def inject_adapters(
    model: nn.Module,
    config: AdapterConfig,
    trainable: Sequence[str] | None = None,
    handled_subclasses: tuple[type, ...] = (),
) -> dict[str, SPAdapterLayer]:
    """Wrap the layers ``config`` targets in adapters, in place; freeze all the rest.

    Trainable afterwards: each adapter's own parameters (factors, per-task bias) and the
    parameters of modules matching ``config.trainable`` or ``trainable`` (those modules
    are not adapted). Returns the new adapter layers by module name.

    A target whose class overrides ``forward`` (e.g. a convolution that pads its input
    itself) is refused: the adapter computes the layer from its weight and would skip that
    code. ``handled_subclasses`` names such classes whose extra work the caller restores
    (:func:`spruce.spa.cnn_model.adapt_cnn` re-adds EfficientNet's "SAME" padding).
    """
    config.validate()
    if isinstance(model, (*ADAPTABLE, SPAdapterLayer)):
        raise SpruceError(
            "inject_adapters replaces submodules, but the model is itself a single layer",
            "wrap it in a container (e.g. nn.Sequential) or build the layer class directly",
        )
    if find_adapters(model):
        raise SpruceError("the model already has adapters", "inject into a fresh base model")
    patterns = [*(config.trainable or []), *(trainable or [])]
    module_names = [n for n, _ in model.named_modules() if n]
    for pattern in patterns:
        if not any(name_matches(n, pattern) for n in module_names):
            raise _no_match("trainable", pattern, module_names)
    targets = _targets(model, config, patterns)
    if not targets:
        raise SpruceError(
            f"the model has no layer that {config.kind} can adapt",
            "check target_modules and the kind (splopa: Linear, sppara: convolutions)",
        )
    for name in targets:
        module = model.get_submodule(name)
        plain = next(base for base in ADAPTABLE if isinstance(module, base))
        if type(module).forward is not plain.forward and not isinstance(module, handled_subclasses):
            raise SpruceError(
                f"{name} is a {type(module).__name__} with a forward of its own, which an "
                "adapter would bypass",
                f"adapt plain {plain.__name__} layers, or exclude it with target_modules",
            )
    layers = {}
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        try:
            layer = make_adapter_layer(model.get_submodule(name), config)
        except SpruceError as error:
            raise SpruceError(f"{name}: {error.problem}", error.fix) from None
        setattr(model.get_submodule(parent_name), child, layer)
        layers[name] = layer
    own = {id(p) for layer in layers.values() for p in layer.parameters(recurse=False)}
    for name, parameter in model.named_parameters():
        module_name = name.rpartition(".")[0]
        parameter.requires_grad_(id(parameter) in own or _under(module_name, patterns))
    return layers


def merge_adapters(model: nn.Module) -> None:
    """Fold every adapter's delta into its base weight (inference without overhead)."""
    for layer in find_adapters(model).values():
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    """Undo :func:`merge_adapters`."""
    for layer in find_adapters(model).values():
        layer.unmerge()


def fuse_adapters(model: nn.Module) -> nn.Module:
    """Replace every adapter layer by its compact plain layer, in place; returns ``model``."""
    for name, layer in find_adapters(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.fused())
    return model


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """Every adapter layer's task state, keys prefixed with the layer's module name."""
    return {
        f"{name}.{key}": value
        for name, layer in find_adapters(model).items()
        for key, value in layer.task_state().items()
    }


def load_adapter_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Inverse of :func:`adapter_state` on a model with the same base and adapters."""
    layers = find_adapters(model)
    per_layer: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        name, _, leaf = key.rpartition(".")
        if name not in layers:
            raise _no_match("adapter state", name, list(layers))
        per_layer.setdefault(name, {})[leaf] = value
    missing = [name for name in layers if name not in per_layer]
    if missing:
        raise SpruceError(
            f"the adapter state has nothing for {', '.join(missing)}",
            "load a state saved from a model with the same adapters",
        )
    for name, layer in layers.items():
        layer.load_task_state(per_layer[name])
