"""Hostile image data ends in a well-formed dataset or a :class:`SpruceError`, never a
traceback, a hang or gigabytes of memory.

Property-based (hypothesis, with the settings and the SIGALRM guard of
``test_hostile_inputs.py``) over :func:`spruce.vision.load_images`: random bytes and
random zip archives named ``.npz``, ``.npz`` arrays of any dtype, rank and shape with
labels and label names of any kind, and image folders of real, truncated, empty,
non-image and oversized files. A dataset counts as well-formed only if every row decodes
to a finite ``[3, size, size]`` tensor with a label among its classes. Example-based
regression tests pin each bug the properties found; a few hostile inputs go through
``spruce adapt``, which must print one line, exit 2 and write nothing.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from test_hostile_inputs import PROPERTY, time_limit, user_error, valid_or_user_error

import spruce.vision.npz as vision_npz
from spruce.cli.main import main
from spruce.data import stratified_sample
from spruce.errors import SpruceError
from spruce.vision import ImageDataset, load_images
from spruce.vision.data import IMAGE_SUFFIXES

SIZE = 6  # pixels per side after resizing: small keeps every example fast


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Module scope: hypothesis reruns the body, and function-scoped fixtures are not reset.
    return tmp_path_factory.mktemp("hostile-images")


def check_dataset(result: ImageDataset | SpruceError, size: int = SIZE) -> None:
    """A SpruceError, or a dataset whose every row can be trained on."""
    if isinstance(result, SpruceError):
        return
    names = result.class_names
    assert names and all(isinstance(name, str) and name.strip() for name in names)
    assert len(set(names)) == len(names)
    assert len(result) > 0 and len(result.labels) == len(result)
    assert all(isinstance(label, int) and 0 <= label < len(names) for label in result.labels)
    for index in range(len(result)):  # raises if a row cannot be read: not well-formed
        x, label = result[index]
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert torch.isfinite(x).all() and label == result.labels[index]


def load(path: Path, **options: object) -> ImageDataset | SpruceError:
    """For the properties: ``load_images``' result or its SpruceError."""
    result = valid_or_user_error(lambda: load_images(path, size=SIZE, **options))
    # Shown by --hypothesis-show-statistics: how often each outcome was reached.
    event("refused" if isinstance(result, SpruceError) else "loaded")
    return result


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_claiming(shape: tuple[int, ...], dtype: str = "|u1", data: bytes = b"\x00" * 16) -> bytes:
    """An .npy member whose header claims ``shape`` but which holds only ``data``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_2_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue() + data


def zip_bytes(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are meant
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


# -- .npz: strategies ----------------------------------------------------------------------

IMAGE_DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
    "float16", "float32", "float64", "complex64", "<U3", "S2", ">f4",
]  # fmt: skip
LABEL_DTYPES = ["int64", "int8", "uint8", "uint64", "int32", "float64", "bool", "<U2", "S1"]


@st.composite
def image_arrays(draw: st.DrawFn) -> np.ndarray:
    """Any dtype; 0-d to 5-d; grayscale, channels last or first (1/3/4/5); zero-size sides;
    NaN/inf for floats, with in-range pixels often enough to reach a valid dataset."""
    dtype = np.dtype(draw(st.sampled_from(IMAGE_DTYPES)))
    n, h, w = draw(st.integers(0, 4)), draw(st.integers(0, 5)), draw(st.integers(0, 5))
    channels = draw(st.sampled_from([1, 3, 3, 4, 5]))
    layout = draw(st.sampled_from(["nhw", "nhwc", "nhwc", "nchw", "hw", "n", "", "nhwcx"]))
    sides = {"n": n, "h": h, "w": w, "c": channels, "x": 2}
    shape = tuple(sides[letter] for letter in layout)
    elements = None
    if dtype.kind == "f" and draw(st.booleans()):
        elements = st.floats(0, 1, width=min(dtype.itemsize * 8, 64))
    elif dtype.kind in "iu" and draw(st.booleans()):
        elements = st.integers(0, 127)
    return draw(arrays(dtype, shape, elements=elements))


@st.composite
def label_arrays(draw: st.DrawFn, count: int) -> np.ndarray:
    """Right or wrong length, integers small or huge or negative, floats with NaN, text."""
    length = max(0, count + draw(st.sampled_from([0, 0, 0, -1, 1])))
    dtype = np.dtype(draw(st.sampled_from(LABEL_DTYPES)))
    shape: tuple[int, ...] = (length,) if draw(st.integers(0, 9)) else (length, 1)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        small = st.integers(max(info.min, -2), min(info.max, 4))
        elements = small | st.integers(int(info.min), int(info.max))
        return draw(arrays(dtype, shape, elements=elements))
    return draw(arrays(dtype, shape))


name_texts = st.sampled_from(["a", "b", "c", "a", "", " ", "é", "\x00", "x\ny"]) | st.text(
    max_size=4
)
label_name_arrays = st.one_of(
    st.lists(name_texts, max_size=6).map(lambda names: np.array(names, dtype=str)),
    st.lists(name_texts, min_size=1, max_size=4).map(
        lambda names: np.array([n.encode("utf-8", "replace") for n in names])
    ),
    arrays(st.sampled_from(["int64", "float32", "bool", "complex64"]), st.integers(0, 5)),
    st.just(np.array("a b c")),
    st.just(np.array([["a", "b"], ["c", "d"]])),
    st.just(np.array([b"\xff\xfe", b"ok"])),
)


@st.composite
def plausible_archives(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """What a user would write: uint8 or [0, 1] float pixels, grayscale or RGB, a few
    classes with names or without; loaded most of the time."""
    n, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    shape = draw(st.sampled_from([(n, h, w), (n, h, w, 3), (n, h, w, 1)]))
    if draw(st.booleans()):
        images = draw(arrays(np.uint8, shape))
    else:
        dtype = draw(st.sampled_from(["float16", "float32", "float64"]))
        width = np.dtype(dtype).itemsize * 8
        images = draw(arrays(dtype, shape, elements=st.floats(0, 1, width=width)))
    archive = {"images": images, "labels": draw(arrays(np.int64, n, elements=st.integers(0, 3)))}
    if draw(st.booleans()):
        archive["label_names"] = np.array(
            ["cat", "dog", "fox", "owl", "ému"][: draw(st.integers(1, 5))]
        )
    return archive


@st.composite
def wild_archives(draw: st.DrawFn) -> dict[str, np.ndarray]:
    images = draw(image_arrays())
    count = images.shape[0] if images.ndim else 1
    archive = {"images": images, "labels": draw(label_arrays(count))}
    if draw(st.booleans()):
        archive["label_names"] = draw(label_name_arrays)
    if draw(st.integers(0, 5)) == 0:
        archive[draw(st.sampled_from(["extra", "labels", "images"]))] = np.zeros(3, np.int16)
    for key in list(archive):
        if draw(st.integers(0, 11)) == 0:
            del archive[key]
    return archive


npz_archives = plausible_archives() | wild_archives()


MEMBER_NAMES = ["images.npy", "labels.npy", "label_names.npy", "images", "labels", "x.npy"]


@st.composite
def zip_members(draw: st.DrawFn) -> bytes:
    """A real zip with random member names holding random bytes, real .npy arrays, .npy
    headers that claim huge shapes, or truncated .npy; sometimes the zip itself is damaged."""
    contents = st.one_of(
        st.binary(max_size=64),
        st.sampled_from(
            [
                npy_bytes(np.zeros((2, 3, 3), np.uint8)),
                npy_bytes(np.array([0, 1])),
                npy_bytes(np.array(["a", "b"])),
                npy_bytes(np.zeros((2, 3, 3), np.uint8))[:70],
                npy_claiming((10**6, 10**6, 10**3)),
                npy_claiming((2**62, 2**62)),
                npy_claiming((-1, 3, 3)),
                npy_claiming((1, 30_000, 30_000, 3)),
                npy_claiming((3,), "<i8", b"\x00" * 24),
                npy_claiming((10**12,), "<U0", b""),
                b"\x93NUMPY\x09\x00garbage",
            ]
        ),
    )
    # zipfile cuts a name at NUL, cannot encode a lone surrogate (not UTF-8), and cannot
    # write an empty name: a zip holds none of these
    names = st.sampled_from(MEMBER_NAMES) | st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8
    )
    members = draw(st.lists(st.tuples(names, contents), max_size=4))
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    data = zip_bytes(members, compression)
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage != "none" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = (
            data[:at]
            if damage == "truncate"
            else data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
        )
    return data


# -- .npz: properties ----------------------------------------------------------------------


@PROPERTY
@given(
    prefix=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY\x01\x00", b"\x80\x04"]),
    data=st.binary(max_size=300),
)
def test_random_bytes_as_npz(workdir: Path, prefix: bytes, data: bytes) -> None:
    path = workdir / "images.npz"
    path.write_bytes(prefix + data)
    check_dataset(load(path))


@PROPERTY
@given(data=zip_members())
def test_zip_with_random_members(workdir: Path, data: bytes) -> None:
    path = workdir / "members.npz"
    path.write_bytes(data)
    check_dataset(load(path))


@PROPERTY
@given(archive=npz_archives, compressed=st.booleans(), max_train=st.none() | st.integers(-1, 4))
def test_npz_arrays_of_any_kind(
    workdir: Path, archive: dict[str, np.ndarray], compressed: bool, max_train: int | None
) -> None:
    path = workdir / "arrays.npz"
    (np.savez_compressed if compressed else np.savez)(path, **archive)
    check_dataset(load(path, max_train_samples=max_train))


# -- image folders: strategies ---------------------------------------------------------------

FORMAT_OF = {".png": "PNG", ".jpg": "JPEG", ".gif": "GIF", ".bmp": "BMP", ".webp": "WEBP"}
MODES_OF = {
    "PNG": ["L", "RGB", "RGBA", "P", "1", "LA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["P", "L"],
    "BMP": ["RGB", "L", "1"],
    "WEBP": ["RGB", "RGBA"],
}


def encoded_image(fmt: str, mode: str, size: tuple[int, int] = (5, 4), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    if mode == "I;16":  # a 16-bit grayscale PNG
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    else:
        image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` RGB pixels and holds none."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# Encoded once: hypothesis picks among them rather than encoding images per example.
REAL_IMAGES = [
    encoded_image(fmt, mode, size, seed)
    for fmt, modes in MODES_OF.items()
    for mode in modes
    for seed, size in enumerate([(5, 4), (1, 1)])
]
file_contents = st.one_of(
    st.sampled_from(REAL_IMAGES),
    st.tuples(st.sampled_from(REAL_IMAGES), st.floats(0, 0.95)).map(
        lambda pair: pair[0][: int(len(pair[0]) * pair[1])]  # truncated
    ),
    st.binary(max_size=80),
    st.just(b""),
    st.sampled_from([png_declaring(100_000, 100_000), png_declaring(10_000, 10_000)]),
    st.just(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"),
)
file_names = st.tuples(
    st.sampled_from(["a", "b c", "ü", "𝔘", "x.y", ".hidden", "._mac", "long" * 20]),
    st.sampled_from([".png", ".PNG", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".txt", ""]),
).map("".join)
class_names = st.sampled_from(["cat", "dog", "a b", "é猫", ".hidden", " lead", "__x"])


@st.composite
def image_folders(draw: st.DrawFn) -> dict[str, bytes]:
    """relative path -> bytes: 0-3 classes of 0-3 files, sometimes nested, stray root files.
    Half the folders are clean (every image file decodes; other files are skipped ones), so
    that loading is reached as often as refusing."""
    clean = draw(st.booleans())
    tree: dict[str, bytes] = {}
    for name in draw(st.lists(class_names, min_size=int(clean), max_size=3, unique=True)):
        tree[f"{name}/"] = b""  # the class folder exists even if empty
        for file_name in draw(st.lists(file_names, min_size=int(clean), max_size=3, unique=True)):
            readable = Path(file_name).suffix.lower() in IMAGE_SUFFIXES
            readable = readable and not file_name.startswith(".")
            if clean and readable:
                tree[f"{name}/{file_name}"] = draw(st.sampled_from(REAL_IMAGES))
            else:
                tree[f"{name}/{file_name}"] = draw(file_contents)
        if clean:
            tree[f"{name}/{draw(st.sampled_from(['z.png', 'Z.JPG', 'z z.gif']))}"] = draw(
                st.sampled_from(REAL_IMAGES)
            )
        if draw(st.integers(0, 5)) == 0:
            tree[f"{name}/nested/inner.png"] = draw(st.sampled_from(REAL_IMAGES))
    if draw(st.integers(0, 5)) == 0:
        tree[f"stray {draw(file_names)}"] = draw(file_contents)  # never a class's name
    return tree


def write_tree(root: Path, tree: dict[str, bytes]) -> None:
    for relative, data in tree.items():
        path = root / relative
        if relative.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


# -- image folders: properties ---------------------------------------------------------------


@PROPERTY
@given(tree=image_folders(), max_train=st.none() | st.integers(1, 4))
def test_image_folders_load_or_fail_cleanly(
    workdir: Path, tree: dict[str, bytes], max_train: int | None
) -> None:
    root = Path(tempfile.mkdtemp(dir=workdir))
    try:
        write_tree(root, tree)
        check_dataset(load(root, max_train_samples=max_train))
    finally:
        shutil.rmtree(root)


# -- regression tests for the bugs the properties found --------------------------------------


def npz_path(directory: Path, name: str = "images.npz", **members: np.ndarray) -> Path:
    path = directory / name
    with path.open("wb") as handle:  # np.savez would add .npz to a name ending in .NPZ
        np.savez(handle, **members)
    return path


def folder(root: Path, files: dict[str, bytes]) -> Path:
    write_tree(root, files)
    return root


PNG = encoded_image("PNG", "RGB")
TWO_IMAGES = {"images": np.zeros((2, 3, 3), np.uint8), "labels": np.array([0, 1])}
HUGE_CLAIM = zip_bytes(
    [("images.npy", npy_claiming((10**6, 10**6, 1000))), ("labels.npy", npy_bytes(np.zeros(1)))]
)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "not a zip archive"),  # EOFError
        (npy_bytes(np.zeros((2, 3, 3), np.uint8)), "a single .npy array"),  # TypeError
        (b"PK\x05\x06", "File is not a zip file"),  # EOFError
        (zip_bytes([]), "lacks the array(s) images, labels (has: nothing)"),
        (zip_bytes([("images.npy", b"hello"), ("labels", b"")]), "'images' is not a NumPy"),
        (
            zip_bytes([("images.npy", b"\x93NUMPY\x01"), ("labels.npy", b"")]),
            "header of 'images' is cut short",
        ),
    ],
)
def test_files_that_are_not_npz_archives(tmp_path: Path, data: bytes, fragment: str) -> None:
    path = tmp_path / "images.npz"
    path.write_bytes(data)
    user_error(lambda: load_images(path), str(path), fragment)


def test_damaged_zip_member(tmp_path: Path) -> None:
    data = zip_bytes([(key + ".npy", npy_bytes(value)) for key, value in TWO_IMAGES.items()])
    path = tmp_path / "images.npz"
    path.write_bytes(data[:30] + bytes([data[30] ^ 0xFF]) + data[31:])  # BadZipFile
    user_error(lambda: load_images(path), "cannot read", "differ")


def test_header_claiming_more_than_the_member_holds(tmp_path: Path) -> None:
    # numpy would allocate the 909 TiB the header claims (MemoryError) before reading.
    path = tmp_path / "images.npz"
    path.write_bytes(HUGE_CLAIM)
    user_error(lambda: load_images(path), "'images' claims shape (1000000, 1000000, 1000)")


def test_zero_width_elements_count_too(tmp_path: Path) -> None:
    # 10^12 empty texts claim no bytes; listing them as label_names would never end.
    members = [(f"{key}.npy", npy_bytes(value)) for key, value in TWO_IMAGES.items()]
    path = tmp_path / "images.npz"
    path.write_bytes(
        zip_bytes([*members, ("label_names.npy", npy_claiming((10**12,), "<U0", b""))])
    )
    user_error(lambda: load_images(path), "'label_names' claims shape (1000000000000,)")


def test_array_larger_than_memory_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A genuine member that inflates beyond memory (zeros compress a thousandfold).
    path = tmp_path / "images.npz"
    np.savez_compressed(path, images=np.zeros((4, 64, 64), np.uint8), labels=np.arange(4))
    monkeypatch.setattr(vision_npz, "_memory_budget", lambda: 4096)
    user_error(lambda: load_images(path), "'images' takes 16.0 KiB", "half of this machine's")


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_images_without_pixels(tmp_path: Path, dtype: type) -> None:
    # float: ValueError from min() of an empty array; uint8: RuntimeError in interpolate.
    path = npz_path(tmp_path, images=np.zeros((2, 0, 3), dtype), labels=np.array([0, 1]))
    user_error(lambda: load_images(path), "images without pixels")


def test_huge_label_without_label_names_is_refused_not_enumerated(tmp_path: Path) -> None:
    # Used to build the names '0'..'1099511627776' one by one: a hang, then MemoryError.
    path = npz_path(tmp_path, images=np.zeros((2, 3, 3), np.uint8), labels=np.array([0, 2**40]))
    user_error(lambda: load_images(path), "go up to 1099511627776", "at most 1,000,000")


@pytest.mark.parametrize(
    ("names", "fragment"),
    [
        (np.array("cat dog"), "'label_names' has shape ()"),  # was split into characters
        (np.array([["a", "b"], ["c", "d"]]), "has shape (2, 2)"),  # names "['a', 'b']"
        (np.array(["cat", "cat"]), "holds 'cat' twice"),
        (np.array([0.5, 1.5]), "dtype float64"),
        (np.array([True, False]), "dtype bool"),
        (np.array(["", "dog"]), "label_names[0] is empty"),
        (np.array([b"\xff", b"dog"]), "not UTF-8"),
    ],
)
def test_label_names_must_be_distinct_texts(
    tmp_path: Path, names: np.ndarray, fragment: str
) -> None:
    path = npz_path(tmp_path, **TWO_IMAGES, label_names=names)
    user_error(lambda: load_images(path), fragment)


def test_label_names_as_bytes_or_numbers(tmp_path: Path) -> None:
    path = npz_path(tmp_path, **TWO_IMAGES, label_names=np.array([b"cat", "dög".encode()]))
    assert load_images(path, size=SIZE).class_names == ["cat", "dög"]  # was "b'cat'"
    path = npz_path(tmp_path, **TWO_IMAGES, label_names=np.array([3, 7]))
    assert load_images(path, size=SIZE).class_names == ["3", "7"]


def test_upper_case_npz_suffix(tmp_path: Path) -> None:
    # spruce adapt took X.NPZ for image data; the loader then called it neither kind.
    path = npz_path(tmp_path, "IMAGES.NPZ", **TWO_IMAGES)
    assert len(load_images(path, size=SIZE)) == 2


def test_fifo_named_npz_is_refused_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "images.npz"
    os.mkfifo(path)  # np.load would block until a writer appeared
    user_error(lambda: load_images(path), "not a regular file")


def test_truncated_image_is_refused_when_loading(tmp_path: Path) -> None:
    # Used to pass the header check and fail in the middle of the first epoch.
    root = folder(tmp_path / "data", {"cat/a.png": PNG, "dog/b.png": PNG[: len(PNG) // 2]})
    user_error(lambda: load_images(root), "dog/b.png", "truncated")
    root = folder(tmp_path / "cut", {"cat/a.png": PNG, "dog/b.png": PNG[:16]})  # ValueError
    user_error(lambda: load_images(root), "cannot read image", "dog/b.png")


def test_only_sampled_images_are_decoded(tmp_path: Path) -> None:
    files = {f"{c}/{i}.png": PNG for c in ("cat", "dog") for i in range(3)}
    root = folder(tmp_path / "data", {**files, "dog/9-broken.png": PNG[:40]})
    with pytest.raises(SpruceError, match="9-broken"):
        load_images(root)
    labels = [0, 0, 0, 1, 1, 1, 1]  # the broken file sorts last: row 6
    seed = next(
        s for s in range(20) if 6 not in stratified_sample(labels, max_samples=2, seed=s)[0]
    )
    subset = load_images(root, max_train_samples=2, seed=seed, size=SIZE)
    check_dataset(subset)  # the broken file was not drawn, so it is not read


@pytest.mark.parametrize("side", [100_000, 10_000])
def test_decompression_bomb(tmp_path: Path, side: int) -> None:
    # 10^10 pixels: PIL's DecompressionBombError escaped. 10^8: PIL only warns, then
    # decoding would allocate 300 MB; spruce refuses both before decoding.
    root = folder(tmp_path / "data", {"cat/a.png": PNG, "dog/bomb.png": png_declaring(side, side)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        user_error(lambda: load_images(root), "bomb.png", "89,478,485 pixels", "MAX_IMAGE_PIXELS")


def test_eps_named_png_is_not_handed_to_ghostscript(tmp_path: Path) -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    root = folder(tmp_path / "data", {"cat/a.png": PNG, "dog/b.png": eps})
    user_error(lambda: load_images(root), "b.png", "not a PNG, JPEG, BMP, GIF or WebP image")


def test_sixteen_bit_png_keeps_its_brightness(tmp_path: Path) -> None:
    gray = np.full((4, 4), 0x4000, np.uint16)  # a quarter of the 16-bit range
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "PNG")
    root = folder(tmp_path / "data", {"cat/a.png": buffer.getvalue(), "dog/b.png": PNG})
    data = load_images(root, size=4, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(data[0][0], torch.full((3, 4, 4), 64 / 255))  # was 1.0: clipped


@pytest.mark.parametrize(("fmt", "mode"), [(f, m) for f, ms in MODES_OF.items() for m in ms])
def test_every_image_mode_becomes_rgb(tmp_path: Path, fmt: str, mode: str) -> None:
    suffix = {v: k for k, v in FORMAT_OF.items()}[fmt]
    root = folder(tmp_path / "data", {f"cat/a{suffix}": encoded_image(fmt, mode), "dog/b.png": PNG})
    check_dataset(load_images(root, size=SIZE))


def test_what_a_class_folder_skips(tmp_path: Path) -> None:
    root = folder(
        tmp_path / "data",
        {
            "cat/a b ü.png": PNG,
            "cat/._a b ü.png": b"\x00\x05\x16\x07 AppleDouble",  # macOS resource fork
            "cat/.DS_Store": b"\x00\x00\x00\x01Bud1",
            "cat/notes.txt": b"not an image",
            "cat/nested/inner.png": PNG,
            "dog/𝔘.JPG": encoded_image("JPEG", "RGB"),
            ".git/x.png": b"hidden class folder",
            "README.md": b"root files are not classes",
        },
    )
    data = load_images(root, size=SIZE)
    assert data.class_names == ["cat", "dog"] and data.labels == [0, 1]
    check_dataset(data)


def test_class_folders_that_are_refused(tmp_path: Path) -> None:
    root = folder(tmp_path / "nested", {"cat/a.png": PNG, "dog/": b"", "dog/deeper/b.png": PNG})
    user_error(lambda: load_images(root), "dog holds no images", "sub-folders")
    root = folder(tmp_path / "blank", {"cat/a.png": PNG, " /b.png": PNG})
    user_error(lambda: load_images(root), "has a blank name")
    root = folder(tmp_path / "other", {"cat/a.tif": b"II*\x00", "dog/b.png": PNG})
    user_error(lambda: load_images(root), "cat holds no images (.png, .jpg")


def test_a_single_class_is_a_dataset(tmp_path: Path) -> None:
    # load_images also reads evaluation splits, which may hold one class; spruce adapt
    # refuses a single class for training (test_cli_refuses_a_single_training_class).
    data = load_images(folder(tmp_path / "one", {"cat/a.png": PNG}), size=SIZE)
    assert data.class_names == ["cat"] and data.labels == [0]


def test_evaluation_split_is_numbered_like_the_training_data(tmp_path: Path) -> None:
    classes = ["cat", "dog", "fox"]
    test = folder(tmp_path / "test", {"cat/a.png": PNG, "fox/b.png": PNG})
    assert load_images(test, size=SIZE).labels == [0, 1]  # read alone, fox is class 1
    data = load_images(test, size=SIZE, class_names=classes)
    assert data.class_names == classes and data.labels == [0, 2]
    named = npz_path(tmp_path, **TWO_IMAGES, label_names=np.array(["fox", "cat"]))
    assert load_images(named, class_names=classes).labels == [2, 0]
    unnamed = npz_path(tmp_path, "unnamed.npz", **TWO_IMAGES)
    assert load_images(unnamed, class_names=classes).labels == [0, 1]
    owl = folder(tmp_path / "owl", {"cat/a.png": PNG, "owl/b.png": PNG})
    user_error(lambda: load_images(owl, class_names=classes), "the class 'owl', which the")
    unused = npz_path(
        tmp_path, "unused.npz", **TWO_IMAGES, label_names=np.array(["cat", "dog", "owl"])
    )
    assert load_images(unused, class_names=classes).labels == [0, 1]  # no image is an owl
    wide = npz_path(
        tmp_path, "wide.npz", images=np.zeros((1, 2, 2), np.uint8), labels=np.array([3])
    )
    user_error(
        lambda: load_images(wide, class_names=classes), "label 3 but the training data has 3"
    )


# -- the command line: one line, exit code 2, nothing written ----------------------------------


def run_adapt(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: object) -> str:
    out = tmp_path / "run"
    capsys.readouterr()
    with time_limit(60):
        code = main([str(a) for a in ["adapt", *args, "--out", out, "--quiet", "--device", "cpu"]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("spruce: error: ") and err.count("\n") == 1, err
    assert not out.exists() and not Path(f"{out}.checkpoint").exists()
    return err


HOSTILE_NPZ = {
    "empty.npz": b"",
    "huge-claim.npz": HUGE_CLAIM,
    "raw-member.npz": zip_bytes([("images.npy", b"hello"), ("labels.npy", b"")]),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_NPZ))
def test_cli_prints_one_line_for_a_hostile_npz(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    train = tmp_path / name
    train.write_bytes(HOSTILE_NPZ[name])
    assert name in run_adapt(capsys, tmp_path, "--train", train)


def test_cli_prints_one_line_for_a_decompression_bomb(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train = folder(tmp_path / "data", {"cat/a.png": PNG, "dog/b.png": png_declaring(10**5, 10**5)})
    assert "decompression bombs" in run_adapt(capsys, tmp_path, "--train", train)


def test_cli_refuses_a_single_training_class(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train = folder(tmp_path / "data", {"cat/a.png": PNG, "cat/b.png": PNG})
    assert "single class ('cat')" in run_adapt(capsys, tmp_path, "--train", train)
    train = npz_path(tmp_path, **TWO_IMAGES)
    err = run_adapt(capsys, tmp_path, "--train", train, "--max-train-samples", "1")
    assert "the sampled training set holds a single class" in err


def test_cli_refuses_a_test_class_the_training_data_lacks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train = folder(tmp_path / "train", {"cat/a.png": PNG, "dog/b.png": PNG})
    test = folder(tmp_path / "test", {"cat/a.png": PNG, "owl/b.png": PNG})
    err = run_adapt(capsys, tmp_path, "--train", train, "--test", test)
    assert "the class 'owl', which the training data does not have" in err
