"""Every registered dataset honours the data contract: a recipe naming it (a bundled set by name, a user format by
``kind:PATH`` and by bare path) builds run data whose batches carry float inputs and targets inside the class range,
and a missing path is one line naming the path. A new dataset without a case here fails the first test."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kdkit.data.run import build_data
from kdkit.data.sources import CIFAR10_CLASSES, CIFAR100_CLASSES, resolve_dataset
from kdkit.errors import KdkitError
from kdkit.recipe import recipe_from_dict
from kdkit.registry import DATASETS

TOK = "minilm"  # the bundled offline tokenizer (text extra)
TEXT = [("a warm and funny film", "pos"), ("dull and far too long", "neg"), ("a quiet triumph", "pos"),
        ("a mess from start to end", "neg"), ("moving and sharp", "pos"), ("flat, lifeless acting", "neg")]
TEXT = [(f"{t} ({i})", y) for i in range(4) for t, y in TEXT]  # distinct rows: duplicates share a split group


def _pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # byte-string keys, protocol 2: the official files' layout


def _cifar(tmp: Path, fine: bool) -> Path:
    rng = np.random.default_rng(0)
    root = tmp / ("cifar-100-python" if fine else "cifar-10-batches-py")
    root.mkdir()
    rows = lambda n: rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # noqa: E731
    if fine:
        for split, n in (("train", 12), ("test", 4)):
            labels = [i % 3 for i in range(n)]
            _pickle(root / split, {b"data": rows(n), b"fine_labels": labels, b"coarse_labels": labels})
        _pickle(root / "meta", {b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
                                b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    else:
        for i in range(1, 6):
            _pickle(root / f"data_batch_{i}", {b"data": rows(4), b"labels": [(i + j) % 3 for j in range(4)]})
        _pickle(root / "test_batch", {b"data": rows(4), b"labels": [0, 1, 2, 0]})
        _pickle(root / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
    return root


def _imagefolder(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "fox"):
        (tmp / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp / "imgs" / c / f"{i}.png")
    return tmp / "imgs"


def _npz(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(tmp / "d.npz", x=rng.integers(0, 256, (24, 1, 10, 10), dtype=np.uint8), y=np.arange(24) % 3)
    return tmp / "d.npz"


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"text": [t for t, _ in TEXT], "label": [y for _, y in TEXT]})


def _text(kind: str) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        df = _frame()
        path = tmp / f"d.{kind}"
        if kind == "csv":
            df.to_csv(path, index=False)
        elif kind == "tsv":
            df.to_csv(path, sep="\t", index=False)
        elif kind == "json":
            path.write_text(json.dumps(df.to_dict(orient="records")))
        elif kind == "jsonl":
            df.to_json(path, orient="records", lines=True)
        elif kind == "parquet":
            df.to_parquet(path)
        else:
            import datasets

            path = tmp / "hf"
            datasets.Dataset.from_pandas(df).save_to_disk(str(path))
        return path

    return write


def _py(tmp: Path) -> str:
    """A module of the user's own (imported from tmp, put on sys.path by the test) returning float tabular data."""
    mod = f"contract_data_{tmp.name.replace('-', '_')}"
    (tmp / f"{mod}.py").write_text(
        "import numpy as np\n\n"
        "def make(n=24):\n"
        "    rng = np.random.default_rng(0)\n"
        "    return rng.normal(size=(n, 5)).astype(np.float32), np.arange(n) % 3\n"
    )
    return f"{mod}:make"


def _textfile(tmp: Path) -> Path:
    path = tmp / "corpus.txt"
    path.write_text("\n\n".join(f"Passage {i}: the quick brown fox jumps over the lazy dog, again and again." * 3
                                  for i in range(6)))
    return path


@pytest.fixture(scope="module")
def lm_tokenizer(tmp_path_factory) -> str:
    """A small byte-level BPE trained offline on the lee corpus (language-model datasets tokenise with it)."""
    from kdkit.lm.corpora import read_corpus
    from kdkit.lm.tokenizer import train_tokenizer

    return str(train_tokenizer(read_corpus("lee_background"), tmp_path_factory.mktemp("tok"), 320))


