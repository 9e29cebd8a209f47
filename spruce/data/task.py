"""Everything a run needs to know about its classification task, in canonical form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from spruce.config import POSITIVE, REQUIRED, check_settings, comma_names, in_memory, setting
from spruce.data.columns import ColumnSpec, infer_label_names, resolve_columns, to_canonical
from spruce.data.memory import IN_MEMORY_TASK_NAME, is_in_memory
from spruce.data.readers import read_table
from spruce.data.sampling import stratified_sample
from spruce.data.unlabelled import TextColumnsError, read_texts_like, texts_like
from spruce.errors import SpruceError


@dataclass(frozen=True)
class TaskDataConfig:
    """Where a task's data lives and how much of the labelled training data a run may use."""

    train: str = setting(
        REQUIRED,
        "training data: .csv, .tsv, .jsonl, a save_to_disk directory, or a hub dataset "
        "NAME[:CONFIG]",
    )
    validation: str | None = setting(None, "validation data (early stopping, model selection)")
    test: str | None = setting(None, "test data, evaluated once with the best model")
    text_columns: tuple[str, ...] | None = setting(
        None,
        "text column, or two for sentence pairs (default: detected)",
        metavar="A[,B]",
        parse=comma_names,
    )
    label_column: str | None = setting(None, "label column (default: detected)", metavar="NAME")
    label_names: tuple[str, ...] | None = setting(
        None, "label order (their ids); default: sorted", metavar="L1,L2,...", parse=comma_names
    )
    max_train_samples: int | None = setting(
        None,
        "use N labelled training examples, stratified, chosen by --seed",
        bounds=POSITIVE,
        metavar="N",
        exclusive="sample",
    )
    shots_per_class: int | None = setting(
        None,
        "use K labelled training examples per class, chosen by --seed",
        bounds=POSITIVE,
        metavar="K",
        exclusive="sample",
    )
    max_eval_samples: int | None = setting(
        None,
        "evaluate on a stratified subset of N validation examples",
        bounds=POSITIVE,
        metavar="N",
    )
    max_test_samples: int | None = setting(
        None, "evaluate on a stratified subset of N test examples", bounds=POSITIVE, metavar="N"
    )
    seed: int = 0  # the run's --seed (TrainConfig), not an option of its own
    name: str | None = setting(
        None, "name used in reports (default: from the file path)", flag="--task-name"
    )
    # Added to the unlabelled rest of ``train``; an option of the commands that read it.
    unlabelled: str | None = setting(
        None,
        "unlabelled in-domain text for distillation (and --aux mlm): .txt, one document per "
        "line, or a data file with the task's text column(s); added to the rows of --train "
        "that --max-train-samples leaves unlabelled",
        metavar="FILE",
    )
    # Splits a Python caller gave as rows (spruce.api), by name (train, validation, test,
    # unlabelled), read instead of the split's path, which then holds their marker.
    tables: Mapping[str, datasets.Dataset] | None = in_memory("in-memory splits")

    def __post_init__(self) -> None:
        check_settings(self)

    def read(self, split: str) -> datasets.Dataset:
        """The raw table of ``split`` (train, validation or test): the one held in memory,
        else the file (or hub dataset) its setting names."""
        held = (self.tables or {}).get(split)
        if held is not None:
            return held
        source = getattr(self, split)
        if is_in_memory(source):
            raise SpruceError(
                f"the {split} data {source} was given in memory to a Python call, and a rerun "
                "cannot read it again",
                f"give the {split} data again (a file, or the rows in Python)",
            )
        return read_table(source, split=split)


@dataclass
class TaskData:
    """Canonical splits (``text_a``, optional ``text_b``, ``label``) and the unlabelled rest.

    ``unlabelled`` keeps the text (without labels) of the training rows the limited-data
    sample did not take, for auxiliary objectives such as MLM.
    """

    name: str
    columns: ColumnSpec
    label_names: list[str]
    train: datasets.Dataset
    validation: datasets.Dataset | None = None
    test: datasets.Dataset | None = None
    unlabelled: datasets.Dataset | None = None
    source_train_examples: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def is_pair(self) -> bool:
        return self.columns.is_pair

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def task_name_from_path(path: str) -> str:
    """``../shared/data/sst2/train.tsv`` -> ``sst2``; ``emails.jsonl`` -> ``emails``."""
    p = Path(path)
    if p.suffix and p.stem.lower() in ("train", "training", "data") and p.parent.name:
        return p.parent.resolve().name
    return p.stem if p.suffix else p.name.replace("/", "_")


