"""Replayable augmentation: a pure function of (seed, view, index), checked against slow references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kdkit.data import Augment
from kdkit.data.augment import hash_draws
from kdkit.errors import ConfigError, DataError

M32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------- independent uint32 reference
def _ref_mix(x: np.ndarray) -> np.ndarray:
    """lowbias32 in numpy uint32, whose multiplication wraps mod 2^32 by definition (no int64 tricks)."""
    x = x.astype(np.uint32)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x21F0AAAD)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x735A2D97)
        x ^= x >> np.uint32(15)
    return x


def _ref_hash(seed: int, view: np.ndarray, index: np.ndarray, draw: int) -> np.ndarray:
    view, index = np.broadcast_arrays(np.asarray(view, dtype=np.int64), np.asarray(index, dtype=np.int64))
    words = [
        np.full(view.shape, seed & M32),
        np.full(view.shape, (seed >> 32) & M32),
        view.astype(np.uint64) & M32,
        (view.astype(np.uint64) >> np.uint64(32)) & M32,
        index.astype(np.uint64) & M32,
        np.full(view.shape, draw),
    ]
    h = np.zeros(view.shape, dtype=np.uint32)
    for w in words:
        h = _ref_mix(h ^ w.astype(np.uint32) ^ np.uint32(0x9E3779B9))
    return h


def _ref_draws(aug: Augment, index: np.ndarray, view) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    span = 2 * aug.crop_padding + 1
    dy, dx, fl = (_ref_hash(aug.seed, view, index, d).astype(np.uint64) for d in (0, 1, 2))
    return (dy * span) >> np.uint64(32), (dx * span) >> np.uint64(32), ((fl * 2) >> np.uint64(32)).astype(bool)


def _ref_geometric(aug: Augment, images: np.ndarray, index: np.ndarray, view) -> np.ndarray:
    """Slow per-sample crop-with-zero-padding and flip."""
    p = aug.crop_padding
    dy, dx, fl = _ref_draws(aug, index, view)
    out = np.empty_like(images)
    h, w = images.shape[2:]
    for b in range(images.shape[0]):
        padded = np.pad(images[b], ((0, 0), (p, p), (p, p)))
        crop = padded[:, dy[b] : dy[b] + h, dx[b] : dx[b] + w]
        out[b] = crop[:, :, ::-1] if (aug.flip and fl[b]) else crop
    return out


def _images(n: int, c: int = 3, h: int = 9, w: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# -------------------------------------------------------------------------------------------------------- tests
def test_hash_matches_uint32_reference():
    idx = torch.tensor([0, 1, 2, 3, 1000, 2**31 - 1, 2**32 - 1, 123456789])
    for seed in (0, 1, 42, -1, 2**40 + 3):
        for view in (0, 1, 7, 2**33):
            got = hash_draws(seed, view, idx, [0, 1, 2, 5])
            for j, d in enumerate([0, 1, 2, 5]):
                ref = _ref_hash(seed, np.int64(view), idx.numpy(), d)
                assert got[:, j].tolist() == ref.astype(np.int64).tolist()
    assert int(hash_draws(0, 0, idx, [0]).min()) >= 0 and int(hash_draws(0, 0, idx, [0]).max()) <= M32


def test_numpy_and_torch_backends_give_identical_bytes():
    # The CPU path (numpy) and the device path (torch) must agree bit for bit: views are replayed across devices.
    aug = Augment((0.49, 0.48, 0.45), (0.25, 0.24, 0.26), crop_padding=4, flip=True, seed=123)
    x = _images(97, h=13, w=10, seed=4)
    idx = torch.randint(0, 10**9, (97,), generator=torch.Generator().manual_seed(2))
    for view in (0, 3, torch.arange(97) % 5):
        a = aug.normalize(aug.geometric(x, idx, view, backend="numpy"), backend="numpy")
        b = aug.normalize(aug.geometric(x, idx, view, backend="torch"), backend="torch")
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # bitwise, not just numerically close
    words_np = hash_draws(5, np.arange(40) % 3, np.arange(40) * 11, [0, 1, 2])
    words_t = hash_draws(5, torch.arange(40) % 3, torch.arange(40) * 11, [0, 1, 2])
    assert np.array_equal(words_np, words_t.numpy())
    with pytest.raises(ConfigError, match="backend"):
        aug.geometric(x, idx, 0, backend="jax")


def test_scalar_and_tensor_views_agree():
    idx = torch.arange(50)
    v = torch.tensor([3] * 25 + [8] * 25)
    words = hash_draws(9, v, idx, [0, 1])
    assert torch.equal(words[:25], hash_draws(9, 3, idx[:25], [0, 1]))
    assert torch.equal(words[25:], hash_draws(9, 8, idx[25:], [0, 1]))
    assert torch.equal(words[:25], hash_draws(9, torch.tensor(3), idx[:25], [0, 1]))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("pad, flip", [(0, True), (2, False), (4, True), (3, True)])
def test_matches_per_sample_reference(pad, flip, backend):
    aug = Augment((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), crop_padding=pad, flip=flip, seed=11)
    x = _images(64)
    idx = torch.arange(100, 164)
    for view in (0, 5):
        geo = aug.geometric(x, idx, view, backend=backend)
        assert geo.dtype == torch.uint8
        assert np.array_equal(geo.numpy(), _ref_geometric(aug, x.numpy(), idx.numpy(), view))
        out = aug.normalize(geo, backend=backend)
        mean = np.array(aug.mean).reshape(1, 3, 1, 1)
        std = np.array(aug.std).reshape(1, 3, 1, 1)
        ref = (_ref_geometric(aug, x.numpy(), idx.numpy(), view) / 255.0 - mean) / std
        assert out.dtype == torch.float32 and np.allclose(out.numpy(), ref, atol=1e-5)


def test_view_independent_of_batch_composition_and_order():
    aug = Augment((0.5,) * 3, (0.25,) * 3, crop_padding=4, flip=True, seed=3)
    x = _images(40)
    idx = torch.arange(40) * 7 + 2
    full = aug(x, idx, 2)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    shuffled = aug(x[perm], idx[perm], 2)
    assert torch.equal(shuffled, full[perm])
    for start, stop in [(0, 1), (5, 6), (3, 17), (17, 40)]:
        assert torch.equal(aug(x[start:stop], idx[start:stop], 2), full[start:stop])
    # per-sample view tensor with mixed views == separate calls
    views = torch.tensor([2] * 20 + [9] * 20)
    mixed = aug(x, idx, views)
    assert torch.equal(mixed[:20], full[:20]) and torch.equal(mixed[20:], aug(x[20:], idx[20:], 9))


def test_independent_of_global_rng_and_repeatable():
    aug = Augment((0.5,), (0.5,), crop_padding=3, flip=True, seed=0)
    x, idx = _images(16, c=1), torch.arange(16)
    torch.manual_seed(0)
    a = aug(x, idx, 1)
    torch.manual_seed(12345)
    torch.rand(100)
    np.random.seed(7)
    assert torch.equal(a, aug(x, idx, 1))
    assert torch.equal(a, Augment((0.5,), (0.5,), crop_padding=3, flip=True, seed=0)(x, idx, 1))


def test_views_and_seeds_differ():
    aug = Augment((0.5,), (0.5,), crop_padding=4, flip=True, seed=0)
    idx = torch.arange(2000)
    d0 = torch.stack(aug.draws(idx, 0)[:2] + (aug.draws(idx, 0)[2].long(),), 1)
    d1 = torch.stack(aug.draws(idx, 1)[:2] + (aug.draws(idx, 1)[2].long(),), 1)
    same = (d0 == d1).all(1).float().mean().item()
    assert same < 0.03  # chance of an identical draw: 1/162
    x = _images(50, c=1, h=12, w=12)
    a, b = aug(x, idx[:50], 0), aug(x, idx[:50], 1)
    assert (a != b).flatten(1).any(1).float().mean() > 0.9
    other_seed = dataclasses.replace(aug, seed=1)
    assert (other_seed(x, idx[:50], 0) != a).flatten(1).any(1).float().mean() > 0.9


def test_turning_flip_on_keeps_crop_offsets():
    crop = Augment((0.0,), (1.0,), crop_padding=4, flip=False, seed=5)
    both = dataclasses.replace(crop, flip=True)
    idx = torch.arange(500)
    assert torch.equal(crop.draws(idx, 3)[0], both.draws(idx, 3)[0])
    assert torch.equal(crop.draws(idx, 3)[1], both.draws(idx, 3)[1])
    assert not crop.draws(idx, 3)[2].any()


def test_zero_padding_border():
    p = 4
    aug = Augment((0.0,), (1.0,), crop_padding=p, flip=True, seed=2)
    x = torch.full((300, 1, 10, 10), 255, dtype=torch.uint8)
    idx = torch.arange(300)
    out = aug.geometric(x, idx, 0)
    dy, dx, _ = aug.draws(idx, 0)
    for b in range(300):
        rows = torch.arange(10) + dy[b] - p  # source row in the unpadded image
        cols = torch.arange(10) + dx[b] - p
        inside = ((rows >= 0) & (rows < 10))[:, None] & ((cols >= 0) & (cols < 10))[None, :]
        if aug.draws(idx[b : b + 1], 0)[2].item():
            inside = inside.flip(1)
        assert torch.equal(out[b, 0] == 255, inside) and int(out[b, 0][~inside].sum()) == 0
    assert (out == 0).any()  # some samples really were shifted into the padding


def test_offsets_cover_range_uniformly():
    aug = Augment((0.0,), (1.0,), crop_padding=4, flip=True, seed=0)
    n = 45000
    dy, dx, fl = aug.draws(torch.arange(n), 0)
    assert int(dy.min()) == 0 and int(dy.max()) == 8 and int(dx.min()) == 0 and int(dx.max()) == 8
    for v in (dy, dx):
        counts = torch.bincount(v, minlength=9).double()
        chi2 = float(((counts - n / 9) ** 2 / (n / 9)).sum())
        assert chi2 < 26.1, chi2  # 99.9% quantile of chi-square with 8 degrees of freedom
    joint = torch.bincount(dy * 9 + dx, minlength=81).double()
    chi2 = float(((joint - n / 81) ** 2 / (n / 81)).sum())
    assert chi2 < 124.8, chi2  # 80 degrees of freedom: dy and dx are independent
    assert abs(fl.double().mean().item() - 0.5) < 0.01
    # Consecutive views of one index are not correlated either.
    dyv, _, _ = aug.draws(torch.zeros(n, dtype=torch.int64), torch.arange(n))
    counts = torch.bincount(dyv, minlength=9).double()
    assert float(((counts - n / 9) ** 2 / (n / 9)).sum()) < 26.1


def test_normalize_only_and_eval():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.4, 0.3)
    x = _images(8)
    ev = Augment.normalize_only(mean, std)
    assert not ev.is_random
    ref = (x.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(ev(x, torch.arange(8), 3).double(), ref, atol=1e-5)
    train = Augment(mean, std, crop_padding=4, flip=True, seed=9)
    assert train.as_eval() == ev.__class__(mean, std, 0, False, 9)
    assert torch.equal(train.as_eval()(x, torch.arange(8), 0), ev(x, torch.arange(8), 0))
    assert Augment.from_dict(train.to_dict()) == train
    assert train.to_dict() == {"mean": list(mean), "std": list(std), "crop_padding": 4, "flip": True, "seed": 9}
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.seed = 3  # type: ignore[misc]


def test_non_square_images():
    aug = Augment((0.5,), (0.5,), crop_padding=2, flip=True, seed=1)
    x = _images(10, c=1, h=5, w=11)
    idx = torch.arange(10)
    assert np.array_equal(aug.geometric(x, idx, 4).numpy(), _ref_geometric(aug, x.numpy(), idx.numpy(), 4))


def test_errors():
    aug = Augment((0.5,), (0.5,), crop_padding=1)
    with pytest.raises(DataError, match="uint8 or float32"):
        aug(torch.zeros(2, 1, 4, 4, dtype=torch.float64), torch.arange(2), 0)
    with pytest.raises(ConfigError, match=r"data.augment: crop and flip are image augmentations.*\(1, 40\)"):
        aug(torch.zeros(2, 1, 40), torch.arange(2), 0)
    with pytest.raises(DataError, match="channels"):
        aug(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.arange(2), 0)
    with pytest.raises(DataError, match="index"):
        aug(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.arange(3), 0)
    with pytest.raises(ConfigError, match="std"):
        Augment((0.5,), (0.0,))
    with pytest.raises(ConfigError, match="crop_padding"):
        Augment((0.5,), (0.5,), crop_padding=-1)
    with pytest.raises(ConfigError, match="one value per channel"):
        Augment((0.5, 0.5), (0.5,))


def test_float_data_of_any_shape_is_normalised_per_channel_in_its_own_units():
    """(B, D), (B, C, L) and float (B, C, H, W): (x - mean_c) / std_c along axis 1, no /255 (float data keeps its
    units). Reference in float64; tolerance: two float32 roundings of values of magnitude < 50, 4 * eps32 * 50."""
    g = torch.Generator().manual_seed(0)
    for shape in [(5, 3), (5, 3, 7), (5, 3, 4, 6)]:
        x = torch.randn(shape, generator=g) * 10 + 3
        mean, std = (1.0, -2.0, 0.5), (2.0, 4.0, 0.25)
        out = Augment.normalize_only(mean, std)(x, torch.arange(5), 0)
        bshape = (1, 3) + (1,) * (len(shape) - 2)
        ref = (x.double() - torch.tensor(mean, dtype=torch.float64).reshape(bshape)) / torch.tensor(
            std, dtype=torch.float64).reshape(bshape)
        assert out.dtype == torch.float32 and out.shape == x.shape
        assert torch.allclose(out.double(), ref, rtol=0, atol=4 * torch.finfo(torch.float32).eps * 50)
    # float images take the same crop/flip as uint8 ones: the geometric part is dtype-blind
    u8 = torch.randint(0, 256, (6, 1, 5, 7), generator=g, dtype=torch.uint8)
    aug = Augment((0.0,), (1.0,), crop_padding=2, flip=True, seed=3)
    assert torch.equal(aug.geometric(u8.float(), torch.arange(6), 2), aug.geometric(u8, torch.arange(6), 2).float())
