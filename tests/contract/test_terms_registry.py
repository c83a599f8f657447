"""Contract tests over every registered loss term, on real MNIST digits and real (small) zoo CNNs.

Each term: builds from its name with default params, sets up against a student/teacher pair (connectors sized by
probing), returns a finite scalar, sends gradient into the student and never into the frozen teacher, is logged under
its own name, and a few optimiser steps on a real batch lower the total loss.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdkit.data import Augment, load_source
from kdkit.models import create_model
from kdkit.recipe import TermSpec, recipe_from_dict
from kdkit.registry import LOSSES
from kdkit.schemes.base import BuildContext, DistillModule
from kdkit.schemes.offline import OfflineScheme
from kdkit.teachers.frozen import FrozenTeachers
from kdkit.terms.base import build_term
from kdkit.types import TrainState

# Terms on image models; the TinyBERT/DistilBERT terms need text models and have their own contract
# (tests/unit/test_text_terms.py).
# The decoder hidden-state terms read text layouts too: tests/integration/test_lm_hidden.py is their contract.
LM_LAYOUT_TERMS = {"lm_hidden_mse", "lm_hidden_cosine"}
IMAGE_TERMS = [n for n in LOSSES.names() if not getattr(LOSSES.get(n), "__module__", "").startswith("kdkit.text")
               and n not in LM_LAYOUT_TERMS]
MULTILABEL = {"bce", "multilabel_kd"}
PARAMS = {"crd": {"n_neg": 63}, "tf_kd": {"temperature": 4.0},
          "fsp": {"connector": "conv1x1"}}  # FSP compares equal widths; these two CNNs differ


@pytest.fixture(scope="module")
def batch():
    data = load_source("mnist_5k")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.targets), generator=g)[:64]
    x = Augment(mean=[0.13], std=[0.31])(data.images[idx], torch.arange(64), 0)
    return {"input": x, "target": data.targets[idx], "index": torch.arange(64), "view": torch.zeros(64).long()}


def _models():
    torch.manual_seed(0)
    student = create_model("cnn", num_classes=10, in_channels=1, image_size=28, width=8)
    teacher = create_model("cnn_student", num_classes=10, in_channels=1, image_size=28)
    return student, teacher


@pytest.mark.parametrize("name", IMAGE_TERMS)
def test_term_contract(name, batch):
    student, teacher = _models()
    b = dict(batch)
    if name in MULTILABEL:
        b["target"] = F.one_hot(b["target"], 10).float()
    spec = TermSpec(name=name, params=PARAMS.get(name, {}))
    term = build_term(spec)
    assert term.name == name
    recipe = recipe_from_dict({"student": {"name": "cnn"}, "teachers": [{"name": "cnn_student"}]})
    ctx = BuildContext(recipe=recipe, num_classes=10, in_channels=1, image_size=28, example=b["input"][:4],
                       num_train=64, make_model=None, make_terms=None)
    module = DistillModule(student, [term], ctx.setup_context(student, [teacher]))
    scheme = OfflineScheme(module, FrozenTeachers([teacher], module.teacher_taps))
    model = scheme.trainable().train()
    state = TrainState(steps_per_epoch=10, epochs=1)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = scheme.step(model, b, state)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.terms) == {name}
    out.loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads), "no gradient reached the student"
    assert all(p.grad is None for p in teacher.parameters()), "gradient leaked into the frozen teacher"

    # A few steps on the same real batch lower the loss (connectors and heads train too).
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = scheme.step(model, b, state)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    if name != "crd":  # CRD's memory bank moves each step; its loss is compared over a longer run in the e2e tests
        assert min(losses[-3:]) < losses[0], f"{name}: loss did not fall {losses}"
    assert all(torch.equal(t_before[k], v) for k, v in teacher.state_dict().items())


def test_every_term_has_description():
    for e in LOSSES.entries():
        assert e.description, e.name


def test_feature_term_without_teacher_features_is_refused(batch):
    student, teacher = _models()
    from kdkit.errors import ConfigError
    from kdkit.terms.base import SetupContext

    ctx = SetupContext(student=student, teachers=[], example=batch["input"][:2], num_classes=10, num_train=64,
                       has_teacher_features=False)
    for name in ("fitnet", "at", "sp", "rkd", "crd", "ie", "pkt", "cc", "nst", "vid", "fsp", "ab", "reviewkd"):
        with pytest.raises(ConfigError, match="online teacher"):
            build_term(TermSpec(name=name)).setup(ctx)


def test_auto_pairs_and_unpairable_shapes(batch):
    from kdkit.errors import ShapeError
    from kdkit.terms.base import SetupContext

    student, teacher = _models()
    ctx = SetupContext(student=student, teachers=[teacher], example=batch["input"][:2], num_classes=10, num_train=64)
    at = build_term(TermSpec(name="at"))
    at.setup(ctx)
    assert at.pairs == [("stage1", "stage1"), ("stage2", "stage2"), ("stage3", "stage3")]
    fit = build_term(TermSpec(name="fitnet"))
    fit.setup(ctx)
    assert fit.pairs == [("stage2", "stage2")]
    sp = build_term(TermSpec(name="sp"))
    sp.setup(ctx)
    assert sp.pairs == [("stage3", "stage3")]
    auto = build_term(TermSpec(name="at", params={"pairs": "auto"}))
    auto.setup(ctx)
    assert auto.pairs == at.pairs
    explicit = build_term(TermSpec(name="fitnet", params={"pairs": ["stage1:stage2"]}))
    explicit.setup(ctx)
    assert explicit.pairs == [("stage1", "stage2")]
    from kdkit.errors import ConfigError

    with pytest.raises(ConfigError, match="stage index below 3"):
        build_term(TermSpec(name="fitnet", params={"pairs": "stage:7"})).setup(ctx)
    mlp = create_model("mlp", num_classes=10, in_channels=1, image_size=28)
    ctx2 = SetupContext(student=mlp, teachers=[teacher], example=batch["input"][:2], num_classes=10, num_train=64)
    with pytest.raises(ShapeError, match="student layer"):
        build_term(TermSpec(name="at", params={"pairs": "auto"})).setup(ctx2)


def test_active_window_and_warmup():
    t = build_term(TermSpec(name="kd", weight=2.0, warmup_epochs=2, start_epoch=1, stop_epoch=5))
    st = TrainState(steps_per_epoch=10, epochs=6)
    weights = []
    for step in (0, 9, 10, 20, 30, 49, 50):
        st.step = step
        weights.append(t.weight_at(st))
    assert weights == [0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 0.0]


def test_fsp_refuses_unequal_widths_in_one_line(batch):
    from kdkit.errors import ConfigError
    from kdkit.terms.base import SetupContext

    student, teacher = _models()
    ctx = SetupContext(student=student, teachers=[teacher], example=batch["input"][:2], num_classes=10, num_train=64)
    with pytest.raises(ConfigError, match=r"fsp.*stage1.*channels.*connector: conv1x1"):
        build_term(TermSpec(name="fsp")).setup(ctx)
    with pytest.raises(ConfigError, match="connector must be one of"):
        build_term(TermSpec(name="fsp", params={"connector": "magic"}))
