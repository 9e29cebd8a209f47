"""``.npz`` image data: ``images``, ``labels`` and optional ``label_names`` arrays.

Only those three members are read, each after its ``.npy`` header is checked against the
member's real size and the machine's memory, so a damaged or hostile file is refused
before numpy allocates anything; object arrays (pickles) are never loaded.
"""

from __future__ import annotations

import lzma
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from spruce.errors import SpruceError
from spruce.vision.dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, unknown_class

NPZ_ARRAYS = ("images", "labels", "label_names")
# Without label_names the classes are 0..max(labels): a stray huge label would otherwise
# mean building millions of names and a classifier as wide (ImageNet-21k has 21,841).
MAX_CLASSES = 1_000_000
# Errors zipfile, zlib, lzma and numpy's .npy reader raise on a damaged or foreign file.
NPZ_READ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    NotImplementedError,  # an unsupported compression method
    RuntimeError,  # an encrypted member
    OverflowError,
    MemoryError,
)


def read_npz(
    path: Path,
    *,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """``images`` (N, H, W[, C]) uint8 or float in [0, 1], ``labels`` (N,), ``label_names``."""
    path = Path(path)
    arrays = _read_npz_arrays(path)
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        channels_first = images.ndim == 4 and images.shape[1] in (1, 3)
        raise SpruceError(
            f"{path}: 'images' has shape {images.shape}",
            "use (N, H, W) for grayscale or (N, H, W, 3) for RGB, channels last"
            + (" (numpy.moveaxis(images, 1, -1) moves them there)" if channels_first else ""),
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise SpruceError(
            f"{path}: 'labels' has shape {labels.shape} but there are {len(images)} images",
            "store one integer label per image, shape (N,)",
        )
    if len(labels) == 0:
        raise SpruceError(f"{path} holds no images", "write at least one image per class")
    if 0 in images.shape[1:3]:
        raise SpruceError(
            f"{path}: 'images' has shape {images.shape}, images without pixels",
            "store images at least 1 pixel high and wide",
        )
    if labels.dtype.kind not in "iu" or labels.min() < 0:
        raise SpruceError(
            f"{path}: 'labels' must be non-negative integers, not dtype {labels.dtype}",
            "map classes to 0..K-1",
        )
    top = int(labels.max())
    if "label_names" in arrays:
        names = _label_names(arrays["label_names"], path)
        if top >= len(names):
            raise SpruceError(
                f"{path}: label {top} but only {len(names)} label_names",
                "give one name per class, in label order",
            )
        if class_names is not None:  # this split's names, mapped onto the training data's
            known = list(class_names)
            position = {name: index for index, name in enumerate(known)}
            lookup = np.full(len(names), -1)
            for label in np.unique(labels).tolist():  # names no image uses do not matter
                if names[label] not in position:
                    raise unknown_class(path, names[label], known)
                lookup[label] = position[names[label]]
            labels, names = lookup[labels], known
    elif class_names is not None:
        names = list(class_names)
        if top >= len(names):
            raise SpruceError(
                f"{path}: label {top} but the training data has {len(names)} classes",
                "use the training data's labels 0..K-1 in every split",
            )
    elif top >= MAX_CLASSES:
        raise SpruceError(
            f"{path}: 'labels' go up to {top}, that is as many classes without label_names",
            f"number the classes 0..K-1 (at most {MAX_CLASSES:,})",
        )
    else:
        names = [str(c) for c in range(top + 1)]
    images = _to_uint8(images, path)

    def pixels(index: int) -> np.ndarray:
        image = images[index]
        return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image

    return ImageDataset(pixels, labels.tolist(), names, size, mean, std, source=str(path))


def _read_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """``images``, ``labels`` and ``label_names`` (where present), read through
    ``np.load(allow_pickle=False)``; other members are left unread. Each member's header
    is checked first: numpy allocates the size a header claims before reading any data."""
    if not path.is_file():  # a FIFO named .npz would block np.load forever
        raise SpruceError(f"{path} is not a regular file", "pass an .npz written by numpy.savez")
    fix = "write it with numpy.savez(path, images=..., labels=...)"
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
        if magic == b"\x93NUMPY":
            raise SpruceError(f"{path} holds a single .npy array, not an .npz archive", fix)
        if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load would try pickle
            raise SpruceError(
                f"cannot read {path} as an .npz file (it is not a zip archive of .npy arrays)",
                fix,
            )
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("images", "labels") if key not in archive.files]
            if missing:
                present = ", ".join(archive.files[:10]) + (", ..." if archive.files[10:] else "")
                raise SpruceError(
                    f"{path} lacks the array(s) {', '.join(missing)} (has: {present or 'nothing'})",
                    "save the pixels as 'images' (N, H, W[, C]) and the classes as 'labels' (N,)",
                )
            arrays = {}
            for key in NPZ_ARRAYS:
                if key in archive.files:
                    # NpzFile's own lookup: the bare name first, then NAME.npy.
                    member = key if key in archive.zip.namelist() else f"{key}.npy"
                    _check_member(archive.zip, member, key, path)
                    arrays[key] = archive[key]
    except SpruceError:
        raise
    except NPZ_READ_ERRORS as error:
        detail = " ".join(str(error).split())[:200] or type(error).__name__
        raise SpruceError(f"cannot read {path} as an .npz file ({detail})", fix) from None
    return arrays


def _check_member(archive: zipfile.ZipFile, member: str, key: str, path: Path) -> None:
    """Refuses a member that is not an .npy array, or whose header claims more data than
    the member holds or than memory can take, before numpy allocates it."""
    info = archive.getinfo(member)
    with archive.open(info) as stream:
        magic = stream.read(8)
        if magic[:6] != np.lib.format.MAGIC_PREFIX:
            raise SpruceError(
                f"{path}: '{key}' is not a NumPy array", "write the file with numpy.savez"
            )
        if len(magic) < 8:
            raise ValueError(f"the header of '{key}' is cut short")
        shape, _, dtype = _read_header(stream, (magic[6], magic[7]))
        start = stream.tell()
    if dtype.hasobject:
        return  # np.load(allow_pickle=False) refuses it, with numpy's own message
    if any(side < 0 for side in shape):
        raise SpruceError(f"{path}: '{key}' has the invalid shape {shape}", "write it again")
    # At least a byte per element: a zero-width dtype ('<U0') could claim 10^12 elements
    # in no bytes at all, and listing them (label_names) would never end.
    claimed = math.prod(shape) * max(dtype.itemsize, 1)
    held = info.file_size - start
    if claimed > held:
        raise SpruceError(
            f"{path}: '{key}' claims shape {shape} ({_bytes(claimed)}) but holds "
            f"{_bytes(max(held, 0))}",
            "the file is truncated or damaged; write it again with numpy.savez",
        )
    budget = _memory_budget()
    if budget is not None and claimed > budget:
        raise SpruceError(
            f"{path}: '{key}' takes {_bytes(claimed)} in memory, more than half of this "
            f"machine's memory ({_bytes(2 * budget)})",
            "use an image folder, which is read an image at a time, or a smaller .npz",
        )


def _read_header(
    stream: IO[bytes], version: tuple[int, int]
) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from an .npy header after the magic string."""
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version in ((2, 0), (3, 0)):  # 3.0 differs from 2.0 only in the header's encoding
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f"unknown .npy format version {version}")


def _memory_budget() -> int | None:
    """Half the machine's physical memory: the array, its uint8 copy and the model need
    room together. None where the platform does not say (no check then)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):
        return None


