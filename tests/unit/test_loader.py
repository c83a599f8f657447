"""BatchLoader: epoch coverage, determinism, sharding, resume, replayable views."""

from __future__ import annotations

import pytest
import torch

from kdkit.data import Augment, BatchLoader, ImageData, dataset_stats, load_source, stratified_split
from kdkit.errors import ConfigError


def _tiny(n: int = 53) -> ImageData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8, generator=g)
    return ImageData(images, torch.arange(n) % 4, list("abcd"), "tiny")


AUG = Augment((0.5,), (0.25,), crop_padding=2, flip=True, seed=1)


def _collect(loader: BatchLoader) -> list[dict[str, torch.Tensor]]:
    return [b for b in loader]


def test_epoch_covers_every_index_once():
    d = _tiny()
    idx = torch.arange(3, 50)  # a split: positions 3..49 of the dataset
    loader = BatchLoader(d, idx, 10, AUG, shuffle=True, seed=0)
    assert len(loader) == 5
    batches = _collect(loader)
    assert [len(b["index"]) for b in batches] == [10, 10, 10, 10, 7]
    seen = torch.cat([b["index"] for b in batches])
    assert torch.equal(seen.sort().values, torch.arange(47))  # split-local positions
    b = batches[0]
    assert b["input"].shape == (10, 1, 6, 6) and b["input"].dtype == torch.float32
    assert b["index"].dtype == b["view"].dtype == torch.int64 and b["target"].dtype == torch.int64
    assert torch.equal(b["target"], d.targets[idx[b["index"]]])
    assert not torch.equal(seen, torch.arange(47))  # actually shuffled


def test_orders_pure_function_of_seed_and_epoch():
    d = _tiny()
    a = BatchLoader(d, None, 8, AUG, shuffle=True, seed=3)
    b = BatchLoader(d, None, 8, AUG, shuffle=True, seed=3)
    orders = []
    for e in range(3):
        a.set_epoch(e)
        b.set_epoch(e)
        ba, bb = _collect(a), _collect(b)
        for x, y in zip(ba, bb, strict=True):
            assert all(torch.equal(x[k], y[k]) for k in ("input", "target", "index", "view"))
        orders.append(torch.cat([x["index"] for x in ba]))
        assert int(ba[0]["view"][0]) == e
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    # Iterating twice in the same epoch gives the same batches; another seed gives another order.
    a.set_epoch(1)
    assert torch.equal(torch.cat([x["index"] for x in a]), orders[1])
    c = BatchLoader(d, None, 8, AUG, shuffle=True, seed=4)
    c.set_epoch(1)
    assert not torch.equal(torch.cat([x["index"] for x in c]), orders[1])


def test_no_shuffle_keeps_split_order_and_drop_last():
    d = _tiny()
    loader = BatchLoader(d, torch.arange(20), 6, Augment.normalize_only((0.5,), (0.25,)), shuffle=False, seed=0)
    assert torch.equal(torch.cat([b["index"] for b in loader]), torch.arange(20))
    dl = BatchLoader(d, torch.arange(20), 6, AUG, shuffle=True, seed=0, drop_last=True)
    assert len(dl) == 3 and [len(b["index"]) for b in dl] == [6, 6, 6]


@pytest.mark.parametrize("n, shards", [(53, 2), (53, 4), (48, 4), (5, 8)])
def test_shards_disjoint_equal_and_covering(n, shards):
    d = _tiny(n)
    loaders = [BatchLoader(d, None, 4, AUG, shuffle=True, seed=9, num_shards=shards, shard=r) for r in range(shards)]
    for ld in loaders:
        ld.set_epoch(2)
    per = [torch.cat([b["index"] for b in ld]) for ld in loaders]
    assert len({len(p) for p in per}) == 1 and len(per[0]) == -(-n // shards)
    allpos = torch.cat(per)
    assert set(allpos.tolist()) == set(range(n))
    if n % shards == 0:
        assert len(allpos) == n  # no padding needed: strictly disjoint
    else:
        assert len(allpos) - len(set(allpos.tolist())) == len(allpos) - n  # only the padding repeats
    # Positions in the epoch order are owned by exactly one shard (strided slices).
    order = BatchLoader(d, None, 4, AUG, shuffle=True, seed=9)
    order.set_epoch(2)
    full = order.order()
    for r in range(shards):
        assert torch.equal(per[r][: len(full[r::shards])], full[r::shards])


def test_resume_mid_epoch():
    d = _tiny()
    loader = BatchLoader(d, None, 5, AUG, shuffle=True, seed=2)
    loader.set_epoch(4)
    full = _collect(loader)
    tail = list(loader.iter_from(7))
    assert len(tail) == len(full) - 7
    for x, y in zip(tail, full[7:], strict=True):
        assert torch.equal(x["input"], y["input"]) and torch.equal(x["index"], y["index"])
    loader.start_batch = 9
    resumed = _collect(loader)
    assert torch.equal(resumed[0]["index"], full[9]["index"])
    assert len(_collect(loader)) == len(full)  # start_batch applies to one iteration only
    loader.start_batch = 3
    loader.set_epoch(5)
    assert loader.start_batch == 0


def test_batches_replay_from_their_keys_and_view_fn():
    d = _tiny()
    idx = torch.arange(10, 50)
    loader = BatchLoader(d, idx, 7, AUG, shuffle=True, seed=0, view_fn=lambda e: e % 2)
    loader.set_epoch(5)
    batches = _collect(loader)
    assert all(int(b["view"].unique()) == 1 for b in batches)
    for b in batches:
        replay = AUG(d.images[idx[b["index"]]], b["index"], b["view"])
        assert torch.equal(replay, b["input"])
    # Epoch 7 has the same view (7 mod 2) but another order: per-sample inputs must be identical.
    loader.set_epoch(7)
    first = {int(i): x for b in batches for i, x in zip(b["index"], b["input"], strict=True)}
    for b in loader:
        for i, x in zip(b["index"], b["input"], strict=True):
            assert torch.equal(first[int(i)], x)


def test_device_argument_and_errors():
    d = _tiny()
    loader = BatchLoader(d, None, 16, AUG, shuffle=False, seed=0, device="cpu")
    assert next(iter(loader))["input"].device.type == "cpu"
    with pytest.raises(ConfigError, match="batch_size"):
        BatchLoader(d, None, 0, AUG, shuffle=False, seed=0)
    with pytest.raises(ConfigError, match="shard"):
        BatchLoader(d, None, 4, AUG, shuffle=False, seed=0, num_shards=2, shard=2)
    with pytest.raises(ConfigError, match="empty"):
        BatchLoader(d, [], 4, AUG, shuffle=False, seed=0)


def test_every_training_sample_once_per_epoch_on_mnist_5k():
    """Each epoch visits every training sample exactly once, in an order that differs between epochs. (Loader speed is
    measured by benchmarks/step_speed.py, never timed in a test.)"""
    d = load_source("mnist_5k")
    tr, _ = stratified_split(d.targets, d.groups, 0.1, seed=0)
    mean, std = dataset_stats(d.images[tr])
    loader = BatchLoader(d, tr, 128, Augment(mean, std, crop_padding=2, flip=True, seed=0), shuffle=True, seed=0)
    orders = []
    for e in range(2):
        loader.set_epoch(e)
        order = torch.cat([b["index"] for b in loader])
        assert sorted(order.tolist()) == list(range(len(tr)))
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])
