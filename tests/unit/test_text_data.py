"""Text data: the real Rotten Tomatoes corpus, user files (CSV/TSV/JSON/JSONL/Parquet/HF datasets on disk) written
here, the token cache, the dynamic-padding loader and the recipe glue."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from kdkit.data.run import build_data
from kdkit.errors import ConfigError, DataError
from kdkit.recipe import recipe_from_dict
from kdkit.text.data import TextBatchLoader, TextData, build_text_data, is_text_source, load_text, tokenize_cached
from kdkit.text.models import load_tokenizer

TOK = "hf:minilm"
ROWS = [("a gripping film", "pos"), ("dull and long", "neg"), ("great cast, great fun", "pos"),
        ("a mess", "neg"), ("dull and long", "neg"), ("quietly moving", "pos")]


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def test_rotten_tomatoes_is_the_real_corpus(cache):
    d = load_text("rotten_tomatoes", tokenizer=TOK, max_length=64, cache_dir=cache)
    assert len(d) == 12_808 and d.classes == ["fresh", "rotten"]
    assert d.targets.bincount().tolist() == [7403, 5405]
    assert int(d.lengths.max()) <= 64 and 20 < float(d.lengths.float().mean()) < 35
    tok = load_tokenizer(TOK)
    assert tok.decode(d.tokens(0).tolist(), skip_special_tokens=True) == "a three - hour cinema master class."
    assert int(d.groups.max()) + 1 < len(d)  # a few snippets occur twice: they share a group


def test_tokens_are_cached_on_disk(cache):
    texts = ["one small test", "and another one"]
    a = tokenize_cached(texts, TOK, 16, cache)
    b = tokenize_cached(texts, TOK, 16, cache)
    c = tokenize_cached(texts, TOK, 4, cache)
    assert not a[3] and b[3] and not c[3]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert int((c[1][1:] - c[1][:-1]).max()) == 4  # truncated, [SEP] kept
    with pytest.raises(ConfigError, match="max_length"):
        tokenize_cached(texts, TOK, 1, cache)


def _frame():
    return pd.DataFrame({"sentence": [r[0] for r in ROWS], "y": [r[1] for r in ROWS]})


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet", "hfdisk"])
def test_user_formats(tmp_path, cache, fmt):
    df = _frame()
    if fmt == "csv":
        path = tmp_path / "d.csv"
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        path = tmp_path / "d.tsv"
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(df.to_dict(orient="records")))
    elif fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        df.to_json(path, orient="records", lines=True)
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        df.to_parquet(path)
    else:
        import datasets

        path = tmp_path / "ds"
        datasets.Dataset.from_pandas(df).save_to_disk(str(path))
    for name in (f"{fmt if fmt != 'jsonl' else 'jsonl'}:{path}", str(path)):
        assert is_text_source(name)
        d = load_text(name, tokenizer=TOK, max_length=16, text_column="sentence", label_column="y", cache_dir=cache)
        assert d.classes == ["neg", "pos"] and d.targets.tolist() == [1, 0, 1, 0, 0, 1]
        assert d.groups[1] == d.groups[4] and len(set(d.groups.tolist())) == 5
    with pytest.raises(ConfigError, match="text column 'text' not found"):
        load_text(str(path), tokenizer=TOK, label_column="y", cache_dir=cache)


def test_multilabel_sources(tmp_path, cache):
    df = pd.DataFrame({"text": ["a b", "c d", "e f"], "tags": ["x,y", "y", ""], "x": [1, 0, 0], "y": [1, 1, 0],
                       "lst": [["x", "y"], ["y"], []]})
    df.to_parquet(tmp_path / "m.parquet")
    a = load_text(f"parquet:{tmp_path / 'm.parquet'}", TOK, 8, label_column="tags", label_delimiter=",",
                  cache_dir=cache)
    b = load_text(f"parquet:{tmp_path / 'm.parquet'}", TOK, 8, label_column=["x", "y"], cache_dir=cache)
    c = load_text(f"parquet:{tmp_path / 'm.parquet'}", TOK, 8, label_column="lst", cache_dir=cache)
    ref = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    for d in (a, b, c):
        assert d.multilabel and d.classes == ["x", "y"] and torch.equal(d.targets, ref)


def test_hf_classlabel_and_missing_labels(tmp_path, cache):
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["sad", "happy", "angry"])})
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x", "y", "z"], "label": [2, 0, -1]},
                                                                   features=feats)})
    ds.save_to_disk(str(tmp_path / "dd"))
    d = load_text(f"hfdisk:{tmp_path / 'dd'}", TOK, 8, cache_dir=cache)
    assert d.classes == ["sad", "happy", "angry"] and d.targets.tolist() == [2, 0, -1]
    with pytest.raises(ConfigError, match="split 'test' not found"):
        load_text(f"hfdisk:{tmp_path / 'dd'}", TOK, 8, cache_dir=cache, split="test")
    pd.DataFrame({"text": ["a", "b"], "label": [3, 7]}).to_csv(tmp_path / "n.csv", index=False)
    n = load_text(f"csv:{tmp_path / 'n.csv'}", TOK, 8, cache_dir=cache, classes=["3", "5", "7"])
    assert n.targets.tolist() == [0, 2] and n.num_classes == 3
    with pytest.raises(DataError, match="not found"):
        load_text(f"csv:{tmp_path / 'nope.csv'}", TOK, 8, cache_dir=cache)


def _data(n=50, seed=0) -> TextData:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3, 12, (n,), generator=g)
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lens, 0)
    ids = torch.randint(5, 100, (int(offsets[-1]),), generator=g, dtype=torch.int32)
    return TextData("synthetic", ids, offsets, torch.arange(n) % 2, ["a", "b"], torch.arange(n), 0, 12)


@pytest.mark.parametrize("bucket", [0, 4])
def test_loader_covers_each_sample_once_and_resumes(bucket):
    data = _data()
    loader = TextBatchLoader(data, torch.arange(5, 50), 8, shuffle=True, seed=1, bucket=bucket)
    loader.set_epoch(2)
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    seen = torch.cat([b["index"] for b in batches])
    assert sorted(seen.tolist()) == list(range(45))
    for b in batches:
        x = b["input"]
        assert x.dtype == torch.int64 and b["view"].eq(0).all()
        lens = (x != 0).sum(1)
        assert int(lens.max()) == x.shape[1]  # padded to the longest of the batch only
        for row, i in zip(x, b["index"].tolist(), strict=True):
            assert torch.equal(row[row != 0], data.tokens(5 + i).long())
    assert [b["index"].tolist() for b in loader.iter_from(3)] == [b["index"].tolist() for b in batches[3:]]
    loader.set_epoch(2)
    assert [b["index"].tolist() for b in loader] == [b["index"].tolist() for b in batches]
    loader.set_epoch(3)
    assert [b["index"].tolist() for b in loader] != [b["index"].tolist() for b in batches]


def test_bucketing_pads_less_and_shards_partition():
    data = _data(400)
    flat = sum(b["input"].numel() for b in TextBatchLoader(data, None, 16, shuffle=True, seed=0, bucket=0))
    sortish = sum(b["input"].numel() for b in TextBatchLoader(data, None, 16, shuffle=True, seed=0, bucket=10))
    assert sortish < 0.8 * flat
    shards = [TextBatchLoader(data, None, 16, shuffle=True, seed=0, num_shards=2, shard=s) for s in (0, 1)]
    idx = [torch.cat([b["index"] for b in sh]).tolist() for sh in shards]
    assert not set(idx[0]) & set(idx[1]) and len(idx[0]) + len(idx[1]) == 400
    assert len(TextBatchLoader(data, None, 16, shuffle=True, seed=0, drop_last=True)) == 25


def _recipe(tmp_path, cache, **data):
    return recipe_from_dict({
        "name": "t", "output_dir": str(tmp_path),
        "data": {"name": "rotten_tomatoes", "params": {"max_length": 32, "cache_dir": cache}, "val_fraction": 0.1,
                 "batch_size": 16, **data},
        "student": {"name": "textnn:bilstm", "params": {"tokenizer": TOK}}})


def test_recipe_glue_builds_a_stratified_split(tmp_path, cache):
    from kdkit.registry import DATASETS

    assert DATASETS.entry("rotten_tomatoes").meta["run_data"] is build_text_data
    rd = build_data(_recipe(tmp_path, cache))
    assert rd.in_channels == 1 and rd.image_size == 32 and rd.num_classes == 2 and rd.classes == ["fresh", "rotten"]
    assert len(rd.train) + len(rd.val) == 12_808
    frac = rd.val.targets.float().mean() - rd.train.targets.float().mean()
    assert abs(float(frac)) < 0.01  # stratified: the same rotten share on both sides
    train_texts = {tuple(rd.train.tokens(i).tolist()) for i in range(len(rd.train))}
    assert not any(tuple(rd.val.tokens(i).tolist()) in train_texts for i in range(len(rd.val)))
    assert rd.split["tokenizer"] == TOK and len(rd.split["val_idx"]) == len(rd.val)
    batch = next(iter(rd.train_loader))
    assert batch["input"].shape[0] == 16 and batch["input"].shape[1] <= 32
    limited = build_data(_recipe(tmp_path, cache, train_limit=100))
    assert len(limited.train) == 100


def test_recipe_glue_errors(tmp_path, cache):
    with pytest.raises(ConfigError, match="applies to images"):
        build_data(_recipe(tmp_path, cache, augment={"flip": True}))
    r = _recipe(tmp_path, cache)
    r.data.params = {"max_length": 32, "cache_dir": cache, "text_col": "x"}
    with pytest.raises(ConfigError, match="text_col"):
        build_data(r)
    r = _recipe(tmp_path, cache)
    r.student.params = {}
    r.student.name = "mlp"
    with pytest.raises(ConfigError, match="tokenizer is required"):
        build_data(r)
    assert build_text_data(recipe_from_dict({"student": {"name": "mlp"}}), 1, 0) is None  # image data: not ours
