"""Golden outputs: fixed-seed CPU runs on tiny models whose results a refactor must not move.

Each run is one command line over the tiny models and toy data of ``tiny_models``; its
digest is the SHA-256 of every ``*.safetensors`` file it wrote (the tensors bit for bit, the
header as sorted JSON, the run's folder spelled ``<root>``) and its report.json without
what differs between two identical runs (times, latencies, the platform, the run's
folder). ``tests/golden/outputs.json`` holds the digests recorded before a redesign, one
recording per machine kind;
``tests/test_golden.py`` reruns every command and compares. To record them again (only
when a change is meant to move results, saying so in the commit):

    python tests/golden.py --record
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model, write_sentiment_files

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
# Keys whose values differ between two runs of the same command on the same machine.
UNSTABLE = {"wall_time_s", "train_time_s", "latency_ms", "latency", "platform"}
ROOT = "<root>"

Argv = list[str]


def _data(root: Path) -> list[str]:
    files = root / "data"
    return ["--train", str(files / "train.tsv"), "--validation", str(files / "validation.tsv"),
            "--test", str(files / "test.tsv")]  # fmt: skip


def _prune(root: Path, out: Path, *extra: str) -> Argv:
    return [
        "prune", "--model", str(root / "bert"), *_data(root), "--learning-rate", "5e-3",
        "--batch-size", "16", "--prune-epochs", "2", "--final-epochs", "1",
        "--target-sparsity", "0.5", "--no-latency", "--threads", "1", "--quiet",
        "--out", str(out), *extra,
    ]  # fmt: skip


def _finetune(root: Path, out: Path) -> Argv:
    return ["finetune", "--model", str(root / "bert"), *_data(root), "--epochs", "2",
            "--learning-rate", "5e-3", "--batch-size", "16", "--threads", "1", "--quiet",
            "--out", str(out)]  # fmt: skip


def _adapt_text(root: Path, out: Path) -> Argv:
    return [
        "adapt", "--model", str(root / "bert"), *_data(root), "--learning-rate", "1e-2",
        "--batch-size", "16", "--rank", "3", "--target-sparsity", "0.5", "--prune-rounds",
        "2", "--epochs-per-round", "1", "--final-epochs", "1", "--no-latency", "--threads",
        "1", "--quiet", "--out", str(out),
    ]  # fmt: skip


def _adapt_cnn(root: Path, out: Path) -> Argv:
    images = root / "images"
    return [
        "adapt", "--train", str(images / "train.npz"), "--test", str(images / "test.npz"),
        "--criterion", "weight", "--target-sparsity", "0.3", "--prune-rounds", "1",
        "--max-steps", "1", "--batch-size", "8", "--no-latency", "--threads", "1", "--quiet",
        "--out", str(out),
    ]  # fmt: skip


def _grid(root: Path, out: Path) -> Argv:
    files = root / "data"
    spec = root / "grid.yaml"
    spec.write_text(
        "name: golden\nseeds: [0]\njobs: 1\nthreads: 1\nbase:\n"
        f"  model: {root / 'bert'}\n  train: {files / 'train.tsv'}\n"
        f"  validation: {files / 'validation.tsv'}\n  test: {files / 'test.tsv'}\n"
        "  max-train-samples: 64\n  learning-rate: 5e-3\n  batch-size: 16\n"
        "  prune-epochs: 2\n  final-epochs: 1\n  target-sparsity: 0.5\n  no-latency: true\n"
        "grid:\n  coupling: [none, joint]\n  aux: [mlm]\n"
    )
    return ["grid", str(spec), "--out", str(out)]


MLM = ("--max-train-samples", "64", "--aux", "mlm", "--coupling", "joint")
RUNS: dict[str, Callable[[Path, Path], Argv]] = {
    "finetune": _finetune,
    # The default recipe: a teacher fine-tuned first; without, then with, unlabelled rows.
    "prune-default": lambda root, out: _prune(root, out),
    "prune-default-unlabelled": lambda root, out: _prune(root, out, "--max-train-samples", "64"),
    **{
        f"prune-{method}-{aux}": (
            lambda root, out, method=method, extra=extra: _prune(
                root, out, "--recipe", "plain", "--method", method, *extra
            )
        )
        for method in ("l0", "pdp", "magnitude", "taylor")
        for aux, extra in (("plain", ()), ("mlm", MLM))
    },
    "adapt-text": _adapt_text,
    "adapt-cnn": _adapt_cnn,
    "grid": _grid,
}


def machine() -> dict[str, str]:
    """What float results depend on besides the code: bit-identity holds on one kind of CPU
    under one torch; elsewhere kernels may sum in another order."""
    import platform

    import torch

    model = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
        platform.machine(),
    )
    return {
        "cpu": model,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def make_inputs(root: Path) -> None:
    """The tiny model, the toy sentiment task and the toy images every run reads."""
    make_tiny_model(root / "bert", "bert")
    write_sentiment_files(root / "data")
    (root / "images").mkdir()
    for split, count, seed in (("train", 16, 0), ("test", 6, 1)):
        rng = np.random.default_rng(seed)
        labels = np.arange(count) % 3
        images = rng.integers(0, 256, size=(count, 20, 20, 3), dtype=np.uint8)
        images[..., 0] = (labels * 100)[:, None, None].astype(np.uint8)  # a learnable signal
        np.savez(root / "images" / f"{split}.npz", images=images, labels=labels,
                 label_names=np.array(["a", "b", "c"]))  # fmt: skip


def stable(value: object, root: str) -> object:
    """``value`` without the keys of UNSTABLE and with the run's root folder spelled ROOT."""
    if isinstance(value, dict):
        return {k: stable(v, root) for k, v in value.items() if k not in UNSTABLE}
    if isinstance(value, list):
        return [stable(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, ROOT)
    return value


def digest(out: Path, root: Path) -> dict:
    """Weights (a hash per safetensors file) and stable reports of everything under out."""
    return {
        "weights": {
            str(f.relative_to(out)): weights_hash(f, root)
            for f in sorted(out.rglob("*.safetensors"))
        },
        "reports": {
            str(f.relative_to(out)): stable(json.loads(f.read_text()), str(root))
            for f in sorted(out.rglob("report.json"))
        },
    }


def weights_hash(path: Path, root: Path) -> str:
    """SHA-256 of a safetensors file's tensor bytes and of its header read as JSON with
    sorted keys: the writer orders metadata keys differently from one process to the next
    (a hash map), which changes the bytes but not the file's content."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    canonical = json.dumps(stable(header, str(root)), sort_keys=True).encode()
    return hashlib.sha256(canonical + raw[8 + size :]).hexdigest()


def run(name: str, root: Path) -> dict:
    """Run ``name`` under ``root`` (made by make_inputs) and return its digest."""
    from spruce.cli.main import main

    out = root / "runs" / name
    code = main(RUNS[name](root, out))
    if code != 0:
        raise RuntimeError(f"golden run {name} exited {code}")
    return digest(out, root)


def record() -> None:
    """Rerun every command and store its digest as this machine kind's recording, keeping
    the recordings of other kinds (CI and development machines differ)."""
    with tempfile.TemporaryDirectory() as tmp:
        # One fixed folder name, so that the paths in the reports do not depend on tmp.
        root = Path(tmp) / "golden"
        root.mkdir()
        make_inputs(root)
        runs = {name: run(name, root) for name in RUNS}
        shutil.rmtree(root)
    here = machine()
    others = [r for r in recordings() if r["machine"] != here]
    GOLDEN.parent.mkdir(exist_ok=True)
    outputs = {"recordings": [*others, {"machine": here, "runs": runs}]}
    GOLDEN.write_text(json.dumps(outputs, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(RUNS)} runs for {here} in {GOLDEN}")


def recordings() -> list[dict]:
    """Every stored recording: a machine kind and the digests of every run on it."""
    if not GOLDEN.exists():
        return []
    stored = json.loads(GOLDEN.read_text())
    return stored.get("recordings", [stored] if "runs" in stored else [])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="rerun and rewrite the digests")
    if parser.parse_args().record:
        record()
