"""Tiny randomly initialised encoders with real tokenizers, built offline in a few ms."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    DistilBertConfig,
    DistilBertModel,
    RobertaConfig,
    RobertaModel,
    RobertaTokenizer,
)

WORDS = [
    "good",
    "great",
    "fine",
    "lovely",
    "superb",
    "excellent",
    "bad",
    "awful",
    "poor",
    "terrible",
    "boring",
    "dull",
    "movie",
    "film",
    "plot",
    "actor",
    "the",
    "a",
    "is",
    "was",
    "and",
    "very",
    "not",
    "it",
    "this",
    "that",
    "story",
    "ending",
    "music",
    "scene",
]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SIZES = {"hidden": 32, "layers": 2, "heads": 4, "ffn": 64}


def make_tiny_model(directory: Path, family: str = "bert", seed: int = 0) -> Path:
    """Save a random ``family`` encoder (bert, roberta, distilbert) and its tokenizer.

    The weights come from ``seed``, not from the global generator, whose state depends on
    which tests ran before: a test's outcome must not depend on the order of the suite."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _make_tiny_model(directory, family)


def _make_tiny_model(directory: Path, family: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if family in ("bert", "distilbert"):
        letters = "abcdefghijklmnopqrstuvwxyz"
        tokens = BERT_SPECIALS + WORDS + list(letters + ".,!'-") + [f"##{c}" for c in letters]
        tokens = list(dict.fromkeys(tokens))  # "a" is a word and a letter: ids must not skip
        tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(tokens)})
        vocab_size = len(tokenizer)
    else:
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(
            [" ".join(WORDS)] * 4,
            vocab_size=300,
            min_frequency=1,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        )
        vocab_file, merges_file = bpe.save_model(str(directory))
        merges = [
            tuple(line.split()) for line in Path(merges_file).read_text().splitlines()[1:] if line
        ]
        tokenizer = RobertaTokenizer(vocab=json.loads(Path(vocab_file).read_text()), merges=merges)
        vocab_size = len(tokenizer)
    common = {"vocab_size": vocab_size, "max_position_embeddings": 64}
    bert_sizes = {
        "hidden_size": SIZES["hidden"],
        "num_hidden_layers": SIZES["layers"],
        "num_attention_heads": SIZES["heads"],
        "intermediate_size": SIZES["ffn"],
    }
    if family == "bert":
        model = BertModel(BertConfig(**bert_sizes, **common))
    elif family == "roberta":
        # RoBERTa positions start after the padding index, hence two extra positions.
        roberta_ids = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
        model = RobertaModel(
            RobertaConfig(
                **bert_sizes, **roberta_ids, vocab_size=vocab_size, max_position_embeddings=66
            )
        )
    elif family == "distilbert":
        model = DistilBertModel(
            DistilBertConfig(
                dim=SIZES["hidden"],
                n_layers=SIZES["layers"],
                n_heads=SIZES["heads"],
                hidden_dim=SIZES["ffn"],
                **common,
            )
        )
    else:
        raise ValueError(family)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_sentiment_files(
    directory: Path, n_train: int = 96, pair: bool = False
) -> dict[str, Path]:
    """A separable toy sentiment task (TSV) so that a tiny model can learn it in seconds."""
    import random

    rng = random.Random(0)
    positive, negative = WORDS[:6], WORDS[6:12]
    filler = WORDS[12:]

    def rows(n: int) -> list[str]:
        out = []
        for i in range(n):
            label = i % 2
            words = [*rng.sample(filler, 3), rng.choice(positive if label else negative)]
            rng.shuffle(words)
            text = " ".join(words)
            out.append(
                f"{text}\t{' '.join(rng.sample(filler, 3))}\t{label}"
                if pair
                else f"{text}\t{label}"
            )
        return out

    header = "sentence1\tsentence2\tlabel" if pair else "sentence\tlabel"
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("validation", 32), ("test", 32)):
        paths[split] = directory / f"{split}.tsv"
        paths[split].write_text("\n".join([header, *rows(n)]) + "\n")
    return paths


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