def _bytes(count: int) -> str:
    value, units = float(count), ["KiB", "MiB", "GiB", "TiB"]
    if count < 1024:
        return f"{count:,} bytes"
    value /= 1024
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:,.1f} {units[0]}"


def _label_names(array: np.ndarray, path: Path) -> list[str]:
    """One non-empty, distinct text per class. Numbers are allowed (as text, like the text
    tasks' numeric labels); floats, booleans and nested arrays are not names."""
    fix = "store label_names as a 1-d array of distinct texts, e.g. numpy.array(['cat', 'dog'])"
    if array.ndim != 1 or array.dtype.kind not in "USiu":
        raise SpruceError(
            f"{path}: 'label_names' has shape {array.shape} and dtype {array.dtype}", fix
        )
    if array.dtype.kind == "S":
        try:
            names = [item.decode("utf-8") for item in array.tolist()]
        except UnicodeDecodeError:
            raise SpruceError(f"{path}: 'label_names' are bytes but not UTF-8 text", fix) from None
    else:
        names = [str(item) for item in array.tolist()]
    seen: set[str] = set()
    for index, name in enumerate(names):
        if not name.strip():
            raise SpruceError(f"{path}: label_names[{index}] is empty", fix)
        if name in seen:
            raise SpruceError(f"{path}: label_names holds {name!r} twice", fix)
        seen.add(name)
    return names


def _to_uint8(images: np.ndarray, path: Path) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind == "f":
        if not np.isfinite(images).all():
            raise SpruceError(
                f"{path}: float 'images' hold NaN or infinite values",
                "store float pixels in [0, 1], or uint8 pixels in [0, 255]",
            )
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            raise SpruceError(
                f"{path}: float 'images' range from {low:g} to {high:g}",
                "store float pixels in [0, 1], or uint8 pixels in [0, 255]",
            )
        return np.round(images * 255.0).astype(np.uint8)
    raise SpruceError(f"{path}: 'images' have dtype {images.dtype}", "use uint8 or float pixels")
