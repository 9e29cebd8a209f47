"""User mistakes end with exit code 2, one ``spruce: error:`` line, no traceback, no output.

Every case here fails before training starts, so a tiny random BERT is enough as --model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spruce.cli.main import main
from tiny_models import make_tiny_model, write_jsonl, write_sentiment_files


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-assets")
    files = write_sentiment_files(root / "sst", n_train=16)
    return {"model": make_tiny_model(root / "m", "bert"), **files}


def run_cli(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("spruce: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert out == ""


def assert_nothing_written(out_dir: Path) -> None:
    assert not out_dir.exists()
    assert [p.name for p in out_dir.parent.iterdir() if ".tmp-" in p.name] == []


def finetune(assets: dict[str, Path], out: Path, *extra: object) -> list[object]:
    base = ["finetune", "--model", assets["model"], "--out", out, "--device", "cpu", "--quiet"]
    return [*base, *extra]


def check_finetune_error(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    assets: dict[str, Path],
    extra: list[object],
    *fragments: str,
) -> str:
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, finetune(assets, out, *extra))
    assert_user_error(code, stdout, err, *fragments)
    assert_nothing_written(out)
    return err


def test_missing_train_file(capsys, tmp_path, assets) -> None:
    missing = tmp_path / "missing.tsv"
    check_finetune_error(capsys, tmp_path, assets, ["--train", missing], str(missing), "exist")


def test_unknown_text_column_suggests_the_close_name(capsys, tmp_path, assets) -> None:
    err = check_finetune_error(
        capsys,
        tmp_path,
        assets,
        ["--train", assets["train"], "--text-columns", "sentense"],
        "no column 'sentense'",
    )
    assert "did you mean 'sentence'?" in err


def test_unknown_label_column(capsys, tmp_path, assets) -> None:
    check_finetune_error(
        capsys,
        tmp_path,
        assets,
        ["--train", assets["train"], "--label-column", "stars"],
        "--label-column",
        "no column 'stars'",
    )


def test_single_class_in_training_file(capsys, tmp_path, assets) -> None:
    train = tmp_path / "one.tsv"
    train.write_text("sentence\tlabel\ngood film\t1\ngreat film\t1\n")
    check_finetune_error(capsys, tmp_path, assets, ["--train", train], "single class ('1')")


@pytest.mark.parametrize("name", ["empty.tsv", "empty.jsonl"])
def test_empty_file(capsys, tmp_path, assets, name) -> None:
    train = tmp_path / name
    train.write_text("")
    check_finetune_error(capsys, tmp_path, assets, ["--train", train], f"{name} is empty")


def test_header_only_file(capsys, tmp_path, assets) -> None:
    train = tmp_path / "header.tsv"
    train.write_text("sentence\tlabel\n")
    check_finetune_error(capsys, tmp_path, assets, ["--train", train], "holds no rows")


def test_unknown_model(capsys, tmp_path, assets, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = ["finetune", "--model", "./no/such/model", "--train", assets["train"], "--out", out]
    code, stdout, err = run_cli(capsys, args)
    assert_user_error(code, stdout, err, "--model ./no/such/model does not exist")
    assert_nothing_written(out)


def test_model_directory_without_a_model(capsys, tmp_path, assets) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    out = tmp_path / "run"
    args = ["finetune", "--model", empty, "--train", assets["train"], "--out", out]
    code, stdout, err = run_cli(capsys, args)
    assert_user_error(code, stdout, err, "unknown model", str(empty))
    assert_nothing_written(out)


def test_malformed_jsonl_line(capsys, tmp_path, assets) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "good", "label": 1}] * 2)
    with train.open("a") as handle:
        handle.write('{"text": "bad", "label": 0\n')
    check_finetune_error(
        capsys, tmp_path, assets, ["--train", train], "train.jsonl line 3", "not valid JSON"
    )


def test_tsv_line_with_a_stray_tab(capsys, tmp_path, assets) -> None:
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\ngood\t1\nbad\tfilm\t0\n")
    check_finetune_error(
        capsys, tmp_path, assets, ["--train", train], "line 3 has 3 fields but the header has 2"
    )


def test_validation_label_unknown_to_training(capsys, tmp_path, assets) -> None:
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\ngood\t1\nmeh\t7\n")
    check_finetune_error(
        capsys,
        tmp_path,
        assets,
        ["--train", assets["train"], "--validation", dev],
        "row 2 has the label '7'",
    )


def test_too_many_shots_per_class(capsys, tmp_path, assets) -> None:
    check_finetune_error(
        capsys,
        tmp_path,
        assets,
        ["--train", assets["train"], "--shots-per-class", "50"],
        "has only 8 training examples",
    )


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--max-train-samples", "0"], ["--max-train-samples", "positive whole number", "'0'"]),
        (["--max-train-samples", "abc"], ["--max-train-samples", "whole number", "'abc'"]),
        (["--epochs", "-1"], ["--epochs", "positive", "'-1'"]),
        (["--epochs", "nan"], ["--epochs", "'nan'"]),
        (["--warmup-ratio", "1.5"], ["--warmup-ratio", "[0, 1)", "'1.5'"]),
        (["--metric", "foo"], ["--metric", "invalid choice: 'foo'", "accuracy"]),
        (
            ["--max-train-samples", "8", "--shots-per-class", "2"],
            ["--shots-per-class", "not allowed with argument --max-train-samples"],
        ),
        (["--text-columns", "a,,b"], ["--text-columns", "comma-separated"]),
        (["--no-such-option"], ["unrecognized arguments: --no-such-option"]),
    ],
)
def test_bad_option_values(capsys, tmp_path, assets, extra, fragments) -> None:
    check_finetune_error(capsys, tmp_path, assets, ["--train", assets["train"], *extra], *fragments)


def test_missing_required_option(capsys, tmp_path, assets) -> None:
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, ["finetune", "--model", assets["model"], "--out", out])
    assert_user_error(code, stdout, err, "required", "--train")
    assert_nothing_written(out)


def test_existing_out_is_not_replaced_without_overwrite(capsys, tmp_path, assets) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("previous results")
    code, stdout, err = run_cli(capsys, finetune(assets, out, "--train", assets["train"]))
    assert_user_error(code, stdout, err, "already exists and is not empty", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "previous results"
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_out_that_is_a_file(capsys, tmp_path, assets) -> None:
    out = tmp_path / "run"
    out.write_text("not a directory")
    code, stdout, err = run_cli(capsys, finetune(assets, out, "--train", assets["train"]))
    assert_user_error(code, stdout, err, "is not a directory")
    assert out.read_text() == "not a directory"


def test_out_under_a_file(capsys, tmp_path, assets) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "such" / "run"
    code, stdout, err = run_cli(capsys, finetune(assets, out, "--train", assets["train"]))
    assert_user_error(code, stdout, err, "which is a file")
    assert (tmp_path / "file").read_text() == "x"


def test_eval_on_a_directory_without_a_model(capsys, tmp_path, assets) -> None:
    code, stdout, err = run_cli(
        capsys, ["eval", "--model", tmp_path, "--data", assets["test"], "--device", "cpu"]
    )
    assert_user_error(code, stdout, err, "holds no saved model", "config.json")


def test_eval_on_a_model_not_fine_tuned_by_spruce(capsys, tmp_path, assets) -> None:
    code, stdout, err = run_cli(
        capsys, ["eval", "--model", assets["model"], "--data", assets["test"], "--device", "cpu"]
    )
    assert_user_error(code, stdout, err, "not a model fine-tuned by spruce")


def test_console_script_reports_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "spruce", "finetune", "--train", "missing.tsv", "--out", "X"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spruce: error: ")
    assert "missing.tsv does not exist" in lines[0]
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []
