"""Image-folder data: ``root/class_name/image.png``, decoded per item with PIL.

Files without an image suffix, hidden files (``.name``, e.g. macOS's ``._name.png``) and
sub-folders of a class folder are skipped, as a table's unused columns are; a file with an
image suffix that does not decode, or that PIL refuses as a decompression bomb, is
refused, as a bad row of a table is.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spruce.errors import SpruceError
from spruce.vision.dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, unknown_class

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# The decoders PIL may use. Image.open otherwise tries every plugin, EPS among them, which
# hands the file to Ghostscript; a .jpg that is really a PNG still opens.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")


def read_image_folder(
    root: Path,
    *,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """One sub-folder per class (sorted names are the label order, unless ``class_names``
    gives it), images directly inside it. Nothing is decoded here."""
    root = Path(root)
    if not root.is_dir():
        raise SpruceError(f"image folder {root} does not exist", "check the path")
    classes = [p.name for p in _listing(root) if p.is_dir() and not _hidden(p)]
    if not classes:
        raise SpruceError(
            f"image folder {root} has no class sub-folders",
            "arrange the images as root/class_name/image.png, one sub-folder per class",
        )
    names = classes if class_names is None else list(class_names)
    position = {name: index for index, name in enumerate(names)}
    paths: list[Path] = []
    labels: list[int] = []
    for name in classes:
        if not name.strip():  # a class must be nameable in reports, as npz label_names are
            raise SpruceError(
                f"class folder '{root / name}' has a blank name", "give it a visible name"
            )
        if name not in position:
            raise unknown_class(root, name, names)
        entries = _listing(root / name)
        files = [
            p
            for p in entries
            if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p) and p.is_file()
        ]
        if not files:
            nested = (
                " (sub-folders of a class folder are not searched)"
                if any(p.is_dir() for p in entries)
                else ""
            )
            raise SpruceError(
                f"class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                f"add images to it or remove the folder{nested}",
            )
        paths += files
        labels += [position[name]] * len(files)

    def pixels(index: int) -> np.ndarray:
        return _decode(paths[index])

    return ImageDataset(pixels, labels, names, size, mean, std, source=str(root))


def _listing(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as error:
        raise SpruceError(
            f"cannot list the folder {folder} ({error.strerror or type(error).__name__})",
            "check that it exists and is readable",
        ) from None


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


@functools.cache
def _pil_formats() -> tuple[str, ...]:
    from PIL import Image

    Image.init()  # registers every plugin; a format PIL was built without is left out
    return tuple(name for name in PIL_FORMATS if name in Image.OPEN)


def _decode(path: Path) -> np.ndarray:
    """The (H, W, 3) uint8 pixels of one image file; any failure names the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL only warns up to twice MAX_IMAGE_PIXELS, then decodes hundreds of MB.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_pil_formats()) as image:
                image.load()
                # convert("RGB") clips 16-bit values at 255: nearly every pixel white.
                wide = image.mode == "I" or image.mode.startswith("I;16")
                raw = np.array(image if wide else image.convert("RGB"))  # writable, for torch
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SpruceError(
            f"image {path} has more than {Image.MAX_IMAGE_PIXELS:,} pixels, PIL's limit "
            "against decompression bombs",
            "shrink it (images are resized to --image-size anyway), or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if it is genuine",
        ) from None
    except UnidentifiedImageError:
        raise _unreadable(path, "not a PNG, JPEG, BMP, GIF or WebP image") from None
    except Exception as error:
        # PIL reports a damaged file through many types: OSError ("image file is
        # truncated"), SyntaxError, ValueError, struct.error, zlib.error, EOFError, ...
        detail = " ".join(str(error).split())[:120]
        raise _unreadable(path, f"{type(error).__name__}: {detail}" if detail else "") from None
    if wide:
        scaled = (np.clip(raw.astype(np.int64), 0, 65535) * 255 + 32767) // 65535
        raw = np.repeat(scaled.astype(np.uint8)[..., None], 3, axis=-1)
    if raw.ndim != 3 or raw.shape[2] != 3 or 0 in raw.shape:
        raise _unreadable(path, f"decoded to pixels of shape {raw.shape}")
    return raw


def _unreadable(path: Path, detail: str) -> SpruceError:
    return SpruceError(
        f"cannot read image {path}" + (f" ({detail})" if detail else ""),
        "remove or replace the file; supported: " + ", ".join(IMAGE_SUFFIXES),
    )
