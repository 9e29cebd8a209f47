"""``spruce.data.readers.read_table``: every supported source, and every broken file as a
``SpruceError`` that says what is wrong and where."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from spruce.data import readers
from spruce.data.readers import read_table
from spruce.errors import SpruceError
from tiny_models import write_jsonl


def _error(source: Path | str, split: str | None = None) -> str:
    with pytest.raises(SpruceError) as info:
        read_table(source, split=split)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- delimited files ------------------------------------------------------------------------


def test_csv_quoted_fields_keep_their_commas(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(
        'text,label\n"hello, world",pos\n"say ""hi"", then go",neg\nplain,pos\n',
        encoding="utf-8",
    )
    table = read_table(path)
    assert table.column_names == ["text", "label"]
    assert table["text"] == ["hello, world", 'say "hi", then go', "plain"]
    assert table["label"] == ["pos", "neg", "pos"]


def test_tsv_keeps_bare_quotes_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text(
        'sentence\tlabel\nthe "best" film\t1\nit\'s a 12" record\t0\n"unclosed start\t1\n',
        encoding="utf-8",
    )
    table = read_table(path)
    assert table["sentence"] == ['the "best" film', "it's a 12\" record", '"unclosed start']
    assert table["label"] == ["1", "0", "1"]


def test_tab_extension_and_upper_case_suffix_are_tsv(tmp_path: Path) -> None:
    for name in ("data.tab", "DATA.TSV"):
        path = tmp_path / name
        path.write_text('a\tb\nx,"y\t1\n', encoding="utf-8")
        assert read_table(path)[:] == {"a": ['x,"y'], "b": ["1"]}


def test_utf8_bom_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes("\ufefftext,label\ncafé,1\nnaïve,0\n".encode())
    table = read_table(csv_path)
    assert table.column_names == ["text", "label"]
    assert table["text"] == ["café", "naïve"]

    jsonl_path = tmp_path / "bom.jsonl"
    jsonl_path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a", "label": 1}\n')
    assert read_table(jsonl_path)[:] == {"text": ["a"], "label": ["1"]}


def test_crlf_line_endings_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_bytes(b"sentence\tlabel\r\ngood\t1\r\n\r\nbad\t0\r\n\r\n")
    table = read_table(path)
    assert table["sentence"] == ["good", "bad"]
    assert table["label"] == ["1", "0"]


def test_header_names_are_stripped(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(" text , label\nx,1\n", encoding="utf-8")
    assert read_table(path).column_names == ["text", "label"]


# -- JSONL ----------------------------------------------------------------------------------


def test_jsonl_scalars_become_text_and_missing_keys_none(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"text": "a", "label": 1, "score": 0.5, "flag": True, "note": None},
            {"text": "b", "label": 0, "flag": False},
            {"label": 2, "extra": {"k": [1, 2]}, "text": "c"},
        ],
    )
    table = read_table(path)
    assert table.column_names == ["text", "label", "score", "flag", "note", "extra"]
    assert table["text"] == ["a", "b", "c"]
    assert table["label"] == ["1", "0", "2"]
    assert table["score"] == ["0.5", None, None]
    assert table["flag"] == ["true", "false", None]
    assert table["note"] == [None, None, None]
    assert json.loads(table["extra"][2]) == {"k": [1, 2]}
    assert table["extra"][:2] == [None, None]


def test_jsonl_mixed_label_types_share_one_text_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.json", [{"t": "x", "y": 1}, {"t": "z", "y": "spam"}])
    table = read_table(path)
    assert table["y"] == ["1", "spam"]
    assert table.features["y"].dtype == "string"


def test_jsonl_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n   \n{"text": "b", "label": 0}\n')
    assert read_table(path)["text"] == ["a", "b"]


# -- save_to_disk directories ---------------------------------------------------------------


def test_saved_dataset_directory(tmp_path: Path) -> None:
    source = datasets.Dataset.from_dict({"sentence": ["a", "b", "c"], "label": [0, 1, 0]})
    source.save_to_disk(str(tmp_path / "saved"))
    table = read_table(tmp_path / "saved")
    assert table["sentence"] == ["a", "b", "c"]
    assert table["label"] == [0, 1, 0]
    # A plain Dataset has no splits: the split argument is irrelevant.
    assert read_table(tmp_path / "saved", split="validation")["sentence"] == ["a", "b", "c"]


def test_saved_dataset_dict_picks_the_split(tmp_path: Path) -> None:
    saved = tmp_path / "dict"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["t1", "t2"], "label": [0, 1]}),
            "validation": datasets.Dataset.from_dict({"text": ["v1"], "label": [1]}),
        }
    ).save_to_disk(str(saved))
    assert read_table(saved, split="train")["text"] == ["t1", "t2"]
    assert read_table(str(saved), split="validation")["text"] == ["v1"]

    message = _error(saved, split="test")
    assert "none is named 'test'" in message
    assert "train, validation" in message
    assert "none is named 'None'" in _error(saved)


def test_saved_dataset_dict_with_one_split_needs_no_split_name(tmp_path: Path) -> None:
    saved = tmp_path / "one"
    datasets.DatasetDict(
        {"only": datasets.Dataset.from_dict({"text": ["x"], "label": [0]})}
    ).save_to_disk(str(saved))
    assert read_table(saved)["text"] == ["x"]


def test_directory_that_is_not_a_saved_dataset(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    assert "not a dataset saved with datasets.save_to_disk" in _error(tmp_path / "plain")


# -- errors ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    for name in ("missing.tsv", "missing.csv", "missing.jsonl"):
        message = _error(tmp_path / name)
        assert "does not exist" in message
        assert name in message


def test_missing_relative_path_is_not_sent_to_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError("the hub must not be asked for a local path")

    monkeypatch.setattr(readers.datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    assert "does not exist" in _error("./data/train")


def test_missing_name_that_may_be_a_hub_dataset_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline_hub(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(readers.datasets, "load_dataset", offline_hub)
    monkeypatch.chdir(tmp_path)
    assert "data file train.txt does not exist" in _error("train.txt")
    assert "'mydata/train' is not a local file or directory" in _error("mydata/train")


@pytest.mark.parametrize("name", ["empty.csv", "empty.tsv", "empty.jsonl"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("\n  \n")
    message = _error(path)
    assert "is empty" in message
    assert name in message


@pytest.mark.parametrize("name", ["header.csv", "header.tsv"])
def test_header_only(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("text,label\n" if name.endswith(".csv") else "text\tlabel\n")
    assert "holds no rows" in _error(path)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("text,label\na,1\n")
    message = _error(path)
    assert "unsupported extension '.txt'" in message
    assert ".csv" in message and ".jsonl" in message


def test_malformed_jsonl_line_reports_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": \n{"text": "c"}\n')
    message = _error(path)
    assert "line 3" in message
    assert "not valid JSON" in message


def test_jsonl_line_that_is_an_array(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1}\n["b", 0]\n')
    message = _error(path)
    assert "line 2" in message
    assert "JSON list, not an object" in message


def test_json_array_file_is_rejected_at_line_1(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text('[\n  {"text": "a", "label": 1}\n]\n')
    assert "line 1" in _error(path)


def test_tsv_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t0\textra\nfine\t1\n")
    message = _error(path)
    assert "line 3 has 3 fields but the header has 2" in message


def test_csv_row_with_too_few_fields(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("a,b,label\n1,2,x\n3,y\n")
    assert "line 3 has 2 fields but the header has 3" in _error(path)


def test_duplicate_header_names(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label,text\na,1,b\n")
    assert "duplicate column names: text" in _error(path)


def test_empty_header_name(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,,label\na,b,1\n")
    assert "empty column name" in _error(path)


@pytest.mark.parametrize("name", ["latin1.csv", "latin1.jsonl"])
def test_non_utf8_bytes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    body = "text,label\ncaf\xe9,1\n" if name.endswith(".csv") else '{"text": "caf\xe9"}\n'
    path.write_bytes(body.encode("latin-1"))
    message = _error(path)
    assert "not UTF-8" in message
    assert name in message


# -- line breaks inside fields ---------------------------------------------------------------


def test_csv_quoted_field_keeps_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text('text,label\n"first line\nsecond line",pos\nb,neg\n')
    assert read_table(path)["text"] == ["first line\nsecond line", "b"]


@pytest.mark.parametrize("char", ["\u2028", "\x85", "\x0c"])
def test_unicode_line_separators_inside_fields(tmp_path: Path, char: str) -> None:
    tsv = tmp_path / "train.tsv"
    tsv.write_text(f"sentence\tlabel\nfoo{char}bar\t1\n", encoding="utf-8")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps({"text": f"foo{char}bar"}, ensure_ascii=False) + "\n")
    assert read_table(tsv)["sentence"] == [f"foo{char}bar"]
    assert read_table(jsonl)["text"] == [f"foo{char}bar"]
