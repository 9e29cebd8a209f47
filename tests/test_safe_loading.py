"""Weights that would run code when unpickled are refused, never executed.

Each malicious file holds an object whose ``__reduce__`` calls ``exec`` to write a marker
file. spruce reads weights with safetensors or ``torch.load(weights_only=True)`` (directly,
or through transformers' loaders), and ``.npz`` files with ``allow_pickle=False``; every
case must leave the marker absent and end with a one-line :class:`SpruceError`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spruce.cli.main import main
from spruce.errors import SpruceError
from spruce.models.loading import load_classifier, load_saved_classifier
from spruce.vision import load_cnn, load_images
from tiny_models import make_tiny_model, write_sentiment_files


class Payload:
    """Unpickling this writes ``marker``: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def malicious_state_dict(path: Path, marker: Path, key: str = "weight") -> Path:
    torch.save({key: Payload(marker)}, path)  # zip format, as a real checkpoint
    return path


def one_line_error(call) -> str:
    with pytest.raises(SpruceError) as caught:
        call()
    message = caught.value.one_line()
    assert "\n" not in message
    return message


def test_the_payload_is_real(tmp_path: Path) -> None:
    """Control: an unsafe loader would run it, so the tests below are not vacuous."""
    marker = tmp_path / "control-marker"
    path = malicious_state_dict(tmp_path / "evil.pth", marker)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


# -- transformers model directories --------------------------------------------------------


def pickled_model_dir(root: Path, marker: Path, *, fine_tuned: bool = False) -> Path:
    """A tiny BERT folder whose only weights file is a malicious ``pytorch_model.bin``."""
    directory = make_tiny_model(root, "bert")
    (directory / "model.safetensors").unlink()
    malicious_state_dict(
        directory / "pytorch_model.bin", marker, "bert.embeddings.word_embeddings.weight"
    )
    if fine_tuned:  # what spruce eval checks before it reads any weights
        config_path = directory / "config.json"
        config = json.loads(config_path.read_text())
        config["spruce_task"] = {
            "task": "sst",
            "text_columns": ["sentence"],
            "label_column": "label",
            "max_length": 16,
        }
        config["id2label"] = {"0": "0", "1": "1"}
        config["label2id"] = {"0": 0, "1": 1}
        config_path.write_text(json.dumps(config))
    return directory


def test_load_classifier_refuses_a_pickled_bin(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    model = pickled_model_dir(tmp_path / "model", marker)
    message = one_line_error(lambda: load_classifier(str(model), ["neg", "pos"]))
    assert "pytorch_model.bin is not a safe weights file" in message
    assert "safetensors" in message
    assert not marker.exists()


def test_load_saved_classifier_refuses_a_pickled_bin(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    model = pickled_model_dir(tmp_path / "model", marker, fine_tuned=True)
    message = one_line_error(lambda: load_saved_classifier(model))
    assert "not a safe weights file" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("model.safetensors", b"not a safetensors header"),
        ("model.safetensors", b""),
        ("pytorch_model.bin", b""),
        ("pytorch_model.bin", b"PK\x03\x04 a broken zip"),
    ],
)
def test_corrupt_weights_are_a_user_error(tmp_path: Path, name: str, data: bytes) -> None:
    model = make_tiny_model(tmp_path / "model", "bert")
    (model / "model.safetensors").unlink()
    (model / name).write_bytes(data)
    message = one_line_error(lambda: load_classifier(str(model), ["neg", "pos"]))
    assert "weights" in message


def run_cli(capsys: pytest.CaptureFixture[str], args: list[object]) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, marker: Path) -> None:
    assert code == 2, err
    assert err.startswith("spruce: error: ") and err.count("\n") == 1, err
    assert "not a safe weights file" in err and "safetensors" in err, err
    assert not marker.exists()


def test_cli_finetune_refuses_a_pickled_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    model = pickled_model_dir(tmp_path / "model", marker)
    data = write_sentiment_files(tmp_path / "data", n_train=8)
    out = tmp_path / "run"
    args = ["finetune", "--model", model, "--train", data["train"], "--out", out]
    code, err = run_cli(capsys, [*args, "--device", "cpu", "--quiet", "--max-steps", "1"])
    assert_refused(code, err, marker)
    assert str(model / "pytorch_model.bin") in err
    assert not out.exists()


def test_cli_eval_refuses_a_pickled_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    model = pickled_model_dir(tmp_path / "model", marker, fine_tuned=True)
    data = write_sentiment_files(tmp_path / "data", n_train=8)
    code, err = run_cli(
        capsys, ["eval", "--model", model, "--data", data["test"], "--device", "cpu"]
    )
    assert_refused(code, err, marker)


# -- vision: CNN state dicts and .npz images ----------------------------------------------


def test_load_cnn_refuses_a_pickled_pth(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = malicious_state_dict(tmp_path / "evil.pth", marker, "_fc.weight")
    for call in (
        lambda: load_cnn("efficientnet-lite0", 10, weights=path),
        lambda: load_cnn(str(path), 10),
    ):
        message = one_line_error(call)
        assert "not a safe weights file" in message and "safetensors" in message
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_load_cnn_refuses_a_raw_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"_fc.weight": Payload(marker)}))
    assert "not a safe weights file" in one_line_error(
        lambda: load_cnn("efficientnet-lite0", 10, weights=path)
    )
    assert not marker.exists()


def test_load_cnn_reads_safetensors(tmp_path: Path) -> None:
    model = load_cnn("efficientnet-lite0", 4)
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    again = load_cnn(str(path), 4)
    assert torch.equal(again.classifier.weight, model.classifier.weight)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
    assert "not a safe weights file" in one_line_error(
        lambda: load_cnn(str(tmp_path / "broken.safetensors"), 4)
    )


def test_load_images_refuses_object_arrays(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "images.npz"
    np.savez(
        path,
        images=np.array([Payload(marker)], dtype=object),
        labels=np.array([0]),
    )
    message = one_line_error(lambda: load_images(path))
    assert "cannot read" in message and "Object arrays" in message
    assert not marker.exists()


def test_load_images_refuses_a_pickle_named_npz(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "images.npz"
    path.write_bytes(pickle.dumps({"images": Payload(marker)}))
    assert "cannot read" in one_line_error(lambda: load_images(path))
    assert not marker.exists()
