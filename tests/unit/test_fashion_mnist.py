"""Fashion-MNIST from Debian's dataset-fashion-mnist: the real idx files parse to the official 60,000 + 10,000 images
(checked against foolbox's copies of the first 20 test images, an independent source), and every malformed idx file or
missing directory is one line naming the file and the fix."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.data import load_source, predefined_split
from kdkit.data.sources import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx
from kdkit.errors import DataError

HAVE_FILES = (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()
needs_files = pytest.mark.skipif(not HAVE_FILES,
                                 reason="apt-get install dataset-fashion-mnist (scripts/install_debian.sh)")


@needs_files
def test_real_files_are_the_official_splits():
    train, test = load_source("fashion_mnist"), load_source("fashion_mnist", split="test")
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.classes == FASHION_MNIST_CLASSES
    # The official splits are balanced: 6,000 and 1,000 images per class.
    assert train.class_counts().tolist() == [6000] * 10 and test.class_counts().tolist() == [1000] * 10
    # Real pictures: the full intensity range, dark background (Fashion-MNIST's mean pixel is ~72.9 / 255).
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    assert abs(float(train.images.float().mean()) - 72.94) < 0.1  # published mean 0.2860 * 255 = 72.94


@needs_files
def test_first_test_images_match_foolbox_copies():
    """foolbox ships the first 20 Fashion-MNIST test images as PNGs (label in the file name): same pixels and labels."""
    test, ref = load_source("fashion_mnist", split="test"), load_source("foolbox_fashion")
    assert torch.equal(test.images[:20], ref.images) and torch.equal(test.targets[:20], ref.targets)


@needs_files
def test_split_all_marks_the_official_test_part():
    both = load_source("fashion_mnist", split="all")
    tr, va = predefined_split(both)
    assert len(tr) == 60_000 and va.tolist() == list(range(60_000, 70_000))


def _idx(path: Path, magic: int, dims: tuple[int, ...], data: bytes) -> Path:
    path.write_bytes(gzip.compress(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + data))
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(gzip.compress(b""))
    return path


def test_read_idx_parses_and_validates(tmp_path: Path):
    img = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    ok = _idx(tmp_path / "ok-idx3-ubyte.gz", 0x803, (2, 3, 4), img.tobytes())
    assert np.array_equal(read_idx(ok, 3), img)
    bad_cases = {
        "magic": (_idx(tmp_path / "m.gz", 0x801, (2, 3, 4), img.tobytes()), "magic 0x801"),
        "count": (_idx(tmp_path / "c.gz", 0x803, (3, 3, 4), img.tobytes()), "header says 3x3x4 values"),
        "short": (_idx(tmp_path / "s.gz", 0x803, (), b""), "header is cut short"),
        "empty": (_empty(tmp_path / "e.gz"), "magic missing"),
    }
    (tmp_path / "g.gz").write_bytes(b"not gzip at all")
    bad_cases["gzip"] = (tmp_path / "g.gz", "cannot read the idx file")
    for what, (path, needle) in bad_cases.items():
        with pytest.raises(DataError) as err:
            read_idx(path, 3)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and needle in msg, (what, msg)


def test_wrong_image_count_names_the_file(tmp_path: Path):
    """A directory whose files parse but hold the wrong number of images (not the official split) is refused."""
    _idx(tmp_path / "train-images-idx3-ubyte.gz", 0x803, (5, 28, 28), bytes(5 * 784))
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", 0x801, (5,), bytes(5))
    with pytest.raises(DataError, match="expected 60000 images of 28x28, got 5x28x28"):
        load_source("fashion_mnist", path=str(tmp_path))


def test_missing_files_name_the_debian_package(tmp_path: Path):
    with pytest.raises(DataError) as err:
        load_source("fashion_mnist", path=str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg and "nowhere" in msg
