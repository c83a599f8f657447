"""The teacher seam and the one term loop, with tests chosen so that small wrong changes fail them:
``weighted`` ignoring its weights, ``mean_probs`` replaced by a mean of logits, mutual learning using a term's raw
weight instead of its schedule, the online scheme no longer detaching its teacher's features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdkit.models import create_model, default_stages
from kdkit.recipe import TermSpec
from kdkit.schemes.base import DistillModule
from kdkit.schemes.mutual import MutualModule
from kdkit.schemes.online import OnlineModule
from kdkit.teachers.frozen import FrozenTeachers, combine_logits
from kdkit.terms.base import LossTerm, SetupContext, build_term
from kdkit.types import TeacherSource, TrainState

# float32 softmax/log of O(1) logits: a few ulps of 1.2e-7 each; 1e-5 leaves room for the reductions
F32_TOL = 1e-5


def _three_teachers() -> tuple[list[nn.Module], torch.Tensor]:
    torch.manual_seed(0)
    models = [nn.Linear(5, 4) for _ in range(3)]
    with torch.no_grad():
        for i, m in enumerate(models):  # clearly different teachers, so every combine rule gives another answer
            m.weight.mul_(1 + 2 * i)
    return models, torch.randn(6, 5)


def test_weighted_combine_uses_its_weights():
    models, x = _three_teachers()
    z = [m(x).double() for m in models]
    w = [0.7, 0.2, 0.1]
    want = sum(wi * zi for wi, zi in zip(w, z, strict=True)) / sum(w)  # float64 reference
    got = FrozenTeachers(models, combine="weighted", weights=w).outputs({"input": x}).combined.logits
    torch.testing.assert_close(got.double(), want, rtol=F32_TOL, atol=F32_TOL)
    plain_mean = sum(z) / 3
    assert (got.double() - plain_mean).abs().max() > 0.1  # ignoring the weights would give this
    # scale invariance of the weights, and a single heavy weight picks that teacher
    torch.testing.assert_close(combine_logits([m(x) for m in models], "weighted", [7, 2, 1]), got)
    only_last = combine_logits([m(x) for m in models], "weighted", [0, 0, 1])
    torch.testing.assert_close(only_last, models[2](x), rtol=F32_TOL, atol=F32_TOL)


def test_mean_probs_is_the_log_of_the_averaged_probabilities():
    models, x = _three_teachers()
    p = torch.stack([torch.softmax(m(x).double(), -1) for m in models]).mean(0)
    got = FrozenTeachers(models, combine="mean_probs").outputs({"input": x}).combined.logits
    torch.testing.assert_close(torch.softmax(got.double(), -1), p, rtol=F32_TOL, atol=F32_TOL)
    torch.testing.assert_close(got.double().exp().sum(-1), torch.ones(6, dtype=torch.float64), rtol=F32_TOL,
                               atol=F32_TOL)
    mean_logits = torch.stack([m(x).double() for m in models]).mean(0)
    assert (torch.softmax(mean_logits, -1) - p).abs().max() > 1e-2  # the mean of logits is another distribution


def test_frozen_teachers_are_a_teacher_source_and_never_train():
    models, x = _three_teachers()
    source = FrozenTeachers(models, combine="random", seed=3)
    assert isinstance(source, TeacherSource) and source.models == models
    picks: set[int] = set()
    for _ in range(20):  # 'random' hands the logit terms one whole teacher per step
        sig = source.outputs({"input": x})
        match = [i for i, m in enumerate(models) if torch.equal(sig.combined.logits, m(x).detach())]
        assert len(match) == 1 and len(sig.each) == 3
        picks.add(match[0])
    assert picks == {0, 1, 2}
    assert all(not p.requires_grad for m in models for p in m.parameters())
    with pytest.raises(Exception, match="teacher_weights"):
        FrozenTeachers(models, combine="weighted")


def test_mutual_learning_uses_the_scheduled_weight():
    """A KD term warming up over 2 epochs counts 0 at the start and half its weight after one epoch."""
    torch.manual_seed(0)
    peers = [nn.Linear(4, 3), nn.Linear(4, 3)]
    spec_ce, spec_kd = TermSpec(name="ce"), TermSpec(name="kd", weight=3.0, warmup_epochs=2, params={"temperature": 1})
    module = MutualModule(peers, [[build_term(spec_ce), build_term(spec_kd)] for _ in peers])
    batch = {"input": torch.randn(8, 4), "target": torch.randint(0, 3, (8,))}
    z = [p(batch["input"]) for p in peers]
    ce = sum(F.cross_entropy(zk, batch["target"]) for zk in z)

    def kl(t, s):  # KL(softmax(t) || softmax(s)), batch mean
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")

    kd = kl(z[1], z[0]) + kl(z[0], z[1])
    start = module(batch, TrainState(step=0, steps_per_epoch=10, epochs=4))
    # the raw weight 3 would add 3·kd here
    assert float(start.loss.detach()) == pytest.approx(float(ce.detach()), rel=1e-5)
    mid = module(batch, TrainState(step=10, steps_per_epoch=10, epochs=4))
    assert float(mid.loss.detach()) == pytest.approx(float((ce + 1.5 * kd).detach()), rel=1e-5)
    windowed = TermSpec(name="kd", start_epoch=1, params={"temperature": 1})  # outside its window: not even logged
    m2 = MutualModule(peers, [[build_term(spec_ce), build_term(windowed)] for _ in peers])
    assert set(m2(batch, TrainState(step=0, steps_per_epoch=10)).terms) == {"peer0_ce", "peer1_ce"}


def test_online_feature_terms_never_push_the_teacher():
    """Under ``online`` the student's terms see a detached teacher: with the teacher's own KD weight at 0, the teacher's
    gradient is exactly that of its cross-entropy, whatever feature term the student has."""
    torch.manual_seed(0)
    teacher = create_model("cnn", num_classes=10, in_channels=1, image_size=12, width=8)
    student = create_model("cnn", num_classes=10, in_channels=1, image_size=12, width=4)
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 10, (6,))
    terms = [build_term(TermSpec(name="ce")), build_term(TermSpec(name="sp", weight=1000.0)),
             build_term(TermSpec(name="ie")),
             build_term(TermSpec(name="kd", params={"temperature": 2}))]
    setup = SetupContext(student=student, teachers=[teacher], example=x[:2], num_classes=10, num_train=6)
    module = OnlineModule(teacher, DistillModule(student, terms, setup), teacher_kd_weight=0.0, temperature=2.0)
    assert module.teacher_tap is not None  # SP taps the teacher's deepest stage
    out = module({"input": x, "target": y}, TrainState())
    assert {"sp", "ie", "kd", "teacher_ce"} <= set(out.terms)  # IE reconstructs the teacher feature itself
    grads = torch.autograd.grad(out.loss, list(teacher.parameters()), allow_unused=True)
    want = torch.autograd.grad(F.cross_entropy(teacher(x), y), list(teacher.parameters()), allow_unused=True)
    for g, w in zip(grads, want, strict=True):
        if w is None:
            assert g is None or float(g.abs().max()) == 0.0
        else:
            # same tensors, different graphs: float32 sums in another order (1e-5 relative is ~100 ulps of 1.2e-7)
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


class _Spy(LossTerm):
    """Records whether what the terms are handed of the teacher could carry gradient back into it."""

    needs_teacher_features = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def setup(self, ctx: SetupContext) -> None:
        self.path = default_stages(ctx.teachers[0])[-1]

    def teacher_taps(self) -> dict[int, list[str]]:
        return {0: [self.path]}

    def compute(self, inp):
        feats = list(inp.teachers[0].features.values())
        self.seen.append(inp.teacher.logits.requires_grad or any(f.requires_grad for f in feats))
        return inp.student.logits.sum() * 0.0


def test_online_hands_the_student_terms_a_detached_teacher():
    """Every kdkit loss detaches its teacher input, but a user's term need not: the scheme itself must hand over
    detached logits and features."""
    torch.manual_seed(0)
    teacher = create_model("cnn", num_classes=10, in_channels=1, image_size=12, width=8)
    student = create_model("cnn", num_classes=10, in_channels=1, image_size=12, width=4)
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 10, (6,))
    spy = _Spy()
    setup = SetupContext(student=student, teachers=[teacher], example=x[:2], num_classes=10, num_train=6)
    module = OnlineModule(teacher, DistillModule(student, [spy], setup), teacher_kd_weight=0.1, temperature=2.0)
    module({"input": x, "target": y}, TrainState())
    assert spy.seen == [False]


class _CountingSource(TeacherSource):
    """A frozen linear teacher that counts its forward passes."""

    def __init__(self, model: nn.Module) -> None:
        self.inner = FrozenTeachers([model])
        self.calls = 0

    def outputs(self, batch):
        self.calls += 1
        return self.inner.outputs(batch)

    def to(self, device):
        return self


def test_offline_runs_the_teacher_only_while_a_term_that_reads_it_is_active():
    from kdkit.schemes.offline import OfflineScheme

    torch.manual_seed(0)
    student, teacher = nn.Linear(5, 4), nn.Linear(5, 4)
    # AB-style initialisation: a teacher term for epoch 0 only, then CE alone from epoch 1
    terms = [build_term(TermSpec(name="kd", stop_epoch=1.0)), build_term(TermSpec(name="ce", start_epoch=1.0))]
    source = _CountingSource(teacher)
    scheme = OfflineScheme(DistillModule(student, terms), source)
    batch = {"input": torch.randn(6, 5), "target": torch.tensor([0, 1, 2, 3, 0, 1])}
    st = TrainState(steps_per_epoch=3, epochs=2)
    seen = []
    for step in range(6):
        st.step = step
        out = scheme.step(scheme.trainable(), batch, st)
        seen.append((source.calls, sorted(out.terms)))
    # three steps with KD (the teacher runs each time), then three CE-only steps without a teacher forward
    assert seen == [(1, ["kd"]), (2, ["kd"]), (3, ["kd"]), (3, ["ce"]), (3, ["ce"]), (3, ["ce"])]
    # CE-only from the start: a teacher that no term reads never runs
    scheme = OfflineScheme(DistillModule(student, [build_term(TermSpec(name="ce"))]), source)
    scheme.step(scheme.trainable(), batch, st)
    assert source.calls == 3
