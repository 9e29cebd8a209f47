"""Column detection, label ids, stratified sampling and ``load_task``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import pytest

from spruce.data.columns import (
    ColumnSpec,
    infer_label_names,
    resolve_columns,
    to_canonical,
)
from spruce.data.sampling import stratified_sample
from spruce.data.task import TaskDataConfig, load_task, task_name_from_path
from spruce.errors import SpruceError
from tiny_models import write_jsonl, write_sentiment_files


def _table(**columns: list) -> datasets.Dataset:
    return datasets.Dataset.from_dict(columns)


def _columns(*names: str) -> datasets.Dataset:
    return datasets.Dataset.from_dict({name: ["x"] for name in names})


# -- columns --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "text", "label"),
    [
        (("sentence", "label"), ("sentence",), "label"),
        (("idx", "sentence", "label"), ("sentence",), "label"),
        (("sentence1", "sentence2", "label"), ("sentence1", "sentence2"), "label"),
        (("label", "hypothesis", "premise"), ("premise", "hypothesis"), "label"),
        (("text", "label"), ("text",), "label"),
        (("id", "text", "category"), ("text",), "category"),
        (("comment", "label"), ("comment",), "label"),
    ],
)
def test_columns_are_detected(names: tuple[str, ...], text: tuple[str, ...], label: str) -> None:
    spec = resolve_columns(_columns(*names), None, None, "train.tsv")
    assert spec == ColumnSpec(text, label)
    assert spec.is_pair == (len(text) == 2)


def test_explicit_text_and_label_columns_win_over_detection() -> None:
    table = _columns("sentence", "body", "label", "stars")
    spec = resolve_columns(table, ("body",), "stars", "train.tsv")
    assert spec == ColumnSpec(("body",), "stars")
    pair = resolve_columns(table, ("body", "sentence"), None, "train.tsv")
    assert pair.text_columns == ("body", "sentence")
    assert pair.is_pair


def test_three_text_columns_are_refused() -> None:
    with pytest.raises(SpruceError, match="one or two names, got 3"):
        resolve_columns(_columns("a", "b", "c", "label"), ("a", "b", "c"), None, "train.tsv")


def test_unknown_text_column_suggests_the_close_name() -> None:
    with pytest.raises(SpruceError) as info:
        resolve_columns(_columns("sentence", "label"), ("sentense",), None, "train.tsv")
    message = str(info.value)
    assert "--text-columns" in message
    assert "no column 'sentense'" in message
    assert "did you mean 'sentence'?" in message


def test_unknown_label_column_without_close_name_lists_the_columns() -> None:
    with pytest.raises(SpruceError) as info:
        resolve_columns(_columns("sentence", "label"), None, "zzz", "train.tsv")
    message = str(info.value)
    assert "--label-column" in message
    assert "the columns are sentence, label" in message


def test_ambiguous_text_columns() -> None:
    for names in (("title", "body", "label"), ("sentence", "text", "label")):
        with pytest.raises(SpruceError) as info:
            resolve_columns(_columns(*names), None, None, "train.tsv")
        message = str(info.value)
        assert "cannot tell which columns of train.tsv hold the text" in message
        assert "--text-columns" in message


def test_missing_label_column() -> None:
    with pytest.raises(SpruceError, match=r"holds the label.*--label-column"):
        resolve_columns(_columns("sentence", "score"), None, None, "train.tsv")


def test_integer_labels_sort_numerically() -> None:
    assert infer_label_names(["10", "2", "1", "2", 0], "t") == ["0", "1", "2", "10"]
    assert infer_label_names(["-1", "1", " 01 "], "t") == ["-1", "1"]


def test_string_labels_sort_alphabetically() -> None:
    assert infer_label_names(["pos", "neg", "neutral", "neg"], "t") == ["neg", "neutral", "pos"]
    # One non-integer makes every label text: "10" < "2" < "x" as strings.
    assert infer_label_names(["10", "2", "x"], "t") == ["10", "2", "x"]


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_label_names_its_row(bad: object) -> None:
    with pytest.raises(SpruceError) as info:
        infer_label_names(["pos", "neg", bad, "pos"], "train.tsv")
    assert "train.tsv row 3 has an empty label" in str(info.value)


@pytest.mark.parametrize("bad", ["nan", "NaN", "null", "None"])
def test_nan_label_names_its_row(bad: str) -> None:
    with pytest.raises(SpruceError) as info:
        infer_label_names(["pos", bad], "train.tsv")
    assert f"train.tsv row 2 has the label '{bad}'" in str(info.value)


@pytest.mark.parametrize("odd", ["²", "--1"])
def test_labels_that_look_numeric_are_not_a_crash(odd: str) -> None:
    assert infer_label_names([odd, "1"], "t") == sorted(["1", odd])


def test_to_canonical_maps_labels_and_renames_columns() -> None:
    table = _table(premise=[" a ", "b"], hypothesis=["c", None], label=["1", "0"])
    spec = ColumnSpec(("premise", "hypothesis"), "label")
    canonical = to_canonical(table, spec, ["0", "1"], "train.tsv")
    assert canonical.column_names == ["text_a", "text_b", "label"]
    assert canonical["text_a"] == ["a", "b"]
    assert canonical["text_b"] == ["c", ""]
    assert canonical["label"] == [1, 0]


def test_to_canonical_rejects_an_unknown_label_with_its_row() -> None:
    table = _table(text=["a", "b", "c"], label=["pos", "neg", "meh"])
    with pytest.raises(SpruceError) as info:
        to_canonical(table, ColumnSpec(("text",), "label"), ["neg", "pos"], "dev.tsv")
    message = str(info.value)
    assert "dev.tsv row 3 has the label 'meh'" in message
    assert "labels: neg, pos" in message


# -- stratified_sample ----------------------------------------------------------------------

COUNTS = {0: 50, 1: 30, 2: 20}
LABELS = [c for c, n in COUNTS.items() for _ in range(n)]
# Interleave so class membership does not line up with index order.
LABELS = LABELS[::2] + LABELS[1::2]


@pytest.mark.parametrize("n", [5, 7, 10, 13, 25, 33, 50, 64, 99])
def test_max_samples_keeps_class_proportions(n: int) -> None:
    chosen, _ = stratified_sample(LABELS, max_samples=n, seed=3)
    assert len(chosen) == n
    got = Counter(LABELS[i] for i in chosen)
    for c, count in COUNTS.items():
        assert abs(got[c] - n * count / len(LABELS)) < 1, (c, got)


def test_max_samples_represents_every_class() -> None:
    labels = [0] * 90 + [1] * 6 + [2] * 4
    chosen, _ = stratified_sample(labels, max_samples=10, seed=0)
    assert len(chosen) == 10
    assert {labels[i] for i in chosen} == {0, 1, 2}
    rare = [0] * 97 + [1] * 2 + [2]
    chosen, _ = stratified_sample(rare, max_samples=3, seed=0)
    assert sorted(rare[i] for i in chosen) == [0, 1, 2]


def test_sampling_is_deterministic_in_the_seed() -> None:
    first = stratified_sample(LABELS, max_samples=20, seed=7)
    again = stratified_sample(LABELS, max_samples=20, seed=7)
    other = stratified_sample(LABELS, max_samples=20, seed=8)
    assert first == again
    assert first[0] != other[0]
    shots = stratified_sample(LABELS, shots_per_class=4, seed=7)
    assert shots == stratified_sample(LABELS, shots_per_class=4, seed=7)
    assert shots[0] != stratified_sample(LABELS, shots_per_class=4, seed=8)[0]


@pytest.mark.parametrize("options", [{"max_samples": 17}, {"shots_per_class": 5}])
def test_chosen_and_remainder_partition_the_indices(options: dict) -> None:
    chosen, rest = stratified_sample(LABELS, seed=1, **options)
    assert chosen == sorted(chosen)
    assert rest == sorted(rest)
    assert not set(chosen) & set(rest)
    assert sorted(chosen + rest) == list(range(len(LABELS)))


def test_shots_per_class_gives_exactly_k_per_class() -> None:
    chosen, rest = stratified_sample(LABELS, shots_per_class=8, seed=2)
    assert Counter(LABELS[i] for i in chosen) == {0: 8, 1: 8, 2: 8}
    assert len(rest) == len(LABELS) - 24


def test_too_few_examples_for_k_shots() -> None:
    labels = [0] * 10 + [1] * 3
    with pytest.raises(SpruceError) as info:
        stratified_sample(labels, shots_per_class=4, label_names=["neg", "pos"])
    message = str(info.value)
    assert "class 'pos' has only 3 training examples" in message
    assert "--shots-per-class 3 or less" in message


def test_both_sampling_options_at_once() -> None:
    with pytest.raises(SpruceError, match="cannot be combined"):
        stratified_sample(LABELS, max_samples=10, shots_per_class=2)


@pytest.mark.parametrize("n", [len(LABELS), len(LABELS) + 1, 10_000])
def test_max_samples_at_least_the_total_returns_everything(n: int) -> None:
    assert stratified_sample(LABELS, max_samples=n, seed=5) == (list(range(len(LABELS))), [])


def test_no_sampling_option_returns_everything() -> None:
    assert stratified_sample([1, 0, 1], seed=9) == ([0, 1, 2], [])


# -- load_task ------------------------------------------------------------------------------


def _write_tsv(path: Path, header: str, rows: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def test_unlabelled_is_the_train_rows_that_were_not_sampled(tmp_path: Path) -> None:
    rows = [f"text number {i}\t{'pos' if i % 3 else 'neg'}" for i in range(30)]
    train = _write_tsv(tmp_path / "toy" / "train.tsv", "sentence\tlabel", rows)
    task = load_task(TaskDataConfig(train=train, max_train_samples=9, seed=4))
    assert task.name == "toy"
    assert task.label_names == ["neg", "pos"]
    assert task.source_train_examples == 30
    assert len(task.train) == 9
    assert set(task.train["label"]) == {0, 1}
    assert task.unlabelled is not None
    assert "label" not in task.unlabelled.column_names
    all_texts = {row.split("\t")[0] for row in rows}
    assert set(task.train["text_a"]) | set(task.unlabelled["text_a"]) == all_texts
    assert not set(task.train["text_a"]) & set(task.unlabelled["text_a"])
    assert len(task.unlabelled) == 21


def test_without_sampling_there_is_no_unlabelled_split(tmp_path: Path) -> None:
    files = write_sentiment_files(tmp_path / "sst", n_train=12)
    task = load_task(TaskDataConfig(train=str(files["train"]), validation=str(files["validation"])))
    assert len(task.train) == 12
    assert task.unlabelled is None
    assert task.label_names == ["0", "1"]
    assert task.validation is not None and len(task.validation) == 32
    assert task.test is None


def test_shots_per_class_and_eval_limit(tmp_path: Path) -> None:
    files = write_sentiment_files(tmp_path / "sst", n_train=20)
    task = load_task(
        TaskDataConfig(
            train=str(files["train"]),
            test=str(files["test"]),
            shots_per_class=3,
            max_test_samples=10,
            seed=1,
        )
    )
    assert Counter(task.train["label"]) == {0: 3, 1: 3}
    assert len(task.unlabelled) == 14
    assert task.test is not None and len(task.test) == 10
    assert Counter(task.test["label"]) == {0: 5, 1: 5}


def test_single_class_training_file(tmp_path: Path) -> None:
    train = _write_tsv(tmp_path / "train.tsv", "sentence\tlabel", ["a\tpos", "b\tpos", "c\tpos"])
    with pytest.raises(SpruceError) as info:
        load_task(TaskDataConfig(train=train))
    message = str(info.value)
    assert "single class ('pos')" in message
    assert "'label'" in message


def test_sample_with_a_single_class(tmp_path: Path) -> None:
    files = write_sentiment_files(tmp_path / "sst", n_train=10)
    with pytest.raises(SpruceError, match="sampled training set holds a single class"):
        load_task(TaskDataConfig(train=str(files["train"]), max_train_samples=1))


def test_validation_label_unseen_in_train(tmp_path: Path) -> None:
    train = _write_tsv(tmp_path / "train.tsv", "sentence\tlabel", ["a\tpos", "b\tneg"])
    dev = _write_tsv(tmp_path / "dev.tsv", "sentence\tlabel", ["c\tpos", "d\tneutral"])
    with pytest.raises(SpruceError) as info:
        load_task(TaskDataConfig(train=train, validation=dev))
    message = str(info.value)
    assert "row 2 has the label 'neutral'" in message
    assert "dev.tsv" in message


def test_label_names_fix_the_ids_and_must_cover_every_label(tmp_path: Path) -> None:
    train = _write_tsv(tmp_path / "train.tsv", "sentence\tlabel", ["a\tpos", "b\tneg"])
    task = load_task(TaskDataConfig(train=train, label_names=("pos", "neg")))
    assert task.label_names == ["pos", "neg"]
    assert task.train["label"] == [0, 1]
    with pytest.raises(SpruceError, match="does not list the labels neg"):
        load_task(TaskDataConfig(train=train, label_names=("pos", "other")))


def test_pair_data_is_detected(tmp_path: Path) -> None:
    files = write_sentiment_files(tmp_path / "rte", n_train=8, pair=True)
    task = load_task(TaskDataConfig(train=str(files["train"]), test=str(files["test"])))
    assert task.is_pair
    assert task.columns.text_columns == ("sentence1", "sentence2")
    assert task.train.column_names == ["text_a", "text_b", "label"]
    assert task.test is not None and "text_b" in task.test.column_names
    assert task.num_labels == 2


def test_pair_train_with_single_text_validation(tmp_path: Path) -> None:
    files = write_sentiment_files(tmp_path / "rte", n_train=8, pair=True)
    single = write_sentiment_files(tmp_path / "sst", n_train=8)
    with pytest.raises(SpruceError, match="sentence1"):
        load_task(TaskDataConfig(train=str(files["train"]), validation=str(single["validation"])))


def test_jsonl_task_with_integer_labels(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": i % 3, "id": i} for i in range(12)]
    path = write_jsonl(tmp_path / "emails.jsonl", rows)
    task = load_task(TaskDataConfig(train=str(path), name="custom"))
    assert task.name == "custom"
    assert task.label_names == ["0", "1", "2"]
    assert task.train["label"] == [i % 3 for i in range(12)]
    assert task.columns == ColumnSpec(("text",), "label")


def test_task_name_from_path(tmp_path: Path) -> None:
    assert task_name_from_path(str(tmp_path / "sst2" / "train.tsv")) == "sst2"
    assert task_name_from_path(str(tmp_path / "rte" / "Training.csv")) == "rte"
    assert task_name_from_path(str(tmp_path / "rte" / "dev.tsv")) == "dev"
    assert task_name_from_path("emails.jsonl") == "emails"
    assert task_name_from_path(str(tmp_path / "saved_rte")) == "saved_rte"
    assert task_name_from_path("glue") == "glue"
