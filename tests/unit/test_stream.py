"""Streaming image folders (kdkit.data.stream) and the replayable ops (kdkit.data.ops): resized crop, flip, colour
jitter, mixup and cutmix as pure functions of (seed, view, index), on real JPEG folders the tests write."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.data import Augment, BatchLoader, load_source, ops
from kdkit.data.stream import FileImageData, StreamLoader
from kdkit.errors import ConfigError, DataError
from kdkit.losses.logits import mixed_cross_entropy

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def write_jpeg_folder(root: Path, per_class: int = 6, classes: int = 3, seed: int = 0) -> Path:
    """Class c: a noisy image whose dominant colour is channel c, sizes varying from 40x30 to 97x131 (not square)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(30, 98)), int(rng.integers(40, 132))
            arr = rng.integers(0, 90, size=(h, w, 3), dtype=np.uint8)
            arr[..., c % 3] += 150
            Image.fromarray(arr).save(root / f"class{c}" / f"img{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_jpeg_folder(tmp_path_factory.mktemp("jpegs"))


def _aug(**kw) -> Augment:
    base = {"flip": True, "seed": 5, "resized_crop": True, "jitter": (0.4, 0.4, 0.4)}
    return Augment(MEAN, STD, **{**base, **kw})


def _loader(data: FileImageData, aug: Augment, bs: int = 4, train: bool = True) -> StreamLoader:
    return StreamLoader(data, bs, aug, shuffle=True, seed=0, train=train)


# ------------------------------------------------------------------------------------------------ the source
def test_stream_source_keeps_only_the_file_list(folder):
    data = load_source(f"imagefolder:{folder}", stream=True, image_size=[24, 32], workers=0)
    assert isinstance(data, FileImageData) and not hasattr(data, "images")
    assert len(data) == 18 and data.classes == ["class0", "class1", "class2"] and data.input_shape == (3, 24, 32)
    assert data.targets.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    sub = data.subset([17, 0])
    assert sub.targets.tolist() == [2, 0] and sub.fingerprint() != data.fingerprint()


def test_a_broken_file_is_named_in_one_line(tmp_path):
    root = write_jpeg_folder(tmp_path / "d", per_class=2, classes=2)
    (root / "class1" / "img1.jpg").write_bytes(b"not a jpeg")
    for workers in (0, 2):
        data = load_source(f"imagefolder:{root}", stream=True, image_size=16, workers=workers)
        loader = _loader(data, _aug(), bs=4)
        with pytest.raises(DataError, match=r"img1\.jpg") as e:
            list(loader)
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ replay
@pytest.mark.parametrize("mix", [{}, {"mixup": 0.4, "cutmix": 1.0}])
def test_same_seed_view_index_gives_identical_pixels_in_any_batch(folder, mix):
    data = load_source(f"imagefolder:{folder}", stream=True, image_size=24, workers=0)
    loader = _loader(data, _aug(**mix), bs=5)
    loader.set_epoch(3)
    batches = list(loader)
    pos = torch.cat([b["index"] for b in batches])
    x = torch.cat([b["input"] for b in batches])
    # Re-create samples one by one and in another grouping: bit-identical.
    again = loader.batch_at(pos.flip(0), 3)["input"].flip(0)
    assert torch.equal(again, x)
    assert torch.equal(loader.batch_at(pos[7:8], 3)["input"][0], x[7])
    if mix:
        assert {"lam", "target_b"} <= set(batches[0])


def test_workers_decode_the_same_bytes_as_the_training_process(folder):
    inproc = load_source(f"imagefolder:{folder}", stream=True, image_size=24, workers=0)
    workers = load_source(f"imagefolder:{folder}", stream=True, image_size=24, workers=2)
    aug = _aug(mixup=0.4)
    a = list(_loader(inproc, aug))
    b = list(_loader(workers, aug))
    assert len(a) == len(b) == 5
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_views_differ_and_eval_view_is_fixed(folder):
    data = load_source(f"imagefolder:{folder}", stream=True, image_size=24, workers=0)
    loader = _loader(data, _aug(), bs=18)
    pos = torch.arange(18)
    v0, v1 = loader.batch_at(pos, 0)["input"], loader.batch_at(pos, 1)["input"]
    differ = [(not torch.equal(v0[i], v1[i])) for i in range(18)]
    assert all(differ)
    ev = _loader(data, _aug().as_eval(), bs=18, train=False)
    assert torch.equal(ev.batch_at(pos, 0)["input"], ev.batch_at(pos, 7)["input"])


# ------------------------------------------------------------------------------------------------ the ops
def test_resized_crop_boxes_follow_torchvision_sampling_rule():
    """Two-sample Kolmogorov-Smirnov tests between kdkit's boxes (hash uniforms) and torchvision's
    ``RandomResizedCrop.get_params`` (torch RNG, seeded) on one 300x500 image: area fraction, aspect ratio and the
    relative position. 8,000 draws each; with equal distributions each p-value is uniform, so p > 1e-3 fails by
    chance once in a thousand -- both sides are seeded, so the test is deterministic."""
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomResizedCrop

    n, h, w = 8000, 300, 500
    aug = Augment(MEAN, STD, resized_crop=True, seed=11)
    ours = aug.crop_boxes(np.arange(n), 0, np.full(n, h), np.full(n, w)).astype(np.float64)
    torch.manual_seed(0)
    img = torch.zeros(3, h, w)
    ref = np.array([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], dtype=float)
    for f in (lambda b: b[:, 2] * b[:, 3] / (h * w), lambda b: b[:, 3] / b[:, 2],
              lambda b: b[:, 0] / np.maximum(h - b[:, 2], 1), lambda b: b[:, 1] / np.maximum(w - b[:, 3], 1)):
        assert ks_2samp(f(ours), f(ref)).pvalue > 1e-3
    assert (ours[:, 2] <= h).all() and (ours[:, 3] <= w).all() and (ours[:, :2] >= 0).all()


def test_resized_crop_fallback_is_torchvision_centre_crop():
    """A 1-pixel-high strip: no attempt fits, so the box is torchvision's fallback (aspect clamped to 4/3)."""
    u = np.zeros((1, 4 * ops.RRC_ATTEMPTS)) + 0.999
    box = ops.resized_crop_boxes(u, np.array([3]), np.array([400]), (0.9, 1.0), (3 / 4, 4 / 3))
    assert box.tolist() == [[0, 198, 3, 4]]  # w = round(3 * 4/3) = 4, centred: (400 - 4) // 2


def test_color_jitter_matches_torchvision_blends_in_float64():
    """Each op against a float64 reference written from torchvision's definitions (blend = clamp(f a + (1 - f) b),
    truncated to uint8; grey = 0.299 R + 0.587 G + 0.114 B; contrast blends with the grey mean, saturation with the
    grey image rounded down). Truncation may land one level apart where float32 and float64 round a product to either
    side of an integer, hence atol 1 per op (ops are checked one at a time so such a step does not compound)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 9, 7), dtype=torch.uint8, generator=g)
    f = torch.tensor([0.7, 1.3, 1.0, 0.0])
    ref = x.double().numpy()
    grey = 0.299 * ref[:, 0] + 0.587 * ref[:, 1] + 0.114 * ref[:, 2]  # (4, 9, 7)
    fb = f.double().numpy()[:, None, None, None]
    expect = {
        "brightness": np.floor(np.clip(fb * ref, 0, 255)),
        "contrast": np.floor(np.clip(fb * ref + (1 - fb) * grey.mean(axis=(1, 2))[:, None, None, None], 0, 255)),
        "saturation": np.floor(np.clip(fb * ref + (1 - fb) * np.floor(grey)[:, None], 0, 255)),
    }
    for k, (name, want) in enumerate(expect.items()):
        args = [None, None, None]
        args[k] = f
        got = ops.color_jitter(x, *args).double().numpy()
        assert np.abs(got - want).max() <= 1, name
        assert np.array_equal(got[2], ref[2])  # factor 1: identity, exactly
    out = ops.color_jitter(x, f, f.flip(0), f)
    assert out.dtype == torch.uint8 and not torch.equal(out, x)


def test_mixup_and_cutmix_pixels_and_lambda():
    a = torch.full((2, 1, 10, 10), 200, dtype=torch.uint8)
    b = torch.full((2, 1, 10, 10), 100, dtype=torch.uint8)
    lam = torch.tensor([0.25, 0.0])
    boxes, lam_eff = ops.cutmix_boxes(np.array([0.0, 0.64]), np.array([0.5, 0.0]), np.array([0.5, 0.0]), 10, 10)
    out = ops.mix_images(a, b, lam, torch.from_numpy(boxes), torch.tensor([False, True]))
    assert (out[0] == 125).all()  # 0.25 * 200 + 0.75 * 100
    # cut ratio sqrt(1 - 0.64) = 0.6 -> 6x6 box centred at (0, 0), clipped to 3x3: 9 pixels from b.
    assert boxes[1].tolist() == [0, 3, 0, 3] and math.isclose(lam_eff[1], 1 - 9 / 100)
    assert int((out[1] == 100).sum()) == 9 and int((out[1] == 200).sum()) == 91


def test_mixed_cross_entropy_equals_soft_target_ce_in_float64():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 5, dtype=torch.float64, generator=g)
    ya, yb = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 1, 4, 0, 2, -1])
    lam = torch.tensor([0.3, 0.5, 1.0, 0.0, 0.9, 0.5], dtype=torch.float64)
    got = mixed_cross_entropy(z, ya, yb, lam)
    soft = lam[:, None] * torch.nn.functional.one_hot(ya, 5) + (1 - lam[:, None]) * torch.nn.functional.one_hot(
        yb.clamp_min(0), 5)
    per = -(soft * torch.log_softmax(z, 1)).sum(1)
    assert torch.allclose(got, per[:5].mean(), rtol=1e-12)  # the last sample's partner is unlabelled: left out


def test_in_memory_mixing_replays_and_mixes_labels():
    data = load_source("mnist_5k")
    aug = Augment((0.13,), (0.3,), crop_padding=2, flip=True, mixup=0.4, cutmix=1.0, seed=2)
    loader = BatchLoader(data, torch.arange(500), 32, aug, shuffle=True, seed=0)
    b = next(iter(loader))
    again = loader.batch_at(b["index"][5:9], 0)
    assert torch.equal(again["input"], b["input"][5:9]) and torch.equal(again["lam"], b["lam"][5:9])
    partner = aug.partners(b["index"], 0, 500)
    assert torch.equal(b["target_b"], data.targets[partner]) and ((b["lam"] >= 0) & (b["lam"] <= 1)).all()
    assert not torch.equal(b["input"], Augment((0.13,), (0.3,), crop_padding=2, flip=True, seed=2)(
        data.images[b["index"]], b["index"], 0))


def test_bad_augment_values_are_one_line():
    with pytest.raises(ConfigError, match="jitter"):
        Augment(MEAN, STD, jitter=(2.0, 0, 0))
    with pytest.raises(ConfigError, match="crop_scale"):
        Augment(MEAN, STD, crop_scale=(0.5, 0.2))


def test_worker_jitter_is_torchvision_pil_colour_jitter_exactly(folder):
    """Streamed images are jittered in the workers by PIL's ImageEnhance, the functions torchvision's ColorJitter
    calls on PIL images: the same factors give the same bytes as torchvision.transforms.v2.functional."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    with Image.open(next(folder.glob("class1/*.jpg"))) as im:
        im = im.convert("RGB").resize((20, 16))
    f = (0.75, 1.3, 0.6)
    ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(im, f[0]), f[1]), f[2])
    assert np.array_equal(np.asarray(ops.color_jitter_pil(im, *f)), np.asarray(ref))
    aug = _aug()
    fac = aug.jitter_factors(np.arange(2000), 0)
    lo, hi = fac.min(0), fac.max(0)
    assert np.allclose(lo, 0.6, atol=2e-3) and np.allclose(hi, 1.4, atol=2e-3)  # U[1 - 0.4, 1 + 0.4], 2000 draws


# ------------------------------------------------------------------------------------------------ recipes
def _recipe(data: dict):
    from kdkit.recipe import recipe_from_dict

    return recipe_from_dict({"student": {"name": "cnn"}, "data": data})


def test_build_data_streams_a_separate_validation_folder(folder, tmp_path):
    from kdkit.data.run import build_data

    val = write_jpeg_folder(tmp_path / "val", per_class=2, seed=1)
    params = {"stream": True, "image_size": [20, 28], "workers": 0}
    rd = build_data(_recipe({"name": f"imagefolder:{folder}", "params": params, "val": f"imagefolder:{val}",
                             "val_params": params, "batch_size": 4,
                             "augment": {"resized_crop": True, "flip": True, "cutmix": 1.0}}))
    assert isinstance(rd.train_loader, StreamLoader) and rd.input_shape == (3, 20, 28) and rd.input_dtype == "uint8"
    assert len(rd.val_loader.data) == 6 and len(rd.mean) == 3 and all(0 < s for s in rd.std)
    b = next(iter(rd.train_loader))
    assert b["input"].shape == (4, 3, 20, 28) and "lam" in b
    v = next(iter(rd.val_loader))
    assert "lam" not in v and v["input"].shape[1:] == (3, 20, 28)


def test_wrong_combinations_are_one_line(folder):
    from kdkit.data.run import build_data

    with pytest.raises(ConfigError, match="resized_crop works on streamed"):
        build_data(_recipe({"name": "digits", "augment": {"resized_crop": True}}))
    with pytest.raises(ConfigError, match="both be streamed"):
        build_data(_recipe({"name": f"imagefolder:{folder}", "params": {"stream": True, "workers": 0},
                            "val": f"imagefolder:{folder}", "val_params": {"image_size": 224}}))
    with pytest.raises(ConfigError, match="crop_padding"):
        build_data(_recipe({"name": f"imagefolder:{folder}", "params": {"stream": True, "workers": 0},
                            "augment": {"crop_padding": 4}}))


def test_label_terms_refuse_mixed_batches_and_ce_weighs_both_labels():
    from kdkit.objects import _terms
    from kdkit.terms.base import hard_target
    from kdkit.terms.logits import CrossEntropyTerm

    batch = {"target": torch.tensor([0, 1]), "target_b": torch.tensor([1, 1]), "lam": torch.tensor([0.25, 1.0])}
    with pytest.raises(ConfigError, match="only 'ce' weighs both"):
        hard_target(batch)

    class Inp:  # the two fields CrossEntropyTerm.compute reads
        student = type("S", (), {"logits": torch.tensor([[2.0, 0.0], [0.0, 1.0]])})()

    Inp.batch = batch
    want = mixed_cross_entropy(Inp.student.logits, batch["target"], batch["target_b"], batch["lam"])
    assert torch.equal(CrossEntropyTerm().compute(Inp), want)
    assert _terms("consistent", "kd") == [{"name": "kd", "params": {"temperature": 1.0}}]


def test_mixing_draws_follow_beta_and_uniform_partners():
    """λ of mixup against Beta(α, α) and the partners against uniform over the split (KS, 5,000 samples; p > 1e-3 is
    a one-in-a-thousand false alarm, and the draws are fixed by the seed, so the test is deterministic)."""
    from scipy.stats import beta, kstest

    aug = Augment(MEAN, STD, mixup=0.4, seed=9)
    idx = np.arange(5000)
    lam, _, use_cut = aug.mix_params(idx, 3, 32, 32)
    assert not use_cut.any() and kstest(lam.double().numpy(), beta(0.4, 0.4).cdf).pvalue > 1e-3
    partners = aug.partners(idx, 3, 1000).numpy()
    assert kstest((partners + 0.5) / 1000, "uniform").pvalue > 1e-3 and partners.min() >= 0 and partners.max() < 1000
    both = Augment(MEAN, STD, mixup=1.0, cutmix=1.0, seed=9)
    assert abs(float(both.mix_params(idx, 3, 32, 32)[2].double().mean()) - 0.5) < 0.03  # each op half the time
