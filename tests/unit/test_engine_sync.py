"""The training loop reads no device value per step: loss, term values and correct counts stay on the device and are
read once per logging interval (on a GPU every read waits for the queued kernels). Checked by counting every
tensor-to-host conversion during ``Engine.fit`` for two training-set sizes: the count must not grow with the steps."""

from __future__ import annotations

import json

import pytest
import torch

import kdkit
from kdkit.engine.loop import DeviceSums, Engine
from kdkit.types import StepOutput

# the ways a device value reaches the host (``.numpy()`` is left out: it works on CPU tensors only, so it never waits
# for a device -- the data loader uses it on its host-side index arrays)
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


def _count_reads(monkeypatch) -> dict[str, int]:
    counts = {"n": 0, "on": False}
    for name in READS:
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **k):
            if counts["on"]:
                counts["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    fit = Engine.fit

    def counted_fit(self, *a, **k):
        counts["on"] = True
        try:
            return fit(self, *a, **k)
        finally:
            counts["on"] = False

    monkeypatch.setattr(Engine, "fit", counted_fit)
    return counts


def _recipe(out, limit: int) -> dict:
    return {"name": f"r{limit}", "output_dir": str(out), "epochs": 1, "eval_every": 1,
            "data": {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 32, "train_limit": limit},
            "student": {"name": "mlp", "params": {"hidden": [16]}},
            "teachers": [{"name": "mlp", "params": {"hidden": [16]}}],
            "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4}}]}


def test_reads_do_not_grow_with_steps(monkeypatch, tmp_path):
    monkeypatch.setattr(Engine, "check_every_step", False)  # as on a GPU (on the CPU a per-step check is free)
    monkeypatch.setattr(Engine, "log_every_steps", 1000)
    counts = _count_reads(monkeypatch)
    reads = {}
    for limit in (64, 320):  # 2 and 10 steps
        counts["n"] = 0
        kdkit.distill(_recipe(tmp_path, limit), quiet=False)  # with the progress bar
        reads[limit] = counts["n"]
    assert reads[64] == reads[320], reads


def test_device_sums_equal_the_per_step_host_sums():
    g = torch.Generator().manual_seed(0)
    host = {"loss": 0.25, "terms": {"kd": 1.5}, "correct": 3, "n_labelled": 4, "n": 4, "seconds": 1.0}
    sums = DeviceSums(torch.device("cpu"), dict(host, terms=dict(host["terms"])), start=1)
    want = dict(host, terms=dict(host["terms"]))
    for _ in range(5):  # the old per-step accumulation, in Python floats, beside the device one
        logits = torch.randn(8, 10, generator=g)
        y = torch.randint(-1, 10, (8,), generator=g)
        loss, kd, ce = torch.rand(3, generator=g)
        sums.add(StepOutput(loss=loss, logits=logits, terms={"kd": kd, "ce": ce}), {"input": logits, "target": y})
        want["loss"] += float(loss) * 8
        for k, v in (("kd", kd), ("ce", ce)):
            want["terms"][k] = want["terms"].get(k, 0.0) + float(v) * 8
        keep = y >= 0
        want["correct"] += int((logits.argmax(1)[keep] == y[keep]).sum())
        want["n_labelled"] += int(keep.sum())
        want["n"] += 8
    got, bad = sums.read()
    assert bad is None
    assert got == want  # bit for bit: same float64 additions in the same order


def test_a_nonfinite_loss_is_caught_at_the_next_read(monkeypatch, tmp_path):
    monkeypatch.setattr(Engine, "check_every_step", False)
    monkeypatch.setattr(Engine, "log_every_steps", 3)
    r = _recipe(tmp_path, 320) | {"optim": {"name": "sgd", "lr": 1e30}}
    with pytest.raises(kdkit.errors.KdkitError, match=r"loss became .* at epoch 1, between batch 1 and 2"):
        kdkit.distill(r, quiet=False)


def test_logged_figures_unchanged(tmp_path):
    res = kdkit.distill(_recipe(tmp_path, 128), quiet=True)
    rec = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()][0]
    assert rec["samples"] >= 128 and rec["train_loss"] == pytest.approx(0.5 * rec["train_ce"] + 0.5 * rec["train_kd"],
                                                                       rel=1e-6)
    assert 0.0 <= rec["train_top1"] <= 100.0


