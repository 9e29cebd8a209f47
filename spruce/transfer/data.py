"""Data streams of the auxiliary tasks: tokenized with the target model's tokenizer and
cycled without end, since an auxiliary task rarely has the target's number of batches.

Under several processes each process draws its own shard of every epoch, as the target's
training loader does, so N processes see N auxiliary batches per step (:class:`Stream`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from spruce.data import TaskData, TaskDataConfig, load_task, make_loader, read_table, tokenize_split
from spruce.data.columns import PAIR_COLUMNS, SINGLE_COLUMNS, resolve_columns
from spruce.errors import SpruceError
from spruce.train.rng import generator_state, set_generator_state
from spruce.transfer.config import AuxTask

TEXT_SUFFIXES = (".txt", ".text")


class Stream:
    """Endless batches from ``loader``: a new (seeded) epoch starts when one runs out.

    Its state (for checkpoints) is the position in the current epoch, the generator state
    that epoch's order was drawn from, and the collator's generator (MLM masking).

    A sharded stream (several processes: the loader's sampler is a
    :class:`DistributedSampler`) has no chained generators: each epoch's order comes from
    (seed, epoch), one permutation cut into disjoint per-rank shards, and the collator is
    reseeded from (seed, rank, epoch). Its position (epochs, batches) is then the same on
    every rank, so the state rank 0 saves, which every rank loads on resume, puts each
    rank back on its own batches: the epoch is replayed with this rank's seeds and the
    saved generator states (rank 0's) are not used.
    """

    def __init__(self, loader: DataLoader) -> None:
        if len(loader) == 0:
            raise SpruceError("an auxiliary task has no data", "check its file")
        self.loader = loader
        sampler = getattr(loader, "sampler", None)
        self._shard = sampler if isinstance(sampler, DistributedSampler) else None
        self._iterator: Iterator | None = None
        self._epoch_start: torch.Tensor | None = None
        self._batches = 0
        self.epochs = 0

    @property
    def shards(self) -> int:
        """Number of processes that split each epoch (1: not sharded)."""
        return 1 if self._shard is None else self._shard.num_replicas

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._iterator is None:
            self._start_epoch()
        assert self._iterator is not None
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epochs += 1
            self._start_epoch()
            batch = next(self._iterator)
        self._batches += 1
        return batch

    def __iter__(self) -> Stream:
        return self

    def _start_epoch(self) -> None:
        self._epoch_start = generator_state(self.loader.generator)
        if self._shard is not None:
            self._shard.set_epoch(self.epochs)
            _reseed_collator(self.loader, self._shard.seed, self._shard.rank, self.epochs)
        self._iterator = iter(self.loader)
        self._batches = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "started": self._iterator is not None,
            "epoch_start": self._epoch_start,
            "batches": self._batches,
            "generator": generator_state(self.loader.generator),
            "collator": generator_state(_collator_generator(self.loader)),
            "shards": self.shards,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rewind to the saved epoch's start and redraw its batches up to the saved one
        (the simple way to rebuild the loader's iterator exactly)."""
        shards = state.get("shards", 1)  # states saved before streams were sharded: 1
        if shards != self.shards:
            # Another split of the epochs puts the saved position on other examples.
            raise SpruceError(
                f"the checkpoint's auxiliary data was drawn by {shards} process(es), "
                f"this run has {self.shards}",
                "resume with as many processes as the interrupted run had",
            )
        self.epochs = state["epochs"]
        self._iterator = None
        if state["started"]:
            set_generator_state(self.loader.generator, state["epoch_start"])
            self._start_epoch()
            for _ in range(state["batches"]):
                next(self._iterator)
            self._batches = state["batches"]
        if self._shard is not None:
            return  # the replay drew this rank's masking; the saved collator is rank 0's
        set_generator_state(self.loader.generator, state["generator"])
        if state["collator"] is not None:  # None: padding only, or saved before it drew
            set_generator_state(_collator_generator(self.loader), state["collator"])


def _reseed_collator(loader: DataLoader, seed: int, rank: int, epoch: int) -> None:
    """Give a collator that draws (MLM masking) a generator seeded from (seed, rank, epoch):
    ranks mask differently, and an epoch's masks follow from its position alone."""
    collate = loader.collate_fn
    if not hasattr(collate, "generator"):
        return  # padding only: nothing random
    entropy = np.random.SeedSequence([seed, rank, epoch]).generate_state(1, dtype=np.uint64)
    collate.generator = torch.Generator().manual_seed(int(entropy[0]))


def _collator_generator(loader: DataLoader) -> torch.Generator | None:
    generator = getattr(loader.collate_fn, "generator", None)
    return generator if isinstance(generator, torch.Generator) else None


def mlm_texts(task: AuxTask, target: TaskData) -> datasets.Dataset:
    """Canonical ``text_a`` (and ``text_b``) rows for MLM: the file of ``task``, or the
    target's unlabelled rest (its labelled sample when every training row is labelled)."""
    if task.path is None:
        return _target_texts(target)
    path = Path(task.path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        return _read_lines(path)
    table = read_table(task.path, split="train")
    columns = list(task.text_columns) if task.text_columns else _text_columns(table, task.path)
    return _canonical_texts(table, columns, task.path)


def distill_texts(task: AuxTask, target: TaskData) -> datasets.Dataset:
    """Canonical text rows for the teacher to predict on, shaped as the target's (the
    classifier reads pairs only as pairs): the target's unlabelled rest (its labelled
    sample when every training row is labelled), or the file of ``task`` read with
    ``--aux-text-columns``, else the target's own text columns, else the usual detection.
    Labels, if the file has any, are dropped."""
    if task.path is None:
        return _target_texts(target)
    path, shape = Path(task.path), "sentence pairs" if target.is_pair else "single texts"
    if path.suffix.lower() in TEXT_SUFFIXES:
        if target.is_pair:
            raise SpruceError(
                f"--aux distill:{task.path} has one text per line, but the target task "
                "reads sentence pairs",
                "give a data file with two text columns (--aux-text-columns FIRST,SECOND)",
            )
        return _read_lines(path)
    table = read_table(task.path, split="train")
    if task.text_columns:
        columns = list(task.text_columns)
    elif all(c in table.column_names for c in target.columns.text_columns):
        columns = list(target.columns.text_columns)
    else:
        columns = _detected_text_columns(table, target.is_pair, task.path)
    if len(columns) != len(target.columns.text_columns):
        raise SpruceError(
            f"--aux distill:{task.path} gives {len(columns)} text column(s) "
            f"({', '.join(columns)}), the target task reads {shape}",
            f"pass --aux-text-columns with {'two' if target.is_pair else 'one'} of its columns",
        )
    return _canonical_texts(table, columns, task.path)


def _target_texts(target: TaskData) -> datasets.Dataset:
    texts = target.unlabelled if target.unlabelled is not None else target.train
    return texts.select_columns([c for c in ("text_a", "text_b") if c in texts.column_names])


def _canonical_texts(table: datasets.Dataset, columns: list[str], where: str) -> datasets.Dataset:
    """``columns`` of ``table`` as ``text_a`` (and ``text_b``), every value a string."""
    missing = [c for c in columns if c not in table.column_names]
    if missing or not 1 <= len(columns) <= 2:
        raise SpruceError(
            f"{where}: cannot use text columns {', '.join(columns)} "
            f"(columns are {', '.join(table.column_names)})",
            "pass --aux-text-columns with one or two of its columns",
        )
    renamed = {old: new for old, new in zip(columns, ("text_a", "text_b"), strict=False)}
    table = table.select_columns(columns).rename_columns(renamed)
    return table.map(lambda row: {k: "" if v is None else str(v) for k, v in row.items()})


def _text_columns(table: datasets.Dataset, where: str) -> list[str]:
    """The text columns of a labelled file as for a task, else the one string column."""
    try:
        return list(resolve_columns(table, None, None, where).text_columns)
    except SpruceError:
        strings = [
            name
            for name, feature in table.features.items()
            if getattr(feature, "dtype", None) in ("string", "large_string")
        ]
        if len(strings) == 1:
            return strings
        raise SpruceError(
            f"cannot tell which column of {where} holds the text "
            f"(columns: {', '.join(table.column_names)})",
            "pass --aux-text-columns NAME",
        ) from None


def _detected_text_columns(table: datasets.Dataset, pair: bool, where: str) -> list[str]:
    """The known pair (or single-text) column names of a file that may have no label."""
    names = table.column_names
    if pair:
        found = [list(p) for p in PAIR_COLUMNS if all(n in names for n in p)]
    else:
        found = [[n] for n in SINGLE_COLUMNS if n in names]
    if found:
        return found[0]
    if not pair:
        return _text_columns(table, where)  # the one string column
    raise SpruceError(
        f"cannot tell which two columns of {where} hold the sentence pairs "
        f"(columns: {', '.join(names)})",
        "pass --aux-text-columns FIRST,SECOND",
    )


def _read_lines(path: Path) -> datasets.Dataset:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise SpruceError(
            f"{path} is not UTF-8 text (byte {error.start})", "convert it to UTF-8"
        ) from None
    except OSError as error:
        raise SpruceError(f"cannot read {path}: {error.strerror}", "check the path") from None
    documents = [line.strip() for line in lines if line.strip()]
    if not documents:
        raise SpruceError(f"{path} holds no text", "write one document per line")
    return datasets.Dataset.from_dict({"text_a": documents})


def mlm_stream(
    texts: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    max_length: int,
    probability: float,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> Stream:
    """MLM batches of ``texts``; with ``world_size > 1`` process ``rank``'s shard."""
    if tokenizer.mask_token is None:
        raise SpruceError(
            "the model's tokenizer has no mask token, so MLM cannot run",
            "use --aux task:PATH, or a model trained with MLM",
        )
    encoded = tokenize_split(texts, tokenizer, max_length)
    # The collator masks with whatever generator it holds. Given a ``seed`` instead, it
    # manages its own generator per process (transformers >= 5.25 replaces one another pid
    # made, and refuses in a torch.distributed rank), which would undo spruce's per-rank
    # seeding and checkpointed masking state.
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability)
    collator.generator = torch.Generator().manual_seed(seed)
    if world_size > 1:
        sampler = DistributedSampler(
            encoded, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        return Stream(
            DataLoader(encoded, batch_size=batch_size, sampler=sampler, collate_fn=collator)
        )
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        encoded, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collator
    )
    return Stream(loader)


def labelled_task(task: AuxTask, seed: int) -> TaskData:
    return load_task(
        TaskDataConfig(
            train=str(task.path),
            text_columns=task.text_columns,
            label_column=task.label_column,
            seed=seed,
        )
    )


def text_stream(
    texts: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    max_length: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> Stream:
    """Padded batches of canonical rows (with their labels, if any; ``distill`` has none);
    with ``world_size > 1`` process ``rank``'s shard."""
    encoded = tokenize_split(texts, tokenizer, max_length)
    loader = make_loader(
        encoded, tokenizer, batch_size, shuffle=True, seed=seed, num_replicas=world_size, rank=rank
    )
    return Stream(loader)