def load_task(config: TaskDataConfig) -> TaskData:
    """Read, check and sample the task's splits."""
    raw_train = config.read("train")
    columns = resolve_columns(raw_train, config.text_columns, config.label_column, config.train)
    label_names = _label_names(config, raw_train, columns)
    if len(label_names) < 2:
        raise SpruceError(
            f"{config.train} has a single class ('{label_names[0]}') in column "
            f"'{columns.label_column}'",
            "classification needs at least two classes: check --label-column and the file",
        )
    full_train = to_canonical(raw_train, columns, label_names, config.train)
    chosen, rest = stratified_sample(
        full_train["label"],
        max_samples=config.max_train_samples,
        shots_per_class=config.shots_per_class,
        seed=config.seed,
        label_names=label_names,
    )
    train = full_train.select(chosen)
    if len(set(train["label"])) < 2:
        raise SpruceError(
            "the sampled training set holds a single class",
            "raise --max-train-samples or use --shots-per-class",
        )
    unlabelled = full_train.select(rest).remove_columns("label") if rest else None
    extra = {"unlabelled_from_train": len(rest), "unlabelled_from_file": 0}
    if config.unlabelled:
        held = (config.tables or {}).get("unlabelled")
        texts = read_unlabelled(config.unlabelled, columns, held)
        extra["unlabelled_from_file"] = len(texts)
        unlabelled = (
            texts if unlabelled is None else datasets.concatenate_datasets([unlabelled, texts])
        )

    def load_eval(path: str | None, split: str, limit: int | None) -> datasets.Dataset | None:
        if path is None:
            return None
        raw = config.read(split)
        spec = resolve_columns(
            raw, config.text_columns or columns.text_columns, config.label_column, path
        )
        if spec.is_pair != columns.is_pair:
            raise SpruceError(
                f"{path} has text columns {', '.join(spec.text_columns)} but the training data "
                f"has {', '.join(columns.text_columns)}",
                "pass --text-columns so every split uses the same columns",
            )
        table = to_canonical(raw, spec, label_names, path)
        if limit is not None and limit < len(table):
            keep, _ = stratified_sample(table["label"], max_samples=limit, seed=config.seed)
            table = table.select(keep)
        return table

    return TaskData(
        name=config.name or _default_name(config.train),
        columns=columns,
        label_names=label_names,
        train=train,
        validation=load_eval(config.validation, "validation", config.max_eval_samples),
        test=load_eval(config.test, "test", config.max_test_samples),
        unlabelled=unlabelled,
        source_train_examples=len(full_train),
        extra=extra,
    )


def _default_name(train: str) -> str:
    return IN_MEMORY_TASK_NAME if is_in_memory(train) else task_name_from_path(train)


def read_unlabelled(
    path: str, columns: ColumnSpec, table: datasets.Dataset | None = None
) -> datasets.Dataset:
    """``--unlabelled PATH`` in the canonical form of a task read with ``columns``;
    ``table``: the text held in memory that ``path`` marks."""
    option = f"--unlabelled {path}"
    shape = " and ".join(columns.text_columns)
    if table is None and is_in_memory(path):
        raise SpruceError(
            f"the unlabelled data {path} was given in memory to a Python call, and a rerun "
            "cannot read it again",
            "give the unlabelled data again (a file, or the texts in Python)",
        )
    try:
        if table is not None:
            texts = texts_like(table, columns.text_columns, where=path, option=option)
        else:
            texts = read_texts_like(
                path, columns.text_columns, option=option, columns_option="--text-columns"
            )
    except TextColumnsError as error:
        raise SpruceError(
            f"{option} does not fit the task's text ({error.problem})",
            f"name its column(s) {shape} as in --train, or give a .txt file"
            + (" (single texts only)" if columns.is_pair else ""),
        ) from None
    except SpruceError as error:  # unreadable, missing or empty: name the option
        named = error.problem if option in error.problem else f"--unlabelled: {error.problem}"
        raise SpruceError(named, error.fix) from None
    texts = texts.map(lambda row: {k: v.strip() for k, v in row.items()})
    texts = texts.filter(lambda row: any(row.values()))
    if len(texts) == 0:
        raise SpruceError(f"{option} holds no text", "give at least one non-empty text")
    return texts


def _label_names(
    config: TaskDataConfig, raw_train: datasets.Dataset, columns: ColumnSpec
) -> list[str]:
    found = infer_label_names(raw_train[columns.label_column], config.train)
    if not config.label_names:
        return found
    given = list(config.label_names)
    missing = [name for name in found if name not in given]
    if missing:
        raise SpruceError(
            f"--label-names does not list the labels {', '.join(missing)} found in {config.train}",
            "list every label once, in the order you want their ids",
        )
    return given
