"""The teacher execution policy: the auto decision (a pure function of measurements), the agreement figures, and a
real teacher run through the policy (which mode wins on this CPU is never asserted)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdkit.models import create_model
from kdkit.teachers.frozen import FrozenTeacher, FrozenTeachers
from kdkit.teachers.policy import (
    FP32,
    Measurement,
    Mode,
    TeacherPolicy,
    Tolerance,
    agreement,
    candidates,
    choose,
    keep_compiled,
)
from kdkit.types import ModelOutput

BF16, BF16_CL, FP32_CL = Mode("bf16"), Mode("bf16", True), Mode("fp32", True)


def M(mode: Mode, seconds: float, kl: float = 0.0, argmax: float = 1.0, error: str | None = None) -> Measurement:
    """A made-up measurement."""
    return Measurement(mode, seconds, {"kl": kl, "argmax_agreement": argmax}, error)


def test_choose_keeps_the_fastest_agreeing_mode():
    ms = [M(FP32, 1.0), M(FP32_CL, 0.8), M(BF16, 0.5, 1e-5, 1.0),
          M(BF16_CL, 0.3, 2e-5, 1.0)]
    mode, why = choose(ms)
    assert mode == BF16_CL and "0.30x" in why


def test_choose_rejects_modes_that_disagree_with_fp32():
    # bf16 is fastest but its distribution moved (KL above tolerance) or its decisions moved (argmax below 99%)
    assert choose([M(FP32, 1.0), M(BF16, 0.3, 5e-3, 1.0)])[0] == FP32
    assert choose([M(FP32, 1.0), M(BF16, 0.3, 1e-5, 0.97)])[0] == FP32
    # ... and the next-fastest agreeing mode wins instead
    assert choose([M(FP32, 1.0), M(BF16, 0.3, 5e-3, 1.0), M(FP32_CL, 0.7)])[0] == FP32_CL


def test_choose_keeps_fp32_when_bf16_is_slower_or_within_noise():
    # an AVX2-only CPU emulates bf16: slower than fp32, so fp32 stays ("never slower than fp32")
    mode, why = choose([M(FP32, 1.0), M(BF16, 2.5, 1e-5, 1.0)])
    assert mode == FP32 and "fp32" in why
    # 3% faster is within timing noise (min_gain 5%): the exact reference stays
    assert choose([M(FP32, 1.0), M(BF16, 0.97, 1e-5, 1.0)])[0] == FP32
    assert choose([M(FP32, 1.0), M(BF16, 0.97, 1e-5, 1.0)], Tolerance(min_gain=0.0))[0] == BF16


def test_choose_never_picks_a_failed_mode():
    ms = [M(FP32, 1.0), M(Mode("fp16"), 0.0, 0.0, 1.0, error="RuntimeError: no kernel")]
    assert choose(ms)[0] == FP32
    assert choose([M(BF16, math.inf, math.inf, 0.0, error="x")])[0] == FP32


def test_agreement_matches_a_float64_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    fa, fb = torch.randn(16, 3, 4, 4, generator=g), torch.randn(16, 3, 4, 4, generator=g) * 0.01
    ref = ModelOutput(a, {"f": fa})
    assert agreement(ref, ModelOutput(a.clone(), {"f": fa.clone()})) == (0.0, 1.0, 0.0)
    kl, agree, rel = agreement(ref, ModelOutput(b, {"f": fa + fb}), temperature=4.0)

    def kl64(x, y):  # independent: numpy-free float64 loops over rows
        out = []
        for r in range(x.shape[0]):
            p = [math.exp(v / 4.0) for v in x[r].double().flatten().tolist()]
            q = [math.exp(v / 4.0) for v in y[r].double().flatten().tolist()]
            sp, sq = sum(p), sum(q)
            out.append(sum(pi / sp * math.log((pi / sp) / (qi / sq)) for pi, qi in zip(p, q, strict=True)))
        return sum(out) / len(out)

    want_kl = max(kl64(a, b), kl64(fa, fa + fb))
    # the argmax is the logits' class decision only; a feature is judged by its relative L2 error
    want_agree = sum(int(max(range(10), key=lambda j: a[r, j]) == max(range(10), key=lambda j: b[r, j]))
                     for r in range(16)) / 16
    # the difference of the two float32 tensors as compared (fa + fb is rounded to float32 before the comparison)
    fa64, fb64 = fa.double().flatten().tolist(), ((fa + fb).double() - fa.double()).flatten().tolist()
    want_rel = math.sqrt(sum(v * v for v in fb64)) / math.sqrt(sum(v * v for v in fa64))
    assert kl == pytest.approx(want_kl, rel=1e-9)  # both float64; only summation order differs
    assert agree == want_agree
    assert rel == pytest.approx(want_rel, rel=1e-9)
    assert 0.005 < rel < 0.02  # noise of 1% of the feature's scale


def test_a_flipped_feature_argmax_is_not_a_disagreement_but_a_drifted_feature_is():
    """bf16 rounding moves a feature map by ~0.3% but flips the position of its largest activation (a near-tie among
    thousands) in ~5% of samples: only the logits' argmax is a decision. A feature that drifts by more than
    ``feature_rel`` (5%) is refused, whatever its argmax."""
    z = torch.tensor([[3.0, 0.0, -1.0], [0.0, 2.0, 1.0]])
    f = torch.tensor([[[[1.0, 0.999], [0.5, 0.2]]], [[[0.1, 0.3], [0.998, 1.0]]]])  # (2, 1, 2, 2): near-tied maxima
    swapped = f.clone()
    swapped[0, 0, 0, 1], swapped[1, 0, 1, 0] = 1.001, 1.001  # each sample's argmax moves; the maps move by ~0.1%
    kl, agree, rel = agreement(ModelOutput(z, {"f": f}), ModelOutput(z.clone(), {"f": swapped}))
    assert agree == 1.0 and rel < 0.01
    tol = Tolerance()
    assert tol.agrees({"kl": kl, "argmax_agreement": agree, "feature_rel_err": rel})
    kl, agree, rel = agreement(ModelOutput(z, {"f": f}), ModelOutput(z.clone(), {"f": f * 1.1}))  # 1.1 in float32
    assert rel == pytest.approx(0.1, rel=1e-6) and not tol.agrees({"kl": kl, "argmax_agreement": agree,
                                                                    "feature_rel_err": rel})


def test_candidates():
    assert candidates("auto", "auto", "cpu", 4) == [FP32, FP32_CL, BF16, BF16_CL]
    assert Mode("fp16") in candidates("auto", False, "cuda", 2)  # fp16 is a GPU candidate only
    assert candidates("auto", "auto", "cpu", 2) == [FP32, BF16]  # no channels-last for non-image inputs
    assert candidates("bf16", True, "cpu", 4) == [BF16_CL]
    assert candidates("fp32", True, "cpu", 3) == [FP32]


def _teacher(policy, taps=("stage2",)):
    torch.manual_seed(0)
    return FrozenTeacher(create_model("cnn_teacher", num_classes=10, in_channels=1, image_size=28), taps, policy)


def test_auto_policy_measures_records_and_gives_ordinary_float32_outputs(tmp_path):
    record = tmp_path / "teacher_policy.json"
    lines: list[str] = []
    policy = TeacherPolicy("auto", "auto", record=record, log=lines.append, repeats=1)
    t = _teacher(policy)
    x = torch.randn(8, 1, 28, 28)
    out = t(x)
    assert out.logits.dtype == torch.float32 and out.features["stage2"].dtype == torch.float32
    # not inference tensors: the terms put them in the student's graph
    assert not out.logits.is_inference() and not out.features["stage2"].is_inference()
    w = torch.ones((), requires_grad=True)
    ((w * out.features["stage2"]) ** 2).mean().backward()  # saves the teacher feature for backward
    saved = json.loads(record.read_text())["teachers"][0]
    assert [m["mode"] for m in saved["measurements"]] == ["fp32", "fp32+channels_last", "bf16", "bf16+channels_last"]
    assert all(m["seconds"] > 0 for m in saved["measurements"] if m["error"] is None)
    assert saved["chosen"] == t.mode.label and saved["reason"] and len(lines) == 1 and t.mode.label in lines[0]
    # whatever was chosen agrees with fp32 within the tolerance
    ref = FrozenTeacher(t.model, ("stage2",)).run(x, FP32)
    kl, agree, rel = agreement(ref, out)
    assert kl <= policy.tolerance.kl and agree >= policy.tolerance.argmax and rel <= policy.tolerance.feature_rel
    assert all("feature_rel_err" in m for m in saved["measurements"] if m["error"] is None)  # stage2 is tapped

    def never(*a):
        raise AssertionError("a recorded choice must be reused, not measured again")

    again = TeacherPolicy("auto", "auto", record=record)
    assert again.decide(0, never, x) == t.mode  # a resumed run keeps its choice
    assert TeacherPolicy("auto", False, record=record).decide(0, t.run, x) in (FP32, BF16)  # another request: measured


@pytest.mark.parametrize("precision,cl", [("bf16", True), ("fp32", True), ("bf16", False)])
def test_forced_modes_run_and_stay_close_to_fp32(precision, cl):
    x = torch.randn(8, 1, 28, 28)
    t = _teacher(TeacherPolicy(precision, cl))
    out = t(x)
    assert t.mode == Mode(precision, cl)
    ref = FrozenTeacher(t.model, ("stage2",))(x)
    # bf16 rounds to 8 mantissa bits: logits of this small net move by well under 0.1
    assert torch.allclose(out.logits, ref.logits, atol=0.1 if precision == "bf16" else 1e-5)


def test_fp32_teacher_ignores_the_students_autocast():
    x = torch.randn(8, 1, 28, 28)
    t = _teacher(None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = t(x)
    assert torch.equal(out.logits, t(x).logits)  # same bits as outside autocast


def test_compile_failure_falls_back_to_eager(monkeypatch, tmp_path):
    def broken(*a, **k):
        raise RuntimeError("no C compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    lines: list[str] = []
    policy = TeacherPolicy("fp32", False, compile=True, record=tmp_path / "p.json", log=lines.append)
    teachers = FrozenTeachers([create_model("mlp", num_classes=10, in_channels=1, image_size=28)], policy=policy)
    x = torch.randn(4, 1, 28, 28)
    out = teachers.outputs({"input": x})
    assert out.combined.logits.shape == (4, 10)
    saved = json.loads((tmp_path / "p.json").read_text())["teachers"][0]
    assert "no C compiler" in saved["compile_error"] and any("running it eagerly" in s for s in lines)


def test_keep_compiled_needs_a_gain_beyond_noise_and_states_the_break_even():
    # measured on this project's AMD EPYC (docs/benchmarks.md): wrn_40_2's bf16+CL forward 0.78x eager once compiled
    keep, why = keep_compiled(0.3116, 0.2416, 20.5)
    assert keep and "0.78x" in why and "after 293 calls" in why  # 20.5 s / 0.070 s saved per call
    assert keep_compiled(1.0, 0.95, 10.0)[0]  # exactly the 5% margin
    keep, why = keep_compiled(1.0, 0.97, 10.0)  # within timing noise: eager stays, the break-even is still said
    assert not keep and "0.97x" in why and "after 333 calls" in why
    keep, why = keep_compiled(1.0, 2.0, 30.0)  # slower (the cnn_student case): never paid back
    assert not keep and "2.00x" in why and "paid back" not in why
    assert not keep_compiled(1.0, 0.9, 1.0, min_gain=0.2)[0]


def _fake_compile(calls: list):
    """torch.compile that returns the eager model (so nothing is compiled) and records its options."""
    def fake(model, *a, **k):
        calls.append(k.get("options"))
        return model
    return fake


@pytest.mark.parametrize("request_, decided, kept", [(True, False, True), ("auto", True, True),
                                                     ("auto", False, False)])
def test_compile_is_timed_recorded_and_kept_by_the_request(monkeypatch, tmp_path, request_, decided, kept):
    """After the mode is chosen the teacher is compiled (with Inductor freezing), the first call and the eager and
    compiled forwards are timed and recorded; ``compile: true`` keeps it, ``auto`` keeps what keep_compiled says
    (its decision is faked here: the timings of a fake compiler are noise)."""
    import kdkit.teachers.policy as policy_mod

    calls: list = []
    monkeypatch.setattr(torch, "compile", _fake_compile(calls))
    monkeypatch.setattr(policy_mod, "keep_compiled", lambda *a, **k: (decided, "made-up reason"))
    lines: list[str] = []
    policy = TeacherPolicy("fp32", False, compile=request_, record=tmp_path / "p.json", log=lines.append, repeats=1)
    teacher = FrozenTeacher(create_model("mlp", num_classes=10, in_channels=1, image_size=28), policy=policy)
    teacher(torch.randn(4, 1, 28, 28))
    assert calls == [{"freezing": True}]  # compiled once, with freezing: the weights of a frozen teacher are constant
    assert (teacher._compiled is not None) == kept
    rec = json.loads((tmp_path / "p.json").read_text())["teachers"][0]["compile"]
    assert rec["kept"] == kept and rec["requested"] == request_ and rec["freezing"] is True
    assert rec["first_call_seconds"] > 0 and rec["eager_seconds"] > 0 and rec["compiled_seconds"] > 0
    assert rec["reason"] == ("compile: true (made-up reason)" if request_ is True else "made-up reason")
    assert any(("torch.compile kept" if kept else "torch.compile not kept") in s for s in lines)


def test_compile_failure_at_the_first_call_with_auto_falls_back_to_eager(monkeypatch, tmp_path):
    def lazy_broken(model, *a, **k):  # where Inductor really fails: at the first call, not at torch.compile
        def call(*args, **kwargs):
            raise RuntimeError("InductorError: no C compiler found")
        return call

    monkeypatch.setattr(torch, "compile", lazy_broken)
    lines: list[str] = []
    policy = TeacherPolicy("fp32", False, compile="auto", record=tmp_path / "p.json", log=lines.append)
    teacher = FrozenTeacher(create_model("mlp", num_classes=10, in_channels=1, image_size=28), policy=policy)
    x = torch.randn(4, 1, 28, 28)
    out = teacher(x)
    assert teacher._compiled is None and torch.equal(out.logits, teacher.run(x, FP32).logits)
    saved = json.loads((tmp_path / "p.json").read_text())["teachers"][0]
    assert "no C compiler" in saved["compile_error"] and "compile" not in saved
    assert sum("running it eagerly" in s for s in lines) == 1


def test_each_teacher_of_several_is_measured_and_recorded(tmp_path):
    torch.manual_seed(0)
    models = [create_model(n, num_classes=10, in_channels=1, image_size=28) for n in ("cnn_teacher", "mlp")]
    policy = TeacherPolicy("auto", "auto", record=tmp_path / "p.json", repeats=1)
    teachers = FrozenTeachers(models, policy=policy)
    x = torch.randn(8, 1, 28, 28)
    signal = teachers.outputs({"input": x})
    saved = json.loads((tmp_path / "p.json").read_text())["teachers"]
    assert [d["teacher"] for d in saved] == [0, 1] and all(len(d["measurements"]) == 4 for d in saved)
    # the combined signal is the mean of what each teacher gave in its own mode
    assert torch.allclose(signal.combined.logits, (signal.each[0].logits + signal.each[1].logits) / 2)


@pytest.mark.slow
def test_a_really_compiled_frozen_bf16_teacher_gives_the_eager_outputs(tmp_path):
    """Inductor with freezing on a real teacher in bf16 + channels-last, with a tapped feature (tens of seconds of
    compilation on the shared CPU, hence slow). Compiled and eager run the same bf16 ops, but Inductor fuses and
    reorders them, so they agree within bf16 rounding (2^-8 relative per op, a few ops deep), not bit for bit."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    counters.clear()
    model = create_model("cnn_teacher", num_classes=10, in_channels=1, image_size=28)
    policy = TeacherPolicy("bf16", True, compile=True, record=tmp_path / "p.json", repeats=1)
    teacher = FrozenTeacher(model, taps=["stage2"], policy=policy)
    x = torch.randn(16, 1, 28, 28)
    out = teacher(x)
    assert teacher._compiled is not None and counters["stats"]["unique_graphs"] >= 1
    ref = teacher.run(x, Mode("bf16", True))  # the eager forward in the same mode
    assert out.features["stage2"].shape == ref.features["stage2"].shape
    kl, agree, rel = agreement(ref, out)
    assert kl < 1e-3 and agree >= 0.99 and rel < 0.05  # the policy's own tolerance for a bf16 teacher
    rec = json.loads((tmp_path / "p.json").read_text())["teachers"][0]
    assert rec["compile"]["kept"] and "compile_error" not in rec