# name -> None (bundled, no path) or a writer of a small file in that format (returning what follows "name:").
CASES: dict[str, Callable[[Path], Path] | None] = {
    "mnist_5k": None, "animal_mnist": None, "digits": None, "foolbox_mnist": None, "foolbox_fashion": None,
    "foolbox_cifar10": None, "foolbox_cifar100": None, "rotten_tomatoes": None, "fashion_mnist": None,
    "imagefolder": _imagefolder, "npz": _npz, "cifar10": lambda t: _cifar(t, False),
    "cifar100": lambda t: _cifar(t, True), "py": _py,
    **{k: _text(k) for k in ("csv", "tsv", "json", "jsonl", "parquet", "hfdisk")},
    "lee_background": None, "enwiki_excerpt": None, "hamlet": None, "textfile": lambda t: _textfile(t),
}
NAMES = DATASETS.names()
NO_BARE_PATH = {"py"}  # names code (module:function), not a file whose format could be detected


def test_every_dataset_has_a_description_and_a_contract_case():
    for entry in DATASETS.entries():
        assert entry.description, entry.name
        assert bool(entry.meta.get("takes_path")) == (CASES.get(entry.name) is not None), entry.name
        if entry.meta.get("takes_path") and entry.name not in NO_BARE_PATH:
            assert callable(entry.meta.get("detect")), f"{entry.name}: a path format must detect its files"
    assert sorted(CASES) == NAMES, "add a case for each new dataset (or drop the case of a removed one)"


def _recipe(tmp: Path, name: str, text: bool, lm_tok: str | None = None) -> dict:
    data: dict = {"name": name, "val_fraction": 0.25, "batch_size": 4}
    student: dict = {"name": "mlp", "params": {"hidden": [8]}}
    if lm_tok is not None:  # a language-model corpus: packed blocks of 8 tokens, a tiny GPT-2
        data["params"] = {"tokenizer": lm_tok, "block": 8}
        student = {"name": "lm:gpt2", "params": {"layers": 1, "width": 8, "heads": 1}}
    elif text:
        data["params"] = {"max_length": 16, "cache_dir": str(tmp / "cache")}
        student = {"name": "textnn:bilstm", "params": {"tokenizer": TOK, "hidden": 8, "embed_dim": 8}}
    return {"name": "contract", "output_dir": str(tmp / "runs"), "data": data, "student": student}


@pytest.mark.parametrize("name", NAMES)
def test_dataset_contract(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request) -> None:
    entry = DATASETS.entry(name)
    text = "run_data" in entry.meta
    lm = entry.meta.get("task") == "causal_lm"
    lm_tok = request.getfixturevalue("lm_tokenizer") if lm else None
    names = [name]
    monkeypatch.syspath_prepend(str(tmp_path))
    if CASES[name] is not None:
        path = CASES[name](tmp_path)
        names = [f"{name}:{path}"] + ([] if name in NO_BARE_PATH else [str(path)])
    for full in names:
        found, _ = resolve_dataset(full)
        assert found.name == name, f"{full} resolved to {found.name}"
        data = build_data(recipe_from_dict(_recipe(tmp_path, full, text, lm_tok)))
        k = data.num_classes
        assert k >= 2, (full, k)
        batch = next(iter(data.train_loader))
        x, y = batch["input"], batch["target"]
        if lm:  # a token is a sample: (B, T) ids, (B*T,) next-token targets
            assert x.dim() == 2 and y.shape[0] == x.numel() > 0
            assert torch.equal(y.view(x.shape)[:, :-1], x[:, 1:])
        else:
            assert x.shape[0] == y.shape[0] > 0
        if not text:
            assert x.is_floating_point() and torch.isfinite(x).all()
        assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < k, (full, y)
        assert len(next(iter(data.val_loader))["target"]) > 0


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n] is not None])
def test_missing_path_is_one_line_naming_it(name: str, tmp_path: Path, request) -> None:
    missing = "not_here:make" if name in NO_BARE_PATH else tmp_path / "not-here"
    text = "run_data" in DATASETS.entry(name).meta
    lm_tok = request.getfixturevalue("lm_tokenizer") if DATASETS.entry(name).meta.get("task") == "causal_lm" else None
    with pytest.raises(KdkitError) as err:
        build_data(recipe_from_dict(_recipe(tmp_path, f"{name}:{missing}", text, lm_tok)))
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg, msg
