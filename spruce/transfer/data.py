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
from spruce.data.unlabelled import (
    TEXT_SUFFIXES,
    canonical_texts,
    read_text_lines,
    read_texts_like,
    string_text_columns,
)
from spruce.errors import SpruceError
from spruce.train.rng import generator_state, set_generator_state
from spruce.transfer.config import AuxTask


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
        return read_text_lines(path)
    table = read_table(task.path, split="train")
    columns = list(task.text_columns or string_text_columns(table, task.path))
    return canonical_texts(table, columns, task.path)


def distill_texts(task: AuxTask, target: TaskData) -> datasets.Dataset:
    """Canonical text rows for the teacher to predict on, shaped as the target's (the
    classifier reads pairs only as pairs): the target's unlabelled rest (its labelled
    sample when every training row is labelled), or the file of ``task`` read with
    ``--aux-text-columns``, else the target's own text columns, else the usual detection.
    Labels, if the file has any, are dropped."""
    if task.path is None:
        return _target_texts(target)
    return read_texts_like(
        task.path,
        target.columns.text_columns,
        task.text_columns,
        option=f"--aux distill:{task.path}",
        columns_option="--aux-text-columns",
    )


def _target_texts(target: TaskData) -> datasets.Dataset:
    texts = target.unlabelled if target.unlabelled is not None else target.train
    return texts.select_columns([c for c in ("text_a", "text_b") if c in texts.column_names])


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
    """Padded batches of canonical rows (with their labels, if any; ``distill`` has none),
    grouped by length (the teacher and the student pay for every padded token, and
    auxiliary text is long and varied); with ``world_size > 1`` process ``rank``'s shard."""
    encoded = tokenize_split(texts, tokenizer, max_length)
    loader = make_loader(
        encoded,
        tokenizer,
        batch_size,
        shuffle=True,
        seed=seed,
        num_replicas=world_size,
        rank=rank,
        group_by_length=True,
    )
    return Stream(loader)
