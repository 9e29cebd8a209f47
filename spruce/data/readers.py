"""Read a labelled table from CSV, TSV, JSONL, a ``save_to_disk`` directory or the hub.

Every reader returns a :class:`datasets.Dataset` of raw columns; choosing which columns
are text and label, and what the labels mean, happens in :mod:`spruce.data.columns`.
Parsing is done here rather than by ``datasets``' own builders so that a broken file
can be reported with its line number.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import sys
from pathlib import Path

import datasets

from spruce.errors import SpruceError
from spruce.utils.hub import hub_reachable

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}

# Long fields (e-mails, documents) exceed the csv module's 128 KiB default.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def read_table(source: str | Path, split: str | None = None) -> datasets.Dataset:
    """Load ``source`` as a dataset of raw columns.

    ``source`` is a file (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.json`` with one object
    per line), a directory written by ``datasets.save_to_disk``, or a hub dataset name
    ``NAME`` / ``NAME:CONFIG`` (network needed). ``split`` picks the split of a
    ``DatasetDict`` directory or hub dataset.
    """
    path = Path(source)
    if path.is_dir():
        table = _read_saved_dataset(path, split)
    elif path.is_file():
        kind = TABLE_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise SpruceError(
                f"{path} has an unsupported extension '{path.suffix}'",
                "use .csv, .tsv, .jsonl or a directory saved with datasets.save_to_disk",
            )
        table = _read_delimited(path, kind) if kind != "jsonl" else _read_jsonl(path)
    else:
        table = _read_hub_dataset(str(source), split)
    if len(table) == 0:
        raise SpruceError(
            f"{source} holds no rows", "check that the file has data below its header"
        )
    return table


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SpruceError(f"cannot read {path}: {error.strerror}", "check the path") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SpruceError(f"{path} is UTF-16 text, not UTF-8", "convert the file to UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SpruceError(
            f"{path} is not UTF-8 text (byte {error.start} cannot be decoded)",
            "convert the file to UTF-8",
        ) from None
    if "\x00" in text:
        # Text files never hold NUL; UTF-16 without a BOM and binary files do.
        raise SpruceError(
            f"{path} contains NUL bytes (at character {text.index(chr(0))}), so it is binary "
            "or UTF-16 rather than UTF-8 text",
            "convert the file to UTF-8",
        )
    return text


def _read_delimited(path: Path, kind: str) -> datasets.Dataset:
    text = _read_text(path)
    if not text.strip():
        raise SpruceError(f"{path} is empty", "give a file with a header line and at least one row")
    # TSV files in NLP (GLUE, SST-2) contain bare quotes, so quoting is off for TSV.
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {}
    # newline="" keeps line breaks inside quoted CSV fields and splits only on \n / \r\n.
    reader = csv.reader(io.StringIO(text, newline=""), **dialect)
    try:
        header = next(reader)
    except csv.Error as error:
        raise SpruceError(f"{path} line 1 cannot be parsed: {error}", "fix the header") from None
    header = [name.strip() for name in header]
    _check_header(path, header)
    columns: dict[str, list[str]] = {name: [] for name in header}
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise SpruceError(
                    f"{path} line {reader.line_num} has {len(row)} fields but the header has "
                    f"{len(header)}",
                    "fix that line (a stray delimiter or quote?)",
                )
            for name, value in zip(header, row, strict=True):
                columns[name].append(value)
    except csv.Error as error:
        raise SpruceError(
            f"{path} line {reader.line_num} cannot be parsed: {error}", "fix that line"
        ) from None
    return datasets.Dataset.from_dict(columns)


def _check_header(path: Path, header: list[str]) -> None:
    if any(not name for name in header):
        raise SpruceError(f"{path} has an empty column name in its header", "name every column")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise SpruceError(
            f"{path} has duplicate column names: {', '.join(duplicates)}", "rename them"
        )


def _read_jsonl(path: Path) -> datasets.Dataset:
    text = _read_text(path)
    if not text.strip():
        raise SpruceError(f"{path} is empty", "give a file with one JSON object per line")
    rows: list[dict[str, str | None]] = []
    # str.splitlines() would also split on U+2028, form feeds etc. inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            rows.append(_parse_json_line(line, path, number))
    names: list[str] = []
    for row in rows:
        names.extend(name for name in row if name not in names)
    columns = {name: [row.get(name) for row in rows] for name in names}
    return datasets.Dataset.from_dict(columns)


def _parse_json_line(line: str, path: Path, number: int) -> dict[str, str | None]:
    """One JSONL line as text values, or a SpruceError that names the line."""

    def bad(reason: str, fix: str = "fix that line: each line must be one JSON object"):
        return SpruceError(f"{path} line {number} {reason}", fix)

    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise bad(f"is not valid JSON ({error.msg})") from None
    except RecursionError:
        raise bad("is nested too deeply to be read", "flatten that line's values") from None
    except ValueError:
        # Python refuses to convert integers longer than sys.get_int_max_str_digits().
        raise bad(
            f"holds a number with more than {sys.get_int_max_str_digits()} digits",
            "write it as a string in quotes",
        ) from None
    if not isinstance(row, dict):
        raise bad(
            f"is a JSON {type(row).__name__}, not an object",
            'write one object per line, e.g. {"text": "...", "label": "..."}',
        )
    if "" in row:
        raise bad("has an empty key", "name every field")
    if any("\x00" in key for key in row):
        # pyarrow cuts column names at NUL, and datasets then fails to match them.
        raise bad("has a key with a NUL character (\\u0000)", "rename that field")
    try:
        return {_utf8(key): _scalar(value) for key, value in row.items()}
    except RecursionError:
        # json.dumps gives up at a smaller depth than json.loads.
        raise bad("is nested too deeply to be read", "flatten that line's values") from None
    except UnicodeEncodeError:
        raise bad(
            "holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)",
            "write the character itself, or both halves of its surrogate pair",
        ) from None


def _scalar(value: object) -> str | None:
    # Mixed types in one column would make pyarrow fail far from the cause.
    if value is None:
        return None
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, bool | int | float):
        return str(value) if not isinstance(value, bool) else str(value).lower()
    return json.dumps(value)  # ASCII escapes: nested surrogates stay storable


def _utf8(text: str) -> str:
    """``text`` unchanged; UnicodeEncodeError for the unpaired surrogates that JSON's
    ``\\ud800`` escapes can produce and pyarrow cannot store."""
    text.encode("utf-8")
    return text


def _read_saved_dataset(path: Path, split: str | None) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise SpruceError(
            f"{path} is a directory but not a dataset saved with datasets.save_to_disk ({error})",
            "give a data file or a save_to_disk directory",
        ) from None
    return _pick_split(loaded, split, str(path))


def _read_hub_dataset(name: str, split: str | None) -> datasets.Dataset:
    suffix = Path(name).suffix.lower()
    looks_like_path = (
        name.startswith((".", "/", "~"))
        or suffix in TABLE_SUFFIXES
        or suffix in (".txt", ".parquet", ".arrow", ".xlsx", ".xls", ".gz", ".zip")
    )
    if looks_like_path:
        raise SpruceError(f"data file {name} does not exist", "check the path")
    if not hub_reachable():
        raise SpruceError(
            f"data '{name}' is not a local file or directory, and the Hugging Face hub is not "
            "reachable to load it as a dataset name",
            "check the path",
        )
    repo, _, config = name.partition(":")
    try:
        loaded = datasets.load_dataset(repo, config or None)
    except Exception as error:  # the hub client raises many unrelated types
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise SpruceError(
            f"'{name}' is not a local file or directory and could not be loaded from the "
            f"Hugging Face hub ({reason})",
            "check the path, or the dataset name and your network access",
        ) from None
    return _pick_split(loaded, split, name)


def _pick_split(
    loaded: datasets.Dataset | datasets.DatasetDict, split: str | None, where: str
) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split in loaded:
        return loaded[split]
    if split is None and len(loaded) == 1:
        return next(iter(loaded.values()))
    raise SpruceError(
        f"{where} has splits {', '.join(loaded)} and none is named '{split}'",
        "save the split you want on its own, or name the splits train/validation/test",
    )
