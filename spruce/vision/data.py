"""Image classification data: an image folder or an ``.npz`` file, as one torch Dataset.

Both sources become the same thing: a list of labels, class names, and a way to get the
RGB ``uint8`` pixels of row *i*. Decoding, resizing and normalising happen per item, so a
large folder costs memory only for the images in use. Every problem a user can cause
(empty folder, unreadable file, arrays of the wrong rank or length) is a
:class:`~spruce.errors.SpruceError` naming the file and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spruce.data.sampling import stratified_sample
from spruce.errors import SpruceError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class ImageDataset(Dataset):
    """Yields ``(float tensor [3, size, size], label)``; ``class_names[label]`` names it.

    Grayscale becomes three equal channels, pixels are scaled to [0, 1], resized with
    antialiased bilinear interpolation, then normalised with ``mean``/``std`` (ImageNet's
    unless the model was trained with another convention, see
    :func:`spruce.vision.models.input_normalization`).
    """

    def __init__(
        self,
        pixels: Callable[[int], np.ndarray],
        labels: Sequence[int],
        class_names: Sequence[str],
        size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        source: str = "",
    ) -> None:
        self._pixels = pixels
        self.labels = [int(label) for label in labels]
        self.class_names = list(class_names)
        self.size = int(size)
        self.source = source
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rgb = torch.from_numpy(np.ascontiguousarray(self._pixels(index)))
        x = rgb.permute(2, 0, 1).float().div_(255.0)
        if tuple(x.shape[1:]) != (self.size, self.size):
            x = F.interpolate(
                x[None],
                size=(self.size, self.size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0].clamp_(0.0, 1.0)
        return (x - self._mean) / self._std, self.labels[index]

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        """The rows ``indices`` as a dataset with the same classes and preprocessing."""
        rows = [int(i) for i in indices]
        subset = ImageDataset.__new__(ImageDataset)
        subset.__dict__.update(self.__dict__)
        subset._pixels = lambda i: self._pixels(rows[i])
        subset.labels = [self.labels[i] for i in rows]
        return subset


def load_images(
    source: str | Path,
    *,
    size: int = 224,
    max_train_samples: int | None = None,
    seed: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImageDataset:
    """Read a folder (``root/class_name/*.png|jpg``) or an ``.npz``; optionally subsample.

    ``max_train_samples`` keeps a seeded, class-stratified subset (the same sampler the
    text tasks use), so few-shot image runs are reproducible.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        dataset = read_image_folder(path, size=size, mean=mean, std=std)
    elif path.suffix == ".npz":
        dataset = read_npz(path, size=size, mean=mean, std=std)
    elif not path.exists():
        raise SpruceError(f"image data {path} does not exist", "check the path")
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
    return dataset


def read_image_folder(
    root: Path,
    *,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImageDataset:
    """One sub-folder per class (sorted names are the label order), images inside it."""
    root = Path(root)
    if not root.is_dir():
        raise SpruceError(f"image folder {root} does not exist", "check the path")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SpruceError(
            f"image folder {root} has no class sub-folders",
            "arrange the images as root/class_name/image.png, one sub-folder per class",
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise SpruceError(
                f"class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                "add images to it or remove the folder",
            )
        paths += files
        labels += [label] * len(files)
    for path in paths:  # headers only: fails early on a file that is not an image
        _open_image(path).close()

    def pixels(index: int) -> np.ndarray:
        with _open_image(paths[index]) as image:
            try:
                return np.array(image.convert("RGB"))
            except OSError as error:
                raise _unreadable(paths[index], error) from None

    return ImageDataset(pixels, labels, classes, size, mean, std, source=str(root))


def read_npz(
    path: Path,
    *,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImageDataset:
    """``images`` (N, H, W[, C]) uint8 or float in [0, 1], ``labels`` (N,), ``label_names``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise SpruceError(
            f"cannot read {path} as an .npz file ({error})", "write it with numpy.savez"
        ) from None
    missing = [key for key in ("images", "labels") if key not in arrays]
    if missing:
        raise SpruceError(
            f"{path} lacks the array(s) {', '.join(missing)} (has: {', '.join(arrays)})",
            "save the pixels as 'images' (N, H, W[, C]) and the classes as 'labels' (N,)",
        )
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise SpruceError(
            f"{path}: 'images' has shape {images.shape}",
            "use (N, H, W) for grayscale or (N, H, W, 3) for RGB, channels last",
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise SpruceError(
            f"{path}: 'labels' has shape {labels.shape} but there are {len(images)} images",
            "store one integer label per image, shape (N,)",
        )
    if len(labels) == 0:
        raise SpruceError(f"{path} holds no images", "write at least one image per class")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise SpruceError(
            f"{path}: 'labels' must be non-negative integers", "map classes to 0..K-1"
        )
    images = _to_uint8(images, path)
    if "label_names" in arrays:
        names = [str(n) for n in arrays["label_names"].tolist()]
        if int(labels.max()) >= len(names):
            raise SpruceError(
                f"{path}: label {int(labels.max())} but only {len(names)} label_names",
                "give one name per class, in label order",
            )
    else:
        names = [str(c) for c in range(int(labels.max()) + 1)]

    def pixels(index: int) -> np.ndarray:
        image = images[index]
        return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image

    return ImageDataset(pixels, labels.tolist(), names, size, mean, std, source=str(path))


def _to_uint8(images: np.ndarray, path: Path) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0 or not np.isfinite([low, high]).all():
            raise SpruceError(
                f"{path}: float 'images' range from {low:g} to {high:g}",
                "store float pixels in [0, 1], or uint8 pixels in [0, 255]",
            )
        return np.round(images * 255.0).astype(np.uint8)
    raise SpruceError(f"{path}: 'images' have dtype {images.dtype}", "use uint8 or float pixels")


def _open_image(path: Path):  # -> PIL.Image.Image
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as error:
        raise _unreadable(path, error) from None


def _unreadable(path: Path, error: Exception) -> SpruceError:
    return SpruceError(
        f"cannot read image {path} ({type(error).__name__})",
        "remove or replace the file; supported: " + ", ".join(IMAGE_SUFFIXES),
    )
