"""Vocabulary trimming: keep only the word-embedding rows a task's texts can reach.

A 30k-token embedding matrix is most of a small pruned encoder's size on disk (MiniLM-L6:
11.7M of 22.7M parameters). A task that only ever sees a few thousand distinct tokens can
drop the other rows without changing a single logit on its texts, provided the new
tokenizer turns those texts into the *same token strings* (ids are re-indexed).

Why a subset of a WordPiece vocabulary reproduces the tokenization (greedy longest match
first, per pre-tokenized word):

- A word that tokenized into pieces: at each position the original longest match is kept
  and nothing longer can appear in a subset, so the same piece wins at every position.
- A word that became ``[UNK]``: greedy matching failed at some position. A subset could
  take a *different* path that skips past that position (``ab|c`` fails on ``##c``, but
  with ``ab`` gone ``a|##bc`` succeeds). Keeping the pieces the original path matched
  before failing forces the same path and the same failure.

For BPE (RoBERTa, byte-level): a word's tokens come from applying, repeatedly, the
lowest-ranked merge among its adjacent pairs. Keeping every merge whose result is a kept
token, and (recursively) both halves of those merges, keeps every merge the texts used;
the lowest-ranked applicable merge of a subset containing it is then the same merge, so
the same tokens result. Single characters (the byte alphabet) are kept too, so that any
unseen text still tokenizes.

Any superset of those ids (taken from the original vocabulary) is equally safe, which is
why all special and added tokens are kept as well. :func:`trim_vocabulary` re-tokenizes
the texts with the new tokenizer and fails loudly if a single id differs. Other kinds
(Unigram/SentencePiece, WordLevel) raise :class:`SpruceError`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spruce.errors import SpruceError

Text = str | tuple[str, str]

_BATCH = 1024
# Config fields that hold token ids and must follow the re-indexing.
_CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")


def directory_bytes(path: str | os.PathLike[str]) -> int:
    """Total size in bytes of the regular files under ``path`` (symbolic links not followed)."""
    files = (Path(root, name) for root, _, names in os.walk(path) for name in names)
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())


def used_token_ids(
    tokenizer: PreTrainedTokenizerBase, texts: Iterable[str] | Iterable[tuple[str, str]]
) -> set[int]:
    """The ids that appear when ``tokenizer`` encodes ``texts`` (strings or pairs), with the
    special tokens the tokenizer adds around them. No truncation: a superset is harmless."""
    used: set[int] = set()
    for ids in _encode(tokenizer, texts):
        used.update(ids)
    return used


def trim_vocabulary(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[str] | Iterable[tuple[str, str]],
    *,
    keep_characters: bool = False,
    verify: bool = True,
) -> tuple[PreTrainedTokenizerBase, list[int], dict[str, int]]:
    """Shrink ``tokenizer`` and ``model``'s word embeddings to what ``texts`` use.

    Returns ``(new_tokenizer, kept_ids, sizes)``: ``kept_ids[new_id]`` is the old id of
    each kept token, ``sizes`` is ``{"vocab_before", "vocab_after"}``. The model is changed
    in place (input embedding rows, a tied or separate output embedding and its bias,
    ``config.vocab_size`` and the token ids the config records). On ``texts`` the new
    tokenizer yields the same token strings and therefore the model the same outputs;
    unseen words may tokenize differently (pieces they need may be gone, giving ``[UNK]``).
    ``keep_characters`` also keeps every single-character piece (``x`` and ``##x``), so
    that unseen words fall back to characters instead of ``[UNK]`` (about 2k rows for
    BERT's vocabulary; BPE always keeps them). With ``verify`` the texts are encoded again
    with the new tokenizer to prove the equality.
    """
    backend = _backend_state(tokenizer)
    model_state = backend["model"]
    texts = list(texts)  # read twice (scan, verify)
    sequences = list(_encode(tokenizer, texts))
    needed = {i for ids in sequences for i in ids}
    needed |= set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    if model_state.get("unk_token") is not None:
        needed.add(int(tokenizer.convert_tokens_to_ids(model_state["unk_token"])))
    vocab: dict[str, int] = model_state["vocab"]
    vocab_ids = set(vocab.values())
    needed |= {getattr(model.config, f, None) for f in _CONFIG_TOKEN_IDS} & vocab_ids
    pad = getattr(model.config, "pad_token_id", None)
    if pad in vocab_ids:
        # Keep the padding id where it is: RoBERTa numbers positions from padding_idx + 1.
        needed |= set(range(pad + 1)) & vocab_ids
    prefix = model_state.get("continuing_subword_prefix") or ""
    if keep_characters or model_state["type"] == "BPE":
        needed |= {i for t, i in vocab.items() if len(t.removeprefix(prefix)) == 1}
    if model_state["type"] == "WordPiece":
        needed |= _unk_path_ids(tokenizer, model_state, texts, sequences)
    else:
        needed |= _merge_closure(model_state, needed)
    in_model = needed & vocab_ids
    # Model-vocabulary ids first, then added tokens that live past it: the model needs its
    # own vocabulary to be the contiguous range 0..m-1, whatever the original layout was.
    kept_ids = sorted(in_model) + sorted(needed - in_model)

    embedding = model.get_input_embeddings()
    if kept_ids[-1] >= embedding.num_embeddings:
        raise SpruceError(
            f"the tokenizer has id {kept_ids[-1]} but the model's word embeddings have only "
            f"{embedding.num_embeddings} rows",
            "use the tokenizer saved with this model (or resize its embeddings first)",
        )
    before = embedding.num_embeddings
    new_tokenizer = _rebuild_tokenizer(tokenizer, backend, kept_ids)
    if verify:
        _verify(new_tokenizer, texts, sequences, kept_ids)
    _reindex_model(model, kept_ids)
    return new_tokenizer, kept_ids, {"vocab_before": before, "vocab_after": len(kept_ids)}


# --- scanning -----------------------------------------------------------------------------


def _as_pair(item: Text) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, tuple | list) and len(item) == 2:
        return item[0], item[1]
    raise TypeError(f"expected a string or a (text_a, text_b) pair, got {type(item).__name__}")


def _batches(texts: Iterable[Text]) -> Iterator[list[tuple[str, str | None]]]:
    batch: list[tuple[str, str | None]] = []
    for item in texts:
        batch.append(_as_pair(item))
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode(tokenizer: PreTrainedTokenizerBase, texts: Iterable[Text]) -> Iterator[list[int]]:
    """Input ids per text, in order; one tokenizer call per batch of uniform kind."""
    options = {
        "add_special_tokens": True,
        "truncation": False,
        "padding": False,
        "return_attention_mask": False,
        "return_token_type_ids": False,
    }
    for batch in _batches(texts):
        firsts = [a for a, _ in batch]
        seconds = [b for _, b in batch]
        if all(b is None for b in seconds):
            yield from tokenizer(firsts, **options)["input_ids"]
        elif all(b is not None for b in seconds):
            yield from tokenizer(firsts, seconds, **options)["input_ids"]
        else:  # a mix of single texts and pairs: rare, so one call each is fine
            for a, b in batch:
                yield tokenizer(a, b, **options)["input_ids"]


def _backend_state(tokenizer: PreTrainedTokenizerBase) -> dict:
    """The backend's JSON, or a SpruceError saying why this tokenizer cannot be trimmed."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SpruceError(
            f"{type(tokenizer).__name__} has no 'tokenizers' backend, so its vocabulary "
            "cannot be trimmed",
            "drop --trim-vocab",
        )
    state = json.loads(backend.to_str())
    kind = state["model"].get("type")
    if kind not in ("WordPiece", "BPE") or state["model"].get("dropout"):
        raise SpruceError(
            f"--trim-vocab supports WordPiece (BERT, MiniLM, DistilBERT, ELECTRA) and "
            f"deterministic BPE (RoBERTa) tokenizers; {type(tokenizer).__name__} uses {kind}",
            "drop --trim-vocab for this model",
        )
    return state


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    # tokenizer.json writes merges as ["a", "b"] (recent) or "a b" (older files).
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def _merge_closure(model_state: dict, ids: set[int]) -> set[int]:
    """``ids`` plus both halves of every merge that produces a kept token, recursively."""
    vocab: dict[str, int] = model_state["vocab"]
    prefix = model_state.get("continuing_subword_prefix") or ""
    made_by: dict[str, list[tuple[str, str]]] = {}
    for a, b in _merge_pairs(model_state.get("merges", [])):
        made_by.setdefault(a + b.removeprefix(prefix), []).append((a, b))
    id_to_token = {i: t for t, i in vocab.items()}
    kept = {id_to_token[i] for i in ids if i in id_to_token}
    stack = list(kept)
    while stack:
        for pair in made_by.get(stack.pop(), ()):
            for part in pair:
                if part not in kept and part in vocab:
                    kept.add(part)
                    stack.append(part)
    return ids | {vocab[t] for t in kept}


def _unk_path_ids(
    tokenizer: PreTrainedTokenizerBase,
    model: dict,
    texts: list[Text],
    sequences: list[list[int]],
) -> set[int]:
    """Ids of the pieces a failing word matched before it became [UNK] (see module doc)."""
    unk_id = tokenizer.convert_tokens_to_ids(model["unk_token"])
    vocab: dict[str, int] = model["vocab"]
    prefix = model.get("continuing_subword_prefix", "##")
    max_chars = int(model.get("max_input_chars_per_word", 100))
    live = tokenizer.backend_tokenizer
    ids: set[int] = set()
    for item, sequence in zip(texts, sequences, strict=True):
        if unk_id not in sequence:
            continue
        for text in _as_pair(item):
            if text is None:
                continue
            if live.normalizer is not None:
                text = live.normalizer.normalize_str(text)
            words = (
                [w for w, _ in live.pre_tokenizer.pre_tokenize_str(text)]
                if live.pre_tokenizer is not None
                else [text]
            )
            for word in words:
                ids.update(vocab[p] for p in _failed_path(word, vocab, prefix, max_chars))
    return ids


def _failed_path(word: str, vocab: dict[str, int], prefix: str, max_chars: int) -> list[str]:
    """Greedy longest-match-first as in ``tokenizers``' WordPiece; the pieces matched
    before failing, or [] when the word tokenizes (its pieces are in the encoding)."""
    if len(word) > max_chars:
        return []  # [UNK] without trying any piece
    pieces: list[str] = []
    start = 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return pieces
    return []


# --- rebuilding ---------------------------------------------------------------------------


def _rebuild_tokenizer(
    tokenizer: PreTrainedTokenizerBase, backend: dict, kept_ids: list[int]
) -> PreTrainedTokenizerBase:
    """A tokenizer of the same class with the kept tokens, re-indexed in ``kept_ids`` order.

    It goes through ``save_pretrained`` / ``from_pretrained`` so that the result is exactly
    what a later reload of the saved tokenizer gives (transformers v5 rebuilds BERT-style
    tokenizers from vocabulary plus init flags, not from the whole tokenizer.json).
    """
    remap = {old: new for new, old in enumerate(kept_ids)}
    old_vocab = {i: t for t, i in backend["model"]["vocab"].items()}
    with tempfile.TemporaryDirectory(prefix="spruce-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        folder = Path(tmp)
        state = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = {old_vocab[o]: remap[o] for o in kept_ids if o in old_vocab}
        state["model"]["vocab"] = vocab
        if "merges" in state["model"]:
            prefix = state["model"].get("continuing_subword_prefix") or ""
            state["model"]["merges"] = [
                merge
                for merge, (a, b) in zip(
                    state["model"]["merges"], _merge_pairs(state["model"]["merges"]), strict=True
                )
                if a in vocab and b in vocab and a + b.removeprefix(prefix) in vocab
            ]
        for token in state.get("added_tokens", []):
            token["id"] = remap[token["id"]]
        if state.get("padding"):
            state["padding"]["pad_id"] = remap.get(state["padding"]["pad_id"], 0)
        _remap_processor(state.get("post_processor"), remap)
        (folder / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False), "utf-8")

        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {
                str(remap[int(k)]): v for k, v in config["added_tokens_decoder"].items()
            }
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False), "utf-8")
        vocab_txt = folder / "vocab.txt"
        if vocab_txt.exists():
            vocab_txt.write_text("".join(old_vocab[o] + "\n" for o in kept_ids if o in old_vocab))

        new = type(tokenizer).from_pretrained(tmp)
    # Everything is in memory now; do not point at the deleted temporary folder.
    new.name_or_path = tokenizer.name_or_path
    return new


