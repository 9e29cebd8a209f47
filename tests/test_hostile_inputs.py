"""Hostile inputs end in a valid result or a :class:`SpruceError`, never a traceback or a hang.

Property-based (hypothesis) over the data loaders (``read_table``, ``load_task``), the
settings parsers (``TransferConfig``, ``PruneConfig``, ``AdapterConfig``) and the grid
parser; example-based regression tests pin each bug the properties found; a few hostile
files go through the real command line, which must print one line and exit 2.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import signal
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import datasets
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spruce.adapters.config import AdapterConfig
from spruce.cli.main import main
from spruce.data import TaskDataConfig, load_task, read_table, stratified_sample
from spruce.errors import SpruceError
from spruce.grid import check_runs, expand, load_grid
from spruce.pruning.config import PruneConfig
from spruce.train.config import TrainConfig
from spruce.transfer.config import TransferConfig
from tiny_models import make_tiny_model

T = TypeVar("T")
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECONDS_PER_EXAMPLE = 20


class Hang(Exception):
    """Not a SpruceError: a parser that takes this long fails the test."""


@contextlib.contextmanager
def time_limit(seconds: int = SECONDS_PER_EXAMPLE) -> Iterator[None]:
    """SIGALRM guard (pytest-timeout is not installed): an endless loop fails, not stalls."""

    def expire(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def valid_or_user_error(call: Callable[[], T]) -> T | SpruceError:
    """The result of ``call``, or the SpruceError it raised; anything else propagates."""
    with time_limit():
        try:
            return call()
        except SpruceError as error:
            message = error.one_line()
            assert message and "\n" not in message
            return error


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Module scope: hypothesis reruns the body, and function-scoped fixtures are not reset.
    return tmp_path_factory.mktemp("hostile")


# -- strategies --------------------------------------------------------------------------

COLUMN_NAMES = ["text", "sentence", "label", "premise", "hypothesis", "idx", "labels", ""]
AWKWARD_VALUES = [
    "",
    " ",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e999",
    "None",
    "null",
    "0",
    "1",
    "01",
    "-0",
    "9" * 30,
    "1" * 5000,
    '"',
    '""',
    "\ufeff",
    "\x00",
]
awkward_text = st.text(
    alphabet=st.sampled_from(list('ab ,\t"\r\n\\{}[]:é\ufeff\x00\u2028\x85')) | st.characters(),
    max_size=12,
)
cells = st.sampled_from(AWKWARD_VALUES) | awkward_text
names = st.sampled_from(COLUMN_NAMES) | awkward_text
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1"]


@st.composite
def delimited_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """A CSV/TSV-like file: header, rows of any width, mixed line endings and encodings."""
    suffix = draw(st.sampled_from([".csv", ".tsv"]))
    delimiter = "," if suffix == ".csv" else "\t"
    header = draw(st.lists(names, min_size=1, max_size=4))
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=5), max_size=8))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    lines = [delimiter.join(header)] + [delimiter.join(row) for row in rows]
    text = newline.join(lines) + draw(st.sampled_from(["", newline]))
    encoding = draw(st.sampled_from(ENCODINGS))
    return suffix, text.encode(encoding, errors="replace")


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: json.dumps writes NaN / Infinity
    | st.text(max_size=10)
    | st.sampled_from(AWKWARD_VALUES)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def jsonl_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """JSONL lines: objects with usual and odd keys, plus lists, numbers, garbage, deep
    nesting, huge integers and unpaired surrogate escapes."""
    row = st.dictionaries(names, json_values, max_size=4).map(json.dumps)
    odd_line = st.sampled_from(
        [
            "[1, 2]",
            "3",
            '"text"',
            "null",
            "{",
            '{"text": "a", "label": 1',
            '{"text": "\\ud800", "label": 1}',
            '{"\\udfff": "a", "label": 0}',
            '{"text": "a", "label": ' + "1" * 5000 + "}",
            "[" * 50_000 + "]" * 50_000,
            '{"text": ' + "[" * 50_000 + "]" * 50_000 + ', "label": 1}',
            '{"text": NaN, "label": Infinity}',
            "",
            "   ",
        ]
    )
    lines = draw(st.lists(row | odd_line, min_size=0, max_size=8))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    encoding = draw(st.sampled_from(ENCODINGS))
    suffix = draw(st.sampled_from([".jsonl", ".json"]))
    return suffix, newline.join(lines).encode(encoding, errors="replace")


def write_file(directory: Path, suffix: str, data: bytes) -> Path:
    path = directory / f"train{suffix}"
    path.write_bytes(data)
    return path


def check_table(result: datasets.Dataset | SpruceError) -> None:
    if isinstance(result, SpruceError):
        return
    assert len(result) > 0
    assert all(isinstance(name, str) and name for name in result.column_names)


def check_task(path: Path, max_train: int | None, shots: int | None, seed: int) -> None:
    # A sample size out of range is refused when the config is built, as a user error.
    task = valid_or_user_error(
        lambda: load_task(
            TaskDataConfig(
                train=str(path), max_train_samples=max_train, shots_per_class=shots, seed=seed
            )
        )
    )
    if isinstance(task, SpruceError):
        return
    labels = task.train["label"]
    assert len(set(labels)) >= 2
    assert all(0 <= label < task.num_labels for label in labels)
    assert all(isinstance(text, str) for text in task.train["text_a"])
    assert len(task.train) + (len(task.unlabelled) if task.unlabelled else 0) == (
        task.source_train_examples
    )


sample_sizes = st.none() | st.integers(min_value=-2, max_value=12)


# -- data loaders: properties --------------------------------------------------------------


@PROPERTY
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_random_bytes_are_read_or_refused(workdir: Path, data: bytes, suffix: str) -> None:
    check_table(valid_or_user_error(lambda: read_table(write_file(workdir, suffix, data))))


@PROPERTY
@given(file=delimited_files(), max_train=sample_sizes, seed=st.integers(0, 3))
def test_delimited_files_load_or_fail_cleanly(
    workdir: Path, file: tuple[str, bytes], max_train: int | None, seed: int
) -> None:
    path = write_file(workdir, *file)
    check_table(valid_or_user_error(lambda: read_table(path)))
    check_task(path, max_train, None, seed)


@PROPERTY
@given(file=jsonl_files(), shots=sample_sizes, seed=st.integers(0, 3))
def test_jsonl_files_load_or_fail_cleanly(
    workdir: Path, file: tuple[str, bytes], shots: int | None, seed: int
) -> None:
    path = write_file(workdir, *file)
    check_table(valid_or_user_error(lambda: read_table(path)))
    check_task(path, None, shots, seed)


@PROPERTY
@given(
    labels=st.lists(st.integers(0, 4), max_size=40),
    max_samples=st.none() | st.integers(-3, 50),
    shots=st.none() | st.integers(-3, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_sample_terminates_and_partitions(
    labels: list[int], max_samples: int | None, shots: int | None, seed: int
) -> None:
    result = valid_or_user_error(
        lambda: stratified_sample(labels, max_samples=max_samples, shots_per_class=shots, seed=seed)
    )
    if isinstance(result, SpruceError):
        return
    chosen, rest = result
    assert sorted(chosen + rest) == list(range(len(labels)))
    if max_samples is not None:
        assert len(chosen) == min(max_samples, len(labels))


# -- settings parsers: properties ----------------------------------------------------------


def settings_dicts(known: list[str], plausible: st.SearchStrategy[Any]) -> st.SearchStrategy:
    keys = st.sampled_from(known) | st.text(max_size=10)
    return st.dictionaries(keys, plausible | json_values, max_size=6)


aux_tasks = st.lists(
    st.dictionaries(
        st.sampled_from(["kind", "path", "weight", "text_columns", "label_column", "kindd"]),
        st.sampled_from(["mlm", "task", "distill", "x.tsv", 0.5, -1, ["a", "b"]]) | json_values,
        max_size=4,
    ),
    max_size=3,
)
transfer_values = (
    st.sampled_from(["none", "joint", "tied", "sequential", "masks", "warmup:3", "delayed:x"])
    | st.floats(-2, 20)
    | st.integers(-2, 20)
    | aux_tasks
)
prune_values = (
    st.sampled_from(["l0", "magnitude", "taylor", "head", "x.tsv"])
    | st.floats(-1, 12)
    | st.integers(-1, 12)
    | st.lists(st.sampled_from(["head", "ffn_neuron", "hidden", "neuron", 3]), max_size=3)
    | st.dictionaries(
        st.sampled_from(["temperature", "alpha", "task_weight", "teacher_layers", "beta"]),
        st.floats(-1, 3) | st.lists(st.integers(-1, 5), max_size=3) | json_values,
        max_size=3,
    )
)
adapter_values = (
    st.sampled_from(["splora", "sppara", "splopa", "splra", "query"])
    | st.floats(-1, 2)
    | st.integers(-1, 64)
    | st.lists(st.integers(0, 64) | st.text(max_size=6), max_size=3)
)


def field_names(cls: type) -> list[str]:
    return [name for name in cls.__dataclass_fields__]


@PROPERTY
@given(values=settings_dicts(field_names(TransferConfig), transfer_values))
def test_transfer_config_from_dict(values: dict[str, Any]) -> None:
    config = valid_or_user_error(lambda: TransferConfig.from_dict(values))
    if not isinstance(config, SpruceError):
        assert TransferConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@PROPERTY
@given(values=settings_dicts(field_names(PruneConfig), prune_values))
def test_prune_config_from_dict(values: dict[str, Any]) -> None:
    config = valid_or_user_error(lambda: PruneConfig.from_dict(values))
    if not isinstance(config, SpruceError):
        assert PruneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@PROPERTY
@given(values=settings_dicts(field_names(AdapterConfig), adapter_values))
def test_adapter_config_from_dict(values: dict[str, Any]) -> None:
    config = valid_or_user_error(lambda: AdapterConfig.from_dict(values))
    if not isinstance(config, SpruceError):
        assert AdapterConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# -- grid files: properties ------------------------------------------------------------------

# Real spellings of grid keys (paths, field names, command-line spellings), reserved ones too.
GRID_KEYS = [
    "train", "data.train", "method", "prune.method", "target-sparsity", "target_sparsity",
    "coupling", "transfer", "aux", "aux-weight", "trim-vocab", "no-latency", "seed", "out",
    "lr", "learning-rate", "prune", "units", "teacher",
]  # fmt: skip
option_names = st.sampled_from(GRID_KEYS) | st.text(max_size=8)
option_values = (
    st.sampled_from(["l0", "joint", "mlm", "train.tsv", 0.5, 0.9, True, False, None]) | json_scalars
)
axis_values = st.lists(
    option_values | st.dictionaries(option_names, option_values, max_size=2), max_size=3
)
grid_mappings = st.dictionaries(
    st.sampled_from(["name", "command", "out", "seeds", "jobs", "threads", "metric"])
    | st.text(max_size=6),
    json_values,
    max_size=4,
).flatmap(
    lambda top: st.fixed_dictionaries(
        {},
        optional={
            "base": st.dictionaries(option_names, option_values, max_size=3) | json_values,
            "grid": st.dictionaries(option_names, axis_values | json_values, max_size=3),
            "seeds": st.lists(st.integers(-1, 3), max_size=3) | json_values,
            "command": st.sampled_from(["prune", "adapt", "finetune"]) | json_values,
        },
    ).map(lambda extra: {**top, **extra})
)
yaml_texts = st.text(
    alphabet=st.sampled_from([*string.printable, "é", "\ufeff", "\x00", "\x85", "&", "*"]),
    max_size=200,
)


def check_grid(path: Path) -> None:
    spec = valid_or_user_error(lambda: load_grid(path))
    if isinstance(spec, SpruceError):
        return
    runs = valid_or_user_error(lambda: expand(spec))
    if not isinstance(runs, SpruceError):
        assert len({run.id for run in runs}) == len(runs)
        # Every run's settings build a config, or name what is wrong in one line.
        valid_or_user_error(lambda: check_runs(spec, runs))


@PROPERTY
@given(text=yaml_texts)
def test_random_yaml_text_is_a_grid_or_an_error(workdir: Path, text: str) -> None:
    path = workdir / "grid.yaml"
    path.write_text(text, encoding="utf-8")
    check_grid(path)


@PROPERTY
@given(mapping=grid_mappings)
def test_random_grid_mappings_are_a_grid_or_an_error(workdir: Path, mapping: dict) -> None:
    path = workdir / "grid.yaml"
    path.write_text(yaml.safe_dump(mapping, allow_unicode=True), encoding="utf-8")
    check_grid(path)


@PROPERTY
@given(data=st.binary(max_size=300))
def test_random_bytes_as_a_grid_file(workdir: Path, data: bytes) -> None:
    path = workdir / "grid.yaml"
    path.write_bytes(data)
    check_grid(path)


# -- regression tests for the bugs the properties found --------------------------------------


def user_error(call: Callable[[], object], *fragments: str) -> str:
    with time_limit(), pytest.raises(SpruceError) as caught:
        call()
    message = caught.value.one_line()
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_jsonl_integer_beyond_the_conversion_limit(tmp_path: Path) -> None:
    path = write_file(tmp_path, ".jsonl", b'{"text": "a", "label": ' + b"1" * 5000 + b"}\n")
    user_error(lambda: read_table(path), "line 1", "number with more than")


def test_jsonl_nesting_too_deep(tmp_path: Path) -> None:
    line = '{"text": "a", "label": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n"
    path = write_file(tmp_path, ".jsonl", line.encode())
    user_error(lambda: read_table(path), "line 2", "nested too deeply")


def test_jsonl_unpaired_surrogate_escape(tmp_path: Path) -> None:
    path = write_file(
        tmp_path, ".jsonl", b'{"text": "ok", "label": 0}\n{"text": "\\ud83d", "label": 1}\n'
    )
    user_error(lambda: read_table(path), "line 2", "surrogate")


def test_jsonl_key_with_a_nul_character(tmp_path: Path) -> None:
    path = write_file(tmp_path, ".jsonl", b'{"\\u0000": null, "label": 1}\n')
    user_error(lambda: read_table(path), "line 1", "NUL character")


def test_utf16_file_is_named_as_such(tmp_path: Path) -> None:
    for suffix in (".csv", ".jsonl"):
        body = "text,label\na,1\n" if suffix == ".csv" else '{"text": "a", "label": 1}\n'
        path = write_file(tmp_path, suffix, body.encode("utf-16"))
        user_error(lambda path=path: read_table(path), "UTF-16", "convert the file to UTF-8")


def test_nul_bytes_utf16_without_bom(tmp_path: Path) -> None:
    path = write_file(tmp_path, ".tsv", "sentence\tlabel\ngood\t1\n".encode("utf-16-le"))
    user_error(lambda: read_table(path), "NUL", "UTF-8")


def test_label_with_thousands_of_digits(tmp_path: Path) -> None:
    path = write_file(tmp_path, ".tsv", f"sentence\tlabel\na\t{'1' * 5000}\nb\t0\n".encode())
    task = load_task(TaskDataConfig(train=str(path)))
    assert sorted(task.label_names) == sorted(["0", "1" * 5000])


@pytest.mark.parametrize(("max_samples", "shots"), [(-1, None), (None, -2), (None, 0)])
def test_negative_sample_sizes_are_refused_not_looped_on(max_samples, shots) -> None:
    user_error(
        lambda: stratified_sample([0, 1, 0, 1], max_samples=max_samples, shots_per_class=shots),
        "at least 1",
    )


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_outside_numpys_range(seed: int) -> None:
    user_error(lambda: TrainConfig(seed=seed).validate(), "--seed", "0 and 4294967295")


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"aux": 3}, "transfer setting 'aux' must be a list"),
        ({"aux": "mlm"}, "transfer setting 'aux' must be a list"),
        ({"aux": [{"kind": "mlm", "weight": "x"}]}, "aux setting 'weight' must be a finite number"),
        ({"aux": [{"kindd": "mlm"}]}, "did you mean 'kind'"),
        ({"aux": [{}]}, "aux setting 'kind' is missing"),
        ({"schedule": 3}, "'schedule' must be text"),
        ({"tie_strength": "strong"}, "'tie_strength' must be a finite number"),
        ({"tie_strength": math.nan}, "'tie_strength' must be a finite number"),
        ({"aux_batch_size": 0, "aux": [{"kind": "mlm"}]}, "--aux-batch-size must be at least 1"),
    ],
)
def test_transfer_config_bad_values(values: dict, fragment: str) -> None:
    user_error(lambda: TransferConfig.from_dict(values), fragment)


def test_transfer_config_null_aux_still_means_none() -> None:
    assert TransferConfig.from_dict({"aux": None}) == TransferConfig().validate()


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"target_sparsity": "0.9"}, "'target_sparsity' must be a finite number"),
        ({"units": 3}, "'units' must be a list (text each) or null"),
        ({"distillation": 1}, "'distillation' must be a mapping"),
        ({"distillation": {"beta": 1}}, "unknown distillation setting 'beta'"),
        ({"distill": "yes"}, "'distill' must be true or false"),
        ({"prune_max_steps": 0}, "--prune-max-steps must be at least 1"),
        ({"prune_rounds": 1.5}, "'prune_rounds' must be a whole number"),
    ],
)
def test_prune_config_bad_values(values: dict, fragment: str) -> None:
    user_error(lambda: PruneConfig.from_dict(values), fragment)


def test_empty_lists_round_trip_as_null() -> None:
    prune = PruneConfig.from_dict({"distillation": {"teacher_layers": []}})
    assert PruneConfig.from_dict(prune.to_dict()) == prune
    transfer = TransferConfig.from_dict({"aux": [{"kind": "mlm", "text_columns": []}]})
    assert TransferConfig.from_dict(transfer.to_dict()) == transfer


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"kind": 3}, "adapter kind must be a name"),
        ({"kind": ["splora"]}, "adapter kind must be a name"),
        ({"target_modules": 5}, "target_modules must be a list"),
        ({"trainable": {"classifier": 1}}, "trainable must be a list"),
    ],
)
def test_adapter_config_bad_values(values: dict, fragment: str) -> None:
    user_error(lambda: AdapterConfig.from_dict(values), fragment)


def test_grid_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    user_error(lambda: load_grid(path), "not UTF-8", "convert")


def test_grid_file_nested_too_deeply(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("base: " + "[" * 5000 + "]" * 5000 + "\n")
    user_error(lambda: load_grid(path), "nested too deeply")


# -- example-based edge cases the brief names ------------------------------------------------


def test_two_megabyte_field_is_read(tmp_path: Path) -> None:
    big = "word " * 400_000
    for suffix, body in (
        (".csv", f'text,label\n"{big}",1\nshort,0\n'),
        (".tsv", f"text\tlabel\n{big}\t1\nshort\t0\n"),
        (".jsonl", json.dumps({"text": big, "label": 1}) + '\n{"text": "short", "label": 0}\n'),
    ):
        path = write_file(tmp_path, suffix, body.encode())
        with time_limit():
            task = load_task(TaskDataConfig(train=str(path)))
        assert len(task.train) == 2
        assert max(len(text) for text in task.train["text_a"]) == len(big.strip())


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("text\tlabel\na\t\nb\t1\n", "row 1 has an empty label"),
        ("text\tlabel\na\tnan\nb\t1\n", "has the label 'nan'"),
        ("text\tlabel\na\tinf\nb\t1\n", "has the label 'inf'"),
        ("text\tlabel\na\t1\n", "single class"),
        ("text\tlabel\n", "holds no rows"),
        ("text\tlabel\ttext\na\t1\tb\n", "duplicate column names"),
        ("text\tlabel\na\t1\textra\n", "has 3 fields but the header has 2"),
    ],
)
def test_bad_labels_and_shapes(tmp_path: Path, body: str, fragment: str) -> None:
    path = write_file(tmp_path, ".tsv", body.encode())
    user_error(lambda: load_task(TaskDataConfig(train=str(path))), fragment)


def test_nan_as_text_is_kept_as_text(tmp_path: Path) -> None:
    path = write_file(tmp_path, ".jsonl", b'{"text": NaN, "label": 1}\n{"text": "b", "label": 0}\n')
    assert load_task(TaskDataConfig(train=str(path))).train["text_a"] == ["nan", "b"]


def test_bom_and_crlf_together(tmp_path: Path) -> None:
    path = write_file(tmp_path, ".csv", codecs.BOM_UTF8 + b"text,label\r\na,1\r\nb,0\r\n")
    task = load_task(TaskDataConfig(train=str(path)))
    assert task.train["text_a"] == ["a", "b"]


def test_nested_objects_become_json_text(tmp_path: Path) -> None:
    path = write_file(
        tmp_path,
        ".jsonl",
        b'{"text": {"a": [1, {"b": null}]}, "label": 1}\n{"text": "x", "label": 0}\n',
    )
    task = load_task(TaskDataConfig(train=str(path)))
    assert json.loads(task.train["text_a"][0]) == {"a": [1, {"b": None}]}


# -- the command line: one line, exit code 2 --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("hostile-model") / "bert", "bert")


HOSTILE_FILES = {
    "utf16.tsv": "sentence\tlabel\ngood\t1\nbad\t0\n".encode("utf-16"),
    "binary.csv": bytes(range(256)) * 4,
    "list-line.jsonl": b'{"text": "a", "label": 1}\n[1, 2]\n',
    "huge-int.jsonl": b'{"text": "a", "label": ' + b"7" * 5000 + b"}\n",
    "deep.jsonl": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "surrogate.jsonl": b'{"text": "\\udc00", "label": 1}\n{"text": "b", "label": 0}\n',
    "nan-labels.csv": b"text,label\na,NaN\nb,1\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_cli_prints_one_line_for_a_hostile_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path, name: str
) -> None:
    train = tmp_path / name
    train.write_bytes(HOSTILE_FILES[name])
    out = tmp_path / "run"
    args = ["finetune", "--model", tiny_model, "--train", train, "--out", out]
    capsys.readouterr()
    with time_limit(60):
        code = main([str(a) for a in [*args, "--device", "cpu", "--quiet", "--max-steps", "1"]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("spruce: error: ") and err.count("\n") == 1, err
    assert name in err
    assert not out.exists()


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_cli_seed_out_of_range(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path, seed: str
) -> None:
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    capsys.readouterr()
    args = ["finetune", "--model", str(tiny_model), "--train", str(train), "--seed", seed]
    try:  # the parser rejects it (the range is the config's), exiting as argparse does
        code = main([*args, "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--seed" in err, err
    assert "between 0 and 4294967295" in err and not (tmp_path / "run").exists()


def test_cli_grid_file_in_latin1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_bytes("name: r\xe9sum\xe9\nout: x\n".encode("latin-1"))
    capsys.readouterr()
    code = main(["grid", str(grid), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "grid.yaml" in err, err
