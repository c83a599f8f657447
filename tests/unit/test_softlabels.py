"""Soft-label store: encoding/reconstruction identities, the on-disk format, a real cache run on bundled MNIST digits
(replayed views are pixel-equal to what the teacher saw, stored values are the teacher's logits to fp16 precision),
mismatch detection for every identity field, and resume after a simulated crash."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kdkit.builder import build_context
from kdkit.data import Augment
from kdkit.errors import ConfigError, KdkitError
from kdkit.recipe import TermSpec, recipe_from_dict
from kdkit.softlabels import (
    SoftLabelStore,
    bytes_per_row,
    decode_topk,
    encode_topk,
    identity_diff,
    state_dict_sha256,
)
from kdkit.softlabels.cache import build_cache
from kdkit.softlabels.store import index_dtype, read_progress
from kdkit.teachers.frozen import FrozenTeacher
from kdkit.teachers.store import check_recipe_can_use_store
from kdkit.terms.base import LossTerm, SetupContext, TermInputs, build_term
from kdkit.types import ModelOutput, TrainState

# ----------------------------------------------------------------------------------------------------------------------
# Pure functions


def _ref_probs(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = z.astype(np.float64) / t
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_reconstruction_keeps_topk_probs_and_puts_the_rest_of_the_mass_in_the_tail():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 100, generator=g) * 3.0
    k = 10
    vals, idx, tail = encode_topk(z, k)
    assert vals.dtype == torch.float16 and tail.dtype == torch.float16 and idx.shape == (64, k)
    rec = decode_topk(vals, idx, tail, 100).numpy()
    p, q = _ref_probs(z.numpy()), _ref_probs(rec)
    top = np.argsort(-z.numpy(), axis=1)[:, :k]
    assert np.array_equal(np.sort(top, 1), np.sort(idx.numpy(), 1))
    # top-k probabilities are the teacher's (fp16 rounding of logits ~1e-3 relative -> ~1e-2 relative in exp)
    np.testing.assert_allclose(np.take_along_axis(q, top, 1), np.take_along_axis(p, top, 1), rtol=2e-2, atol=1e-6)
    mask = np.ones_like(p, dtype=bool)
    np.put_along_axis(mask, top, False, 1)
    true_tail = (p * mask).sum(1)
    rec_tail = (q * mask).reshape(64, -1)[mask.reshape(64, -1)].reshape(64, 90)
    np.testing.assert_allclose(rec_tail.sum(1), true_tail, rtol=2e-2)
    # ... spread evenly over the 90 other classes
    np.testing.assert_allclose(rec_tail, np.repeat(rec_tail.mean(1, keepdims=True), 90, 1), rtol=1e-6)
    assert true_tail.mean() > 0.05  # the test exercises a real tail


def test_tiny_tail_mass_does_not_cancel():
    # A confident teacher: tail mass ~1e-9. Storing 1 - Σ top-k probs would round to 0 (or negative) in fp16/fp32.
    z = torch.zeros(2, 10)
    z[:, 0] = 25.0
    z[1, 1] = 24.0
    vals, idx, tail = encode_topk(z, 2)
    q = _ref_probs(decode_topk(vals, idx, tail, 10).numpy())
    p = _ref_probs(z.numpy())
    np.testing.assert_allclose(q[:, 2:].sum(1), p[:, 2:].sum(1), rtol=2e-2)
    assert p[0, 2:].sum() < 1e-9


def test_k_equal_to_num_classes_is_exact_to_fp16():
    z = torch.randn(16, 7) * 5
    vals, idx, tail = encode_topk(z, 7)
    rec = decode_topk(vals, idx, tail, 7)
    assert torch.equal(rec, z.half().float())
    assert torch.all(tail == 0)


@pytest.mark.parametrize("t", [0.5, 2.0, 4.0, 8.0])
def test_tail_at_other_temperatures_follows_the_power_mean_bound(t):
    # ẑ_tail = log-mean-exp(z_tail): at T > 1 the rebuilt tail carries at least the true tail mass, at T < 1 at most.
    z = torch.randn(32, 50, dtype=torch.float64) * 2
    vals, idx, tail = encode_topk(z, 5)
    rec = decode_topk(vals, idx, tail, 50).double()
    mask = torch.ones_like(z, dtype=torch.bool).scatter(1, idx, False)
    true_tail = (torch.softmax(z / t, 1) * mask).sum(1)
    rec_tail = (torch.softmax(rec / t, 1) * mask).sum(1)
    slack = 2e-2 * true_tail  # fp16 rounding of the stored logits
    if t > 1:
        assert torch.all(rec_tail >= true_tail - slack)
    else:
        assert torch.all(rec_tail <= true_tail + slack)
    # the ratios inside the top-k stay exact at every temperature
    r = torch.softmax(rec / t, 1).gather(1, idx)
    s = torch.softmax(z.half().double() / t, 1).gather(1, idx)
    torch.testing.assert_close(r / r[:, :1], s / s[:, :1], rtol=1e-9, atol=0)


def test_index_dtype_and_bytes_per_view():
    assert index_dtype(100) == np.uint16 and index_dtype(65535) == np.uint16 and index_dtype(65536) == np.int32
    assert bytes_per_row(10, 100) == 42 <= 50  # target: <= 50 bytes per (sample, view) at k = 10
    assert bytes_per_row(10, 100_000) == 62


def test_non_finite_or_out_of_range_logits_are_refused():
    with pytest.raises(KdkitError, match="non-finite"):
        encode_topk(torch.tensor([[0.0, float("nan")]]), 1)
    with pytest.raises(KdkitError, match="float16"):
        encode_topk(torch.tensor([[1e5, 0.0]]), 1)
    with pytest.raises(ConfigError, match="topk"):
        encode_topk(torch.zeros(1, 3), 4)


def test_state_dict_hash_depends_on_every_weight():
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    h = state_dict_sha256(m)
    assert h == state_dict_sha256(m) and len(h) == 64
    with torch.no_grad():
        m[1].running_var[0] += 1e-6
    assert state_dict_sha256(m) != h


def test_store_files_are_plain_npy(tmp_path, monkeypatch):
    man = {"format": "kdkit-softlabels", "version": 1, "views": 2, "topk": 3, "num_classes": 5, "num_samples": 4,
           "chunks": 1, "arrays": SoftLabelStore.array_specs(2, 4, 3, 5), "identity": {}}
    store = SoftLabelStore.create(tmp_path / "s", man)
    z = torch.randn(4, 5)
    store.write(1, 0, *encode_topk(z, 3))
    store.finalize({})
    vals = np.load(tmp_path / "s" / "values.npy")
    assert vals.shape == (2, 4, 3) and vals.dtype == np.float16
    assert np.load(tmp_path / "s" / "indices.npy").dtype == np.uint16
    opened = SoftLabelStore.open(tmp_path / "s")
    assert opened.view_of_epoch(5) == 1
    got = opened.teacher_logits(torch.tensor([2, 0]), torch.tensor([1, 1]))
    want = decode_topk(*encode_topk(z[[2, 0]], 3), 5)
    assert torch.equal(got, want)
    assert not (tmp_path / "s" / "progress.json").exists()
    with pytest.raises(KdkitError, match="views 0..1"):
        opened.teacher_logits(torch.tensor([0]), 2)
    with pytest.raises(KdkitError, match="holds samples 0..3"):
        opened.teacher_logits(torch.tensor([4]), 1)
    # large stores rebuild each batch from the compact rows instead of a dense per-view table: same numbers
    import kdkit.softlabels.store as store_mod

    monkeypatch.setattr(store_mod, "DENSE_LIMIT", 0)
    compact = SoftLabelStore.open(tmp_path / "s")
    assert torch.equal(compact.teacher_logits(torch.tensor([2, 0]), 1), want) and compact._dense is None
    with pytest.raises(KdkitError, match="holds samples 0..3"):
        compact.teacher_logits(torch.tensor([4]), 1)
    mixed = compact.teacher_logits(torch.tensor([2, 0]), torch.tensor([1, 0]))  # two views in one batch
    assert torch.equal(mixed[0], want[0]) and torch.equal(mixed[1], torch.zeros(5))  # view 0 was never written


# ----------------------------------------------------------------------------------------------------------------------
# A real cache run on bundled MNIST digits

DATA = {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 32, "eval_batch_size": 64, "train_limit": 200,
        "augment": {"crop_padding": 2, "flip": True}}
VIEWS, TOPK, CHUNK = 3, 3, 64  # ~200 samples -> 4 chunks per view, 12 chunks


def _teacher_file(path, seed: int):
    from kdkit.engine.checkpoint import write_weights
    from kdkit.models import create_model

    torch.manual_seed(seed)
    m = create_model("cnn_student", num_classes=10, in_channels=1, image_size=28)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that eval mode matters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return write_weights(m, path)


def _recipe(tmp, teacher, store=None, **over):
    d = {"name": "sl", "output_dir": str(tmp / "runs"), "seed": 3, "data": json.loads(json.dumps(DATA)),
         "student": {"name": "mlp", "params": {"hidden": [16]}},
         "teachers": [{"name": "cnn_student", "checkpoint": str(teacher)}],
         "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4}}],
         "optim": {"name": "adamw", "lr": 0.003}, "epochs": 2, "soft_labels": str(store) if store else None}
    d.update(over)
    return d


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """One store, built while recording every input the teacher saw and every logit it produced."""
    tmp = tmp_path_factory.mktemp("sl")
    teacher = _teacher_file(tmp / "teacher.safetensors", 0)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    orig = FrozenTeacher.forward

    def spy(self, x):
        out = orig(self, x)
        seen.append((x.clone(), out.logits.clone()))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FrozenTeacher, "forward", spy)
        res = build_cache(recipe_from_dict(_recipe(tmp, teacher)), views=VIEWS, topk=TOPK, out=tmp / "store",
                          chunk_size=CHUNK, quiet=True)
    # Chunks run view by view, and each 64-sample chunk is one teacher batch of eval_batch_size 64.
    n = res.manifest["num_samples"]
    blocks = -(-n // CHUNK)
    inputs = torch.empty(VIEWS, n, 1, 28, 28)
    logits = torch.empty(VIEWS, n, 10)
    assert len(seen) == VIEWS * blocks
    for c, (x, z) in enumerate(seen):
        v, blk = divmod(c, blocks)
        inputs[v, blk * CHUNK: blk * CHUNK + x.shape[0]] = x
        logits[v, blk * CHUNK: blk * CHUNK + x.shape[0]] = z
    return {"tmp": tmp, "teacher": teacher, "store": tmp / "store", "result": res, "inputs": inputs, "logits": logits,
            "n": n, "chunks": VIEWS * blocks}


def test_cache_writes_a_complete_store(cached):
    res = cached["result"]
    m = json.loads((cached["store"] / "manifest.json").read_text())
    assert m["complete"] and m["views"] == VIEWS and m["topk"] == TOPK and m["num_classes"] == 10
    assert 190 <= m["num_samples"] <= 200 and res.chunks_total == res.chunks_computed == VIEWS * 4
    assert m["identity"]["augment"]["seed"] == 3 and m["identity"]["augment"]["crop_padding"] == 2
    assert len(m["identity"]["teachers"][0]["sha256"]) == 64
    assert res.file_bytes == 3 * 128 + VIEWS * cached["n"] * bytes_per_row(TOPK, 10)  # three .npy headers + data


def test_stored_values_are_the_teachers_logits_to_fp16_precision(cached):
    store = SoftLabelStore.open(cached["store"])
    z = cached["logits"]  # (V, N, K), recorded from the teacher's forward during caching
    vals = torch.from_numpy(np.array(store.arrays["values"])).float()
    idx = torch.from_numpy(np.array(store.arrays["indices"]).astype(np.int64))
    ref_vals, ref_idx = z.topk(TOPK, dim=2)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(vals, ref_vals.half().float())
    assert torch.all((vals - ref_vals).abs() <= ref_vals.abs() * 2.0**-11 + 2.0**-24)
    # tail = log-mean-exp of the other 7 logits
    rest = z.double().scatter(2, ref_idx, float("-inf"))
    ref_tail = torch.logsumexp(rest, 2) - math.log(10 - TOPK)
    tail = torch.from_numpy(np.array(store.arrays["tail"])).double()
    assert torch.all((tail - ref_tail).abs() <= ref_tail.abs() * 2.0**-11 + 1e-6)
    assert not torch.equal(z[0], z[1])  # different views really gave different teacher outputs


def test_distill_loader_replays_exactly_the_views_the_teacher_saw(cached):
    from kdkit.data.run import build_data

    recipe = recipe_from_dict(_recipe(cached["tmp"], cached["teacher"], cached["store"]))
    data = build_data(recipe)
    torch.manual_seed(123)
    source = build_context(recipe, data).store
    store = source.store
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # hashing the teachers leaves the RNG (the student's init) untouched
    loader = data.train_loader
    checked = 0
    for epoch in (0, 1, 2, 3, 7):
        loader.set_epoch(epoch)
        for batch in loader:
            v = epoch % VIEWS
            assert torch.all(batch["view"] == v)
            idx = batch["index"]
            assert torch.equal(batch["input"], cached["inputs"][v, idx])  # pixel-equal, bit for bit
            # and that is the plain Augment call of the brief: view v of sample i = augment(images[i], i, v)
            aug = Augment.from_dict(store.manifest["identity"]["augment"])
            assert torch.equal(batch["input"], aug(data.train.images[idx], idx, v))
            # reconstructed logits: the teacher's on its top-k, the log-mean-exp of the rest elsewhere
            z = cached["logits"][v, idx]
            t = source.outputs(batch).combined.logits
            top = z.topk(TOPK, 1).indices
            assert torch.equal(t.gather(1, top), z.gather(1, top).half().float())
            p, q = torch.softmax(z.double(), 1), torch.softmax(t.double(), 1)
            torch.testing.assert_close(q.gather(1, top).sum(1), p.gather(1, top).sum(1), rtol=2e-2, atol=1e-6)
            checked += idx.numel()
    assert checked == 5 * cached["n"]
    # resume mid-epoch (the engine's iter_from) still attaches the right rows
    loader.set_epoch(4)
    full = list(loader)
    rest = list(loader.iter_from(3))
    assert torch.equal(source.outputs(rest[0]).combined.logits, source.outputs(full[3]).combined.logits)
    assert torch.equal(rest[0]["index"], full[3]["index"]) and torch.equal(rest[0]["view"], full[3]["view"])


@pytest.mark.parametrize("override, phrase", [
    ({"seed": 4}, "augmentation seed (store 3, recipe 4)"),
    ({"data.augment.crop_padding": 3}, "augmentation crop_padding (store 2, recipe 3)"),
    ({"data.augment.flip": False}, "augmentation flip"),
    ({"data.mean": [0.2], "data.std": [0.3]}, "normalisation mean"),
    ({"data.train_limit": 150}, "training samples (store 2"),
    ({"data.split_seed": 1}, "data split"),
    ({"data.split_seed": 1}, "training data fingerprint"),
])
def test_a_store_that_does_not_match_the_recipe_is_refused(cached, override, phrase):
    from kdkit.data.run import build_data

    sets = [f"{k}={json.dumps(v)}" for k, v in override.items()]
    recipe = recipe_from_dict(_recipe(cached["tmp"], cached["teacher"], cached["store"]), sets)
    with pytest.raises(ConfigError) as err:
        build_context(recipe, build_data(recipe))
    msg = str(err.value)
    assert phrase in msg and "does not match the recipe" in msg and str(cached["store"]) in msg
    assert "\n" not in msg


def test_other_teacher_weights_are_refused(cached):
    from kdkit.data.run import build_data

    other = _teacher_file(cached["tmp"] / "other.safetensors", 1)
    recipe = recipe_from_dict(_recipe(cached["tmp"], other, cached["store"]))
    with pytest.raises(ConfigError, match=r"teacher 0 weights \(store sha256"):
        build_context(recipe, build_data(recipe))
    # without `teachers:` the recipe cannot name a teacher: the store is trusted for it, the data is still checked
    ok = recipe_from_dict(_recipe(cached["tmp"], other, cached["store"], teachers=[]))
    build_context(ok, build_data(ok))


def test_identity_diff_names_every_teacher_field():
    base = {"num_classes": 10, "data": {"name": "d", "num_samples": 5, "fingerprint": "a", "split_sha256": "s"},
            "augment": {"mean": [0.1], "std": [0.3], "crop_padding": 0, "flip": False, "seed": 0},
            "teachers": [{"name": "a", "params": {}, "checkpoint": "x", "sha256": "h1"},
                         {"name": "b", "params": {}, "checkpoint": "y", "sha256": "h2"}],
            "combine": {"mode": "mean_logits", "teacher_weights": None}}
    assert identity_diff(base, json.loads(json.dumps(base))) == []
    cur = json.loads(json.dumps(base))
    cur["augment"]["seed"] = 9  # augmentation off: the seed changes no view
    cur["augment"]["mean"] = [0.1 * (1 + 1e-9)]  # recomputed statistics may differ in the last bits
    assert identity_diff(base, cur) == []
    cur = json.loads(json.dumps(base))
    cur["num_classes"] = 100
    cur["teachers"][0]["name"] = "z"
    cur["teachers"][1]["params"] = {"w": 2}
    cur["combine"]["mode"] = "mean_probs"
    diff = " | ".join(identity_diff(base, cur))
    for phrase in ("number of classes (store 10, recipe 100)", "teacher 0 model (store 'a', recipe 'z')",
                   "teacher 1 params", "teacher combine"):
        assert phrase in diff
    cur = json.loads(json.dumps(base))
    cur["teachers"] = cur["teachers"][:1]
    assert "number of teachers (store 2, recipe 1)" in identity_diff(base, cur)


def test_identity_diff_names_mixing_and_its_seed():
    """A store of mixup views answers only a recipe with the same mixing and seed: the partner and λ of view v are
    drawn from (seed, v, i), so another α or seed gives other images than the teacher saw -- even without crop/flip."""
    base = {"num_classes": 10, "data": {"name": "d", "num_samples": 5, "fingerprint": "a", "split_sha256": "s"},
            "augment": {"mean": [0.1], "std": [0.3], "crop_padding": 0, "flip": False, "seed": 0, "mixup": 1.0},
            "teachers": None, "combine": {"mode": "mean_logits", "teacher_weights": None}}
    assert identity_diff(base, json.loads(json.dumps(base))) == []
    cur = json.loads(json.dumps(base))
    cur["augment"]["mixup"] = 0.2
    assert identity_diff(base, cur) == ["augmentation mixup (store 1.0, recipe 0.2)"]
    del cur["augment"]["mixup"]  # Augment.to_dict omits an op that is off
    assert identity_diff(base, cur) == ["augmentation mixup (store 1.0, recipe None)"]
    cur = json.loads(json.dumps(base))
    cur["augment"]["seed"] = 1  # mixup alone is random: the seed is part of the views
    assert identity_diff(base, cur) == ["augmentation seed (store 0, recipe 1)"]
    cur = json.loads(json.dumps(base))
    cur["augment"]["cutmix"] = 1.0
    cur["augment"]["jitter"] = [0.4, 0.0, 0.0]
    assert identity_diff(base, cur) == ["augmentation jitter (store None, recipe [0.4, 0.0, 0.0])",
                                        "augmentation cutmix (store None, recipe 1.0)"]


def test_an_interrupted_cache_run_resumes_and_matches_an_uninterrupted_one(cached):
    tmp = cached["tmp"]
    recipe = recipe_from_dict(_recipe(tmp, cached["teacher"]))
    out = tmp / "crashy"

    class Crash(RuntimeError):
        pass

    def crash_after_5(chunk_id, n_done):
        if n_done == 5:
            raise Crash("simulated crash")

    with pytest.raises(Crash):
        build_cache(recipe, views=VIEWS, topk=TOPK, out=out, chunk_size=CHUNK, quiet=True, on_chunk=crash_after_5)
    assert read_progress(out) == set(range(5))
    with pytest.raises(ConfigError, match=r"incomplete \(5/12 chunks\)"):
        SoftLabelStore.open(out)
    with pytest.raises(ConfigError, match=r"views \(store 3, now 2\)"):
        build_cache(recipe, views=2, topk=TOPK, out=out, chunk_size=CHUNK, quiet=True)
    computed = []
    res = build_cache(recipe, views=VIEWS, topk=TOPK, out=out, chunk_size=CHUNK, quiet=True,
                      on_chunk=lambda c, n: computed.append(c))
    assert computed == list(range(5, 12)) and res.chunks_computed == 7
    a, b = SoftLabelStore.open(out), SoftLabelStore.open(cached["store"])
    for name in ("values", "indices", "tail"):
        assert np.array_equal(np.asarray(a.arrays[name]), np.asarray(b.arrays[name])), name
    again = build_cache(recipe, views=VIEWS, topk=TOPK, out=out, chunk_size=CHUNK, quiet=True)
    assert again.chunks_computed == 0  # complete and matching: nothing to do


def test_augmentation_off_stores_one_view_and_ignores_the_seed(cached):
    from kdkit.data.run import build_data

    tmp = cached["tmp"]
    plain = {**DATA, "augment": {"crop_padding": 0, "flip": False}}
    res = build_cache(recipe_from_dict(_recipe(tmp, cached["teacher"], data=plain)), views=4, topk=10,
                      out=tmp / "plain", quiet=True)
    assert res.manifest["views"] == 1 and res.manifest["topk"] == 10
    recipe = recipe_from_dict(_recipe(tmp, cached["teacher"], tmp / "plain", data=plain, seed=11))
    data = build_data(recipe)
    build_context(recipe, data)  # another seed, same plain views: accepted
    data.train_loader.set_epoch(5)
    assert torch.all(next(iter(data.train_loader))["view"] == 0)


def test_cache_takes_a_recipe_path_or_dict_like_the_rest_of_the_api(cached):
    """docs/softlabels.md: `build_cache(recipe, ...)` with a YAML path, a dict or a Recipe (and `overrides`)."""
    import yaml

    tmp = cached["tmp"]
    path = tmp / "sl.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp, cached["teacher"])))
    kw = dict(views=VIEWS, topk=TOPK, out=cached["store"], chunk_size=CHUNK, quiet=True)
    for recipe in (path, str(path), _recipe(tmp, cached["teacher"])):
        res = build_cache(recipe, **kw)  # the same recipe: the complete store is recognised, nothing recomputed
        assert res.chunks_computed == 0 and res.chunks_total == cached["chunks"]
    with pytest.raises(ConfigError, match="augmentation seed"):  # the overrides are applied
        build_cache(path, overrides=["seed=5"], **kw)
    with pytest.raises(ConfigError, match="expected a Recipe, a YAML path or a dict"):
        build_cache(42, **kw)


def test_existing_store_for_something_else_needs_overwrite(cached):
    tmp = cached["tmp"]
    recipe = recipe_from_dict(_recipe(tmp, cached["teacher"]), ["seed=5"])
    with pytest.raises(ConfigError, match="made for something else: .*augmentation seed.*--overwrite"):
        build_cache(recipe, views=VIEWS, topk=TOPK, out=cached["store"], chunk_size=CHUNK, quiet=True)
    with pytest.raises(ConfigError, match="no `teachers:`"):
        build_cache(recipe_from_dict(_recipe(tmp, cached["teacher"], teachers=[])), out=tmp / "x", quiet=True)


def test_missing_store_and_feature_terms_are_refused(cached):
    from kdkit.data.run import build_data
    from kdkit.registry import LOSSES

    recipe = recipe_from_dict(_recipe(cached["tmp"], cached["teacher"], cached["tmp"] / "nope"))
    with pytest.raises(ConfigError, match="is not a soft-label store .*kdkit cache"):
        build_context(recipe, build_data(recipe))

    class FeatureTerm(LossTerm):
        needs_teacher_features = True

    name = "_softlabels_test_feature_term"
    LOSSES.add(name, FeatureTerm, "test only")
    try:
        recipe = recipe_from_dict(_recipe(cached["tmp"], cached["teacher"], cached["store"],
                                          terms=[{"name": "ce"}, {"name": name}]))
        with pytest.raises(ConfigError, match=f"loss term '{name}' reads teacher features"):
            build_context(recipe, build_data(recipe))
        import kdkit

        with pytest.raises(ConfigError, match="reads teacher features"):
            kdkit.distill(recipe, quiet=True)
    finally:
        LOSSES._entries.pop(name, None)


def test_every_logit_term_accepts_stored_logits(cached):
    """Contract over the registry: every term that needs a teacher but not its features runs on store logits."""
    from kdkit.registry import load_plugins

    load_plugins()
    from kdkit.registry import LOSSES

    store = SoftLabelStore.open(cached["store"])
    idx = torch.arange(16)
    t = store.teacher_logits(idx, 1)
    student = torch.nn.Linear(4, 10)
    ctx = SetupContext(student=student, teachers=[], example=torch.randn(2, 4), num_classes=10, num_train=200,
                       has_teacher_features=False)
    targets = [torch.randint(0, 10, (16,)), (torch.rand(16, 10) > 0.7).float()]
    def logit_only(cls) -> bool:
        return cls.needs_teacher and not cls.needs_teacher_features and not getattr(cls, "needs_input_grad", False)

    names = [n for n in LOSSES.names() if logit_only(LOSSES.get(n))]
    assert "kd" in names
    # the others are refused up front when the store is the only teacher
    for n in LOSSES.names():
        cls = LOSSES.get(n)
        if cls.needs_teacher and not logit_only(cls):
            r = recipe_from_dict({"student": {"name": "mlp"}, "soft_labels": "x", "terms": [{"name": n}]})
            with pytest.raises(ConfigError, match=f"loss term '{n}' (reads teacher features|differentiates)"):
                check_recipe_can_use_store(r)
    for name in names:
        term = build_term(TermSpec(name=name))
        term.setup(ctx)
        errors = []
        for y in targets:  # single-label, then multi-label targets
            s = torch.randn(16, 10, requires_grad=True)
            batch = {"input": torch.randn(16, 4), "target": y, "index": idx, "view": torch.ones(16, dtype=torch.long)}
            inp = TermInputs(student=ModelOutput(s), teacher=ModelOutput(t), batch=batch, state=TrainState())
            try:
                loss = term(inp)
            except Exception as e:  # noqa: BLE001 - a term may accept only one kind of target
                errors.append(f"{type(e).__name__}: {e}")
                continue
            assert torch.isfinite(loss), name
            loss.backward()
            assert s.grad is not None and torch.isfinite(s.grad).all(), name
            break
        else:
            pytest.fail(f"term '{name}' failed on stored logits: {errors}")