def _remap_processor(processor: dict | None, remap: dict[int, int]) -> None:
    """Re-index the special-token ids a post-processor inserts (CLS/SEP), in place."""
    if not processor:
        return
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for special in processor.get("special_tokens", {}).values():
            special["ids"] = [remap[i] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for field in ("sep", "cls"):
            token, old = processor[field]
            processor[field] = [token, remap[old]]
    elif kind == "Sequence":
        for inner in processor.get("processors", []):
            _remap_processor(inner, remap)


def _verify(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[Text],
    sequences: list[list[int]],
    kept_ids: list[int],
) -> None:
    remap = {old: new for new, old in enumerate(kept_ids)}
    for index, (old, new) in enumerate(zip(sequences, _encode(tokenizer, texts), strict=True)):
        if [remap.get(i, -1) for i in old] != new:
            # Not a user error: the construction above guarantees equality.
            raise RuntimeError(
                f"vocabulary trimming changed the tokenization of text {index}: "
                f"{texts[index]!r}: {old} -> {new}"
            )


def _reindex_model(model: PreTrainedModel, kept_ids: list[int]) -> None:
    """Keep rows ``kept_ids`` (in that order) of the input and output embeddings, in place."""
    remap = {old: new for new, old in enumerate(kept_ids)}
    embedding = model.get_input_embeddings()
    output = model.get_output_embeddings()
    old_weight = embedding.weight
    index = torch.tensor(kept_ids, dtype=torch.long, device=old_weight.device)

    new_weight = _rows(old_weight, index)
    _replace_parameter(model, old_weight, new_weight)  # also reaches a tied decoder
    embedding.num_embeddings = len(kept_ids)
    if embedding.padding_idx is not None:
        embedding.padding_idx = remap.get(embedding.padding_idx)

    if isinstance(output, nn.Linear):
        if output.weight is not new_weight:  # untied: slice its own rows
            _replace_parameter(model, output.weight, _rows(output.weight, index))
        if output.bias is not None:
            # MLM heads share this bias with a separate ``bias`` parameter: replace both.
            _replace_parameter(model, output.bias, _rows(output.bias, index))
        output.out_features = len(kept_ids)

    config = model.config
    config.vocab_size = len(kept_ids)
    for field in _CONFIG_TOKEN_IDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and value in remap:
            setattr(config, field, remap[value])


def _rows(parameter: nn.Parameter, index: torch.Tensor) -> nn.Parameter:
    with torch.no_grad():
        rows = parameter.detach().index_select(0, index).clone()
    return nn.Parameter(rows, requires_grad=parameter.requires_grad)


def _replace_parameter(model: nn.Module, old: nn.Parameter, new: nn.Parameter) -> None:
    """Point every module that holds ``old`` at ``new`` (weight tying is by identity)."""
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is old:
                module._parameters[name] = new
