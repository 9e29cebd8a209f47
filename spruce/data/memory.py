"""Data handed over in memory by a Python caller (``spruce.finetune(train=rows)``).

A split given as rows, columns, a pandas ``DataFrame`` or a ``datasets.Dataset`` becomes
a :class:`datasets.Dataset` of raw columns, exactly what :func:`~spruce.data.read_table`
returns for a file, so column detection, label mapping and sampling treat it alike. The
run's settings then record where the split came from as a marker
(``<in-memory: 1,000 rows, sha256 0123456789ab>``) in place of a path: the report says
what was read, the digest tells two tables of the same size apart (a checkpoint of one
is not resumed with the other), and a rerun from that report stops with one line asking
for the data again.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from spruce.errors import SpruceError

MARKER_PREFIX = "<in-memory:"
# The task's name in reports when its training data came from memory and no name is given.
IN_MEMORY_TASK_NAME = "in-memory"


def is_in_memory(source: object) -> bool:
    """Whether a split's recorded source is the marker of data given in memory."""
    return isinstance(source, str) and source.startswith(MARKER_PREFIX)


def describe_table(table: datasets.Dataset) -> str:
    """The marker a run's settings hold for ``table``: its size and a digest of its rows."""
    digest = hashlib.sha256()
    digest.update(json.dumps(table.column_names).encode())
    for batch in table.iter(batch_size=1000):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return f"{MARKER_PREFIX} {len(table):,} rows, sha256 {digest.hexdigest()[:12]}>"


def in_memory_table(value: Any, what: str, *, texts: bool = False) -> datasets.Dataset:
    """``value`` as a dataset of raw columns: a ``datasets.Dataset``, a pandas
    ``DataFrame``, a list of row dicts or a dict of equally long column lists; with
    ``texts`` also a list of strings (one document each, for unlabelled text). ``what``
    names the argument in errors."""
    try:
        table = _to_dataset(value, what, texts)
    except SpruceError:
        raise
    except Exception as error:  # pyarrow's type inference raises several types
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise SpruceError(
            f"{what} cannot be read as a table ({reason})",
            "give every row the same columns, each holding one type",
        ) from None
    if len(table) == 0:
        raise SpruceError(f"{what} holds no rows", "give at least one row")
    return table


def _to_dataset(value: Any, what: str, texts: bool) -> datasets.Dataset:
    if isinstance(value, datasets.Dataset):
        return value
    if isinstance(value, datasets.DatasetDict):
        raise SpruceError(
            f"{what} is a DatasetDict of splits {', '.join(value)}",
            "give one split, e.g. dataset['train']",
        )
    if _is_dataframe(value):
        return datasets.Dataset.from_pandas(value, preserve_index=False)
    if isinstance(value, Mapping):
        if not all(_is_sequence(column) for column in value.values()):
            raise SpruceError(
                f"{what} is a mapping whose values are not all column lists",
                "give rows (a list of dicts), columns ({'text': [...], 'label': [...]}), "
                "a pandas DataFrame, a datasets.Dataset or a file path",
            )
        return datasets.Dataset.from_dict({str(k): list(v) for k, v in value.items()})
    if _is_sequence(value):
        rows = list(value)
        if texts and rows and all(isinstance(row, str) for row in rows):
            return datasets.Dataset.from_dict({"text": rows})
        if all(isinstance(row, Mapping) for row in rows):
            return datasets.Dataset.from_list([dict(row) for row in rows])
        kinds = sorted({type(row).__name__ for row in rows if not isinstance(row, Mapping)})
        raise SpruceError(
            f"{what} is a list of {', '.join(kinds)}, not of rows",
            "give each row as a dict of its columns, e.g. {'text': ..., 'label': ...}"
            + ("; or a list of strings, one document each" if texts else ""),
        )
    raise SpruceError(
        f"{what} cannot be data of type {type(value).__name__}",
        "give a file path, rows (a list of dicts), columns (a dict of lists), a pandas "
        "DataFrame or a datasets.Dataset",
    )


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _is_dataframe(value: Any) -> bool:
    """A pandas DataFrame, without importing pandas (an object of it means it is loaded)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)
