"""The dataset every image source becomes: labels, class names, and a way to get the RGB
``uint8`` pixels of row *i*, resized and normalised per item."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spruce.errors import SpruceError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def unknown_class(where: Path, name: str, known: Sequence[str]) -> SpruceError:
    shown = ", ".join(known[:10]) + (f", ... ({len(known)} in all)" if len(known) > 10 else "")
    return SpruceError(
        f"{where} has the class '{name}', which the training data does not have (classes: {shown})",
        "use the same classes in every split",
    )
