"""Write scikit-learn's handwritten digits as RGB train/test ``.npz`` files (offline).

The 1,797 8x8 digits ship inside scikit-learn, so this image task needs no download. The
16 grey levels are scaled to 0..255, upsampled with bilinear interpolation and repeated
over three channels; the split is stratified and seeded, so every run writes the same
files. Usage::

    python examples/digits/prepare.py runs/digits-data [--size 32] [--test-fraction 0.25]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from spruce.data.sampling import stratified_sample
from spruce.errors import SpruceError
from spruce.utils.atomic import staged_output_dir


def prepare_digits(
    out: Path,
    size: int = 32,
    test_fraction: float = 0.25,
    seed: int = 0,
    max_samples: int | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``out/train.npz`` and ``out/test.npz``; returns their paths.

    Each holds ``images`` (N, size, size, 3) uint8, ``labels`` (N,) int64 and
    ``label_names`` ("0".."9"). ``max_samples`` keeps a stratified subset first (tests).
    """
    if size < 8:
        raise SpruceError(f"--size {size} is smaller than the 8x8 source", "use --size 8 or more")
    if not 0.0 < test_fraction < 1.0:
        raise SpruceError(f"--test-fraction {test_fraction} is outside (0, 1)", "use e.g. 0.25")
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    if max_samples is not None:
        chosen, _ = stratified_sample(labels.tolist(), max_samples=max_samples, seed=seed)
        images, labels = images[chosen], labels[chosen]
    pixels = torch.from_numpy(images / 16.0).float()[:, None]
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    rgb = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    rgb = rgb.permute(0, 2, 3, 1).numpy()
    train_rows, test_rows = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    names = np.array([str(c) for c in range(10)])
    with staged_output_dir(Path(out), overwrite=overwrite) as staging:
        for split, rows in (("train", np.sort(train_rows)), ("test", np.sort(test_rows))):
            np.savez_compressed(
                staging / f"{split}.npz", images=rgb[rows], labels=labels[rows], label_names=names
            )
    return {split: Path(out) / f"{split}.npz" for split in ("train", "test")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to write train.npz and test.npz into")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-samples", type=int, default=None, help="stratified subset")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty folder")
    args = parser.parse_args(argv)
    try:
        paths = prepare_digits(
            args.out, args.size, args.test_fraction, args.seed, args.max_samples, args.overwrite
        )
    except SpruceError as error:
        print(f"error: {error.one_line()}", file=sys.stderr)
        return 2
    for split, path in paths.items():
        with np.load(path) as archive:
            print(f"{split}: {archive['images'].shape} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
