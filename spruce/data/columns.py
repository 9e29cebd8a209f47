"""Decide which columns hold the text and the label, and map labels to ids.

The output of this module is the canonical form every later stage reads: columns
``text_a`` (and ``text_b`` for sentence pairs) and ``label`` (an int id into
``label_names``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import datasets

from spruce.errors import SpruceError

PAIR_COLUMNS = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("text1", "text2"),
    ("text_a", "text_b"),
)
SINGLE_COLUMNS = ("sentence", "text", "content", "review", "document", "email", "text_a")
LABEL_COLUMNS = ("label", "labels", "class", "target", "category", "y")


@dataclass(frozen=True)
class ColumnSpec:
    """Which raw columns are the text (one or two) and which is the label."""

    text_columns: tuple[str, ...]
    label_column: str

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2


def resolve_columns(
    table: datasets.Dataset,
    text_columns: Sequence[str] | None,
    label_column: str | None,
    where: str,
) -> ColumnSpec:
    """Use the columns asked for, or detect them when exactly one choice fits."""
    names = list(table.column_names)
    label = _resolve_label(names, label_column, where)
    if text_columns:
        if not 1 <= len(text_columns) <= 2:
            raise SpruceError(
                f"--text-columns takes one or two names, got {len(text_columns)}",
                "pass 'a' for single texts or 'a,b' for sentence pairs",
            )
        for name in text_columns:
            _require_column(names, name, where, "--text-columns")
        return ColumnSpec(tuple(text_columns), label)
    for pair in PAIR_COLUMNS:
        if all(name in names for name in pair):
            return ColumnSpec(pair, label)
    singles = [name for name in SINGLE_COLUMNS if name in names]
    if len(singles) == 1:
        return ColumnSpec((singles[0],), label)
    others = [name for name in names if name != label and name not in ("idx", "id", "index")]
    if len(others) == 1:
        return ColumnSpec((others[0],), label)
    raise SpruceError(
        f"cannot tell which columns of {where} hold the text (columns: {', '.join(names)})",
        "pass --text-columns NAME or --text-columns FIRST,SECOND",
    )


def _resolve_label(names: list[str], label_column: str | None, where: str) -> str:
    if label_column:
        _require_column(names, label_column, where, "--label-column")
        return label_column
    found = [name for name in LABEL_COLUMNS if name in names]
    if not found:
        raise SpruceError(
            f"cannot tell which column of {where} holds the label (columns: {', '.join(names)})",
            "pass --label-column NAME",
        )
    return found[0]


def _require_column(names: list[str], name: str, where: str, option: str) -> None:
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"the columns are {', '.join(names)}"
    raise SpruceError(f"{option}: {where} has no column '{name}'", hint)


def infer_label_names(raw_labels: Sequence[object], where: str) -> list[str]:
    """Label names in id order: integer labels sort numerically (so ``0..K-1`` keep their
    value as id), any other labels sort as text."""
    values = {_label_text(value, where, row) for row, value in enumerate(raw_labels, start=1)}
    if all(_is_int(value) for value in values):
        return [str(i) for i in sorted(int(value) for value in values)]
    return sorted(values)


def _is_int(text: str) -> bool:
    # A bound on the digits: int() refuses strings of more than 4300, and ids that long are
    # names (hashes, barcodes) anyway, so they stay text.
    return re.fullmatch(r"-?[0-9]{1,100}", text) is not None


def _label_text(value: object, where: str, row: int) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise SpruceError(
            f"{where} row {row} has an empty label", "fill in the label or drop that row"
        )
    if _is_int(text):
        return str(int(text))
    if text.lower() in ("nan", "inf", "-inf", "none", "null"):
        raise SpruceError(
            f"{where} row {row} has the label '{text}'", "fill in a real label or drop that row"
        )
    return text


def to_canonical(
    table: datasets.Dataset, spec: ColumnSpec, label_names: Sequence[str], where: str
) -> datasets.Dataset:
    """Rename to ``text_a``/``text_b``/``label`` and map labels to ids in ``label_names``."""
    index = {name: i for i, name in enumerate(label_names)}
    raw = table[spec.label_column]
    labels: list[int] = []
    for row, value in enumerate(raw, start=1):
        text = _label_text(value, where, row)
        if text not in index:
            raise SpruceError(
                f"{where} row {row} has the label '{text}', which the training data does not "
                f"have (labels: {', '.join(label_names)})",
                "use the same labels in every split",
            )
        labels.append(index[text])
    columns = {"text_a": [_clean(text) for text in table[spec.text_columns[0]]]}
    if spec.is_pair:
        columns["text_b"] = [_clean(text) for text in table[spec.text_columns[1]]]
    columns["label"] = labels
    return datasets.Dataset.from_dict(columns)


def _clean(value: object) -> str:
    return "" if value is None else str(value).strip()
