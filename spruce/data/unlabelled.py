"""Unlabelled text: one document per line, or the text columns of a data file, in the
canonical ``text_a`` (and ``text_b``) form of a task's splits. Read for ``--unlabelled``
and for the auxiliary tasks that learn from text alone (MLM, distillation)."""

from __future__ import annotations

from pathlib import Path

import datasets

from spruce.data.columns import PAIR_COLUMNS, SINGLE_COLUMNS, resolve_columns
from spruce.data.readers import read_table
from spruce.errors import SpruceError

TEXT_SUFFIXES = (".txt", ".text")


class TextColumnsError(SpruceError):
    """A file's text does not have the shape asked for (its columns, or single texts
    where pairs are read): callers that know a better fix than ``--aux-text-columns``
    (``--unlabelled``) catch this class alone."""


def canonical_texts(table: datasets.Dataset, columns: list[str], where: str) -> datasets.Dataset:
    """``columns`` of ``table`` as ``text_a`` (and ``text_b``), every value a string."""
    missing = [c for c in columns if c not in table.column_names]
    if missing or not 1 <= len(columns) <= 2:
        raise TextColumnsError(
            f"{where}: cannot use text columns {', '.join(columns)} "
            f"(columns are {', '.join(table.column_names)})",
            "pass --aux-text-columns with one or two of its columns",
        )
    renamed = {old: new for old, new in zip(columns, ("text_a", "text_b"), strict=False)}
    table = table.select_columns(columns).rename_columns(renamed)
    return table.map(lambda row: {k: "" if v is None else str(v) for k, v in row.items()})


def string_text_columns(table: datasets.Dataset, where: str) -> list[str]:
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
        raise TextColumnsError(
            f"cannot tell which column of {where} holds the text "
            f"(columns: {', '.join(table.column_names)})",
            "pass --aux-text-columns NAME",
        ) from None


def detected_text_columns(table: datasets.Dataset, pair: bool, where: str) -> list[str]:
    """The known pair (or single-text) column names of a file that may have no label."""
    names = table.column_names
    if pair:
        found = [list(p) for p in PAIR_COLUMNS if all(n in names for n in p)]
    else:
        found = [[n] for n in SINGLE_COLUMNS if n in names]
    if found:
        return found[0]
    if not pair:
        return string_text_columns(table, where)  # the one string column
    raise TextColumnsError(
        f"cannot tell which two columns of {where} hold the sentence pairs "
        f"(columns: {', '.join(names)})",
        "pass --aux-text-columns FIRST,SECOND",
    )


def read_text_lines(path: Path) -> datasets.Dataset:
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


def read_texts_like(
    path: str,
    target_columns: tuple[str, ...],
    text_columns: tuple[str, ...] | None = None,
    *,
    option: str,
    columns_option: str,
) -> datasets.Dataset:
    """Text rows of ``path`` shaped as a task that reads ``target_columns`` (one text, or
    a pair): a ``.txt`` file (one document per line; single texts only), or a data file's
    ``text_columns``, else the task's own column names, else the usual detection. Labels,
    if the file has any, are dropped. ``option`` and ``columns_option`` name the flags in
    errors."""
    pair = len(target_columns) == 2
    if Path(path).suffix.lower() in TEXT_SUFFIXES:
        if pair:
            raise TextColumnsError(
                f"{option} has one text per line, but the task reads sentence pairs",
                f"give a data file with two text columns ({columns_option} FIRST,SECOND)",
            )
        return read_text_lines(Path(path))
    table = read_table(path, split="train")
    return texts_like(
        table,
        target_columns,
        text_columns,
        where=path,
        option=option,
        columns_option=columns_option,
    )


def texts_like(
    table: datasets.Dataset,
    target_columns: tuple[str, ...],
    text_columns: tuple[str, ...] | None = None,
    *,
    where: str,
    option: str,
    columns_option: str = "--text-columns",
) -> datasets.Dataset:
    """:func:`read_texts_like` on a table already read (or given in memory): its
    ``text_columns``, else the task's own column names, else the usual detection."""
    pair = len(target_columns) == 2
    shape = "sentence pairs" if pair else "single texts"
    if text_columns:
        columns = list(text_columns)
    elif all(c in table.column_names for c in target_columns):
        columns = list(target_columns)
    else:
        columns = detected_text_columns(table, pair, where)
    if len(columns) != len(target_columns):
        raise TextColumnsError(
            f"{option} gives {len(columns)} text column(s) ({', '.join(columns)}), "
            f"the task reads {shape}",
            f"pass {columns_option} with {'two' if pair else 'one'} of its columns",
        )
    texts = canonical_texts(table, columns, where)
    if len(texts) == 0:
        raise SpruceError(f"{option} holds no rows", "give a file with at least one text")
    return texts
