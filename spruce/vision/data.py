"""Image classification data: an image folder or an ``.npz`` file, as one torch Dataset.

Both sources become the same thing: a list of labels, class names, and a way to get the
RGB ``uint8`` pixels of row *i*. Resizing and normalising happen per item, and a folder's
images are decoded per item too, so a large folder costs memory only for the images in
use; :func:`load_images` decodes each chosen image once up front, so that a corrupt file
stops the run before training, not in the middle of an epoch.

Every problem a user can cause is a :class:`~spruce.errors.SpruceError` naming the file
and what to do: an empty or unreadable folder or file, an image PIL cannot decode or
refuses as a decompression bomb, arrays of the wrong dtype, rank, length or size, labels
or label names that cannot be classes, an evaluation split with a class the training data
lacks. In a class folder, files without an image suffix, hidden files (``.name``, e.g.
macOS's ``._name.png``) and sub-folders are skipped, as a table's unused columns are; a
file with an image suffix that does not decode is refused, as a bad row of a table is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spruce.data.sampling import stratified_sample
from spruce.errors import SpruceError
from spruce.vision.dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset
from spruce.vision.image_folder import IMAGE_SUFFIXES, read_image_folder
from spruce.vision.npz import read_npz

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "ImageDataset",
    "load_images",
    "read_image_folder",
    "read_npz",
]


def load_images(
    source: str | Path,
    *,
    size: int = 224,
    max_train_samples: int | None = None,
    seed: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """Read a folder (``root/class_name/*.png|jpg``) or an ``.npz``; optionally subsample.

    ``max_train_samples`` keeps a seeded, class-stratified subset (the same sampler the
    text tasks use), so few-shot image runs are reproducible. ``class_names`` (the
    training split's, for an evaluation split) numbers this split's classes as the
    training data does: by name for folders and ``.npz`` files with ``label_names``, as
    the same indices for an ``.npz`` without; a class the training data lacks is refused.
    Each image of the result is decoded once here, so a corrupt one is refused now.
    """
    path = Path(source).expanduser()
    known = None if class_names is None else [str(name) for name in class_names]
    folder = path.is_dir()
    if folder:
        dataset = read_image_folder(path, size=size, mean=mean, std=std, class_names=known)
    elif not path.exists():
        raise SpruceError(f"image data {path} does not exist", "check the path")
    elif path.suffix.lower() == ".npz":
        dataset = read_npz(path, size=size, mean=mean, std=std, class_names=known)
    else:
        raise SpruceError(
            f"image data {path} is neither a folder nor an .npz file",
            "pass a folder root/class_name/*.png or an .npz with 'images' and 'labels'",
        )
    if max_train_samples is not None:
        chosen, _ = stratified_sample(
            dataset.labels,
            max_samples=max_train_samples,
            seed=seed,
            label_names=dataset.class_names,
        )
        dataset = dataset.subset(chosen)
    if folder:
        # Decoding costs about one epoch's reading; a truncated file found mid-training
        # would cost the run. Only the sampled images are decoded.
        for index in range(len(dataset)):
            dataset._pixels(index)
    return dataset
