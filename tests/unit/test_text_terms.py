"""TinyBERT / DistilBERT terms: the pure math against independent references, layer maps, and the terms wired to the
real MiniLM-L6 teacher and real students (connectors sized by probing, gradients reaching the student only)."""

from __future__ import annotations

import math

import pytest
import torch

from kdkit.errors import ConfigError
from kdkit.losses.logits import kd_kl
from kdkit.models import create_model
from kdkit.recipe import TermSpec
from kdkit.schemes.base import DistillModule
from kdkit.teachers.frozen import FrozenTeacher
from kdkit.terms.base import SetupContext, TermInputs, build_term
from kdkit.text.terms import layer_pairs, map_heads, sigmoid_kd
from kdkit.types import ModelOutput, TeacherSignal, TrainState

# ---------------------------------------------------------------------------------------------------- helpers


def test_sigmoid_kd_has_zero_gradient_at_the_teacher():
    t = torch.randn(5, 3)
    s = t.clone().requires_grad_(True)
    sigmoid_kd(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().max() < 1e-6


def test_map_heads_group_means():
    t = torch.arange(2 * 4 * 2 * 2, dtype=torch.float).reshape(2, 4, 2, 2)
    s = torch.zeros(2, 2, 2, 2)
    s2, t2 = map_heads(s, t)
    assert s2 is s and torch.allclose(t2[:, 0], t[:, :2].mean(1)) and torch.allclose(t2[:, 1], t[:, 2:].mean(1))
    t3, s3 = map_heads(t, s)[1], map_heads(t, s)[0]
    assert t3 is s and torch.allclose(s3, t2)
    a, b = map_heads(torch.ones(1, 3, 2, 2), t[:1])  # 3 vs 4 heads: both averaged
    assert a.shape == b.shape == (1, 1, 2, 2)


def test_layer_pairs():
    assert layer_pairs(2, 6) == [(0, 2), (1, 5)]  # TinyBERT g(m) = 3m (1-based)
    assert layer_pairs(3, 6) == [(0, 1), (1, 3), (2, 5)]
    assert layer_pairs(4, 12) == [(0, 2), (1, 5), (2, 8), (3, 11)]  # TinyBERT-4 from BERT-base
    assert layer_pairs(2, 6, "last") == [(0, 4), (1, 5)]
    assert layer_pairs(2, 6, "final") == [(1, 5)]
    assert layer_pairs(2, 6, [2, 4]) == [(0, 1), (1, 3)]  # explicit teacher layers are 1-based
    with pytest.raises(ConfigError, match="outside"):
        layer_pairs(2, 6, [1, 7])
    with pytest.raises(ConfigError, match="strategy"):
        layer_pairs(2, 6, "diagonal")
    with pytest.raises(ConfigError, match="teacher layer numbers"):
        layer_pairs(2, 6, [[0, 1]])


# ---------------------------------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def teacher():
    return create_model("hf:minilm", num_classes=2, image_size=16, layers=[0, 1, 2, 3])  # 4 real layers, 12 heads


@pytest.fixture(scope="module")
def small_student():
    torch.manual_seed(0)
    cfg = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    return create_model("hf:minilm", num_classes=2, image_size=16, config=cfg)


@pytest.fixture(scope="module")
def ids():
    gen = torch.Generator().manual_seed(0)  # the same token ids whatever ran before
    x = torch.randint(1000, 5000, (3, 9), generator=gen)
    x[:, 0] = 101
    x[1, 6:] = 0  # padding
    x[2, 4:] = 0
    return x


def _run_terms(student, teacher, specs, ids):
    terms = [build_term(TermSpec(**s)) for s in specs]
    ctx = SetupContext(student=student, teachers=[teacher], example=ids[:2], num_classes=2, num_train=10)
    for term in terms:
        term.setup(ctx)
    taps = {p for term in terms for p in term.teacher_taps().get(0, [])}
    frozen = FrozenTeacher(teacher, sorted(taps))
    module = DistillModule(student, terms)
    t_out = frozen(ids)
    batch = {"input": ids, "target": torch.tensor([0, 1, 0]), "index": torch.arange(3), "view": torch.zeros(3)}
    out = module(batch, TeacherSignal(t_out, [t_out]), TrainState())
    frozen.tap.remove()
    module.tap.remove()
    return terms, out


def test_terms_size_connectors_by_probing_and_train_only_the_student(teacher, small_student, ids):
    specs = [{"name": "tinybert_embedding"}, {"name": "tinybert_hidden"}, {"name": "tinybert_attention"},
             {"name": "tinybert_prediction", "params": {"temperature": 2.0}}, {"name": "distilbert_cosine"}]
    terms, out = _run_terms(small_student, teacher, specs, ids)
    emb, hid, att, _, cos = terms
    assert isinstance(emb.proj, torch.nn.Linear) and emb.proj.in_features == 64 and emb.proj.out_features == 384
    assert len(hid.proj) == 1 and hid.proj[0].in_features == 64  # one W_h shared by the layers (TinyBERT)
    assert hid.pairs == [(0, 1), (1, 3)] and att.pairs == [(0, 1), (1, 3)]
    assert att._t_paths == ["attention_scores.1", "attention_scores.3"]
    assert cos.pairs == [(1, 3)]
    for name, v in out.terms.items():
        assert torch.isfinite(v) and v > 0, name
    teacher.zero_grad(set_to_none=True)
    small_student.zero_grad(set_to_none=True)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert small_student.hf.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert hid.proj[0].weight.grad.abs().sum() > 0


def test_hidden_term_matches_an_independent_computation(teacher, ids):
    # Reference from transformers' own hidden_states output (not from the taps).
    student = create_model("hf:minilm", num_classes=2, image_size=16, layers=[0, 3]).eval()
    terms, out = _run_terms(student, teacher, [{"name": "tinybert_hidden", "params": {"layer_map": [2, 4]}}], ids)
    with torch.no_grad():
        mask = (ids != 0)
        s_h = student.hf.bert(ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        t_h = teacher.hf.bert(ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
    ref = 0.0
    for s_layer, t_layer in ((1, 2), (2, 4)):  # hidden_states[0] is the embedding output
        d = (s_h[s_layer] - t_h[t_layer]).pow(2).sum(-1)[mask].sum() / (mask.sum() * 384)
        ref += float(d)
    assert math.isclose(float(out.terms["tinybert_hidden"]), ref, rel_tol=1e-4)


def test_attention_term_is_zero_for_an_identical_student(teacher, ids):
    student = create_model("hf:minilm", num_classes=2, image_size=16, layers=[0, 1, 2, 3]).eval()
    specs = [{"name": "tinybert_attention", "params": {"layer_map": [1, 2, 3, 4]}},
             {"name": "tinybert_attention", "key": "att_probs", "params": {"attention": "probs"}},
             {"name": "tinybert_embedding"}, {"name": "tinybert_hidden"}, {"name": "distilbert_cosine"}]
    _, out = _run_terms(student, teacher, specs, ids)
    # Zero in exact arithmetic. The MSE terms subtract equal float32 tensors (exactly 0); the cosine term is
    # 1 − cos(h, h), whose float32 rounding is a few ulp of 1 and depends on the CPU's summation order (1.6e-8 measured
    # on AVX-512, 0 on AVX2): bound every term by 8 × float32 epsilon.
    bound = 8 * torch.finfo(torch.float32).eps
    for name, v in out.terms.items():
        assert abs(float(v)) < bound, (name, float(v))


def test_feature_terms_refuse_non_text_models_and_missing_attention(teacher, ids):
    bilstm = create_model("textnn:bilstm", num_classes=2, hidden=32, embed_dim=16)
    terms, out = _run_terms(bilstm, teacher, [{"name": "tinybert_hidden", "params": {"layer_map": "final"}},
                                              {"name": "tinybert_embedding"}], ids)
    assert terms[0].proj[0].in_features == 64 and terms[1].proj.in_features == 16
    assert torch.isfinite(out.loss)
    att = build_term(TermSpec(name="tinybert_attention"))
    ctx = SetupContext(student=bilstm, teachers=[teacher], example=ids[:2], num_classes=2, num_train=10)
    with pytest.raises(ConfigError, match="no attention maps"):
        att.setup(ctx)
    mlp = create_model("mlp", num_classes=2, in_channels=1, image_size=8)
    ctx = SetupContext(student=mlp, teachers=[teacher], example=ids[:2], num_classes=2, num_train=10)
    with pytest.raises(ConfigError, match="not a kdkit text model"):
        build_term(TermSpec(name="tinybert_hidden")).setup(ctx)
    no_feats = SetupContext(student=bilstm, teachers=[teacher], example=ids[:2], num_classes=2, num_train=10,
                            has_teacher_features=False)
    with pytest.raises(ConfigError, match="soft-label store"):
        build_term(TermSpec(name="tinybert_hidden")).setup(no_feats)


def test_prediction_term_switches_to_sigmoid_for_multilabel():
    term = build_term(TermSpec(name="tinybert_prediction", params={"temperature": 2.0}))
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)

    def inp(target):
        return TermInputs(student=ModelOutput(s), teacher=ModelOutput(t), batch={"target": target},
                          state=TrainState())

    # Independent references: soft CE = KL + teacher entropy (× T²); per-class binary cross-entropy of sigmoids.
    p = torch.softmax(t / 2.0, -1)
    ref_soft = kd_kl(s, t, 2.0) + 4.0 * -(p * p.log()).sum(-1).mean()
    assert torch.allclose(term(inp(torch.zeros(4, dtype=torch.long))), ref_soft, atol=1e-5)
    ps, qs = torch.sigmoid(t / 2.0), torch.sigmoid(s / 2.0)
    ref_ml = 4.0 * -(ps * qs.log() + (1 - ps) * (1 - qs).log()).mean()
    assert torch.allclose(term(inp(torch.zeros(4, 3))), ref_ml, atol=1e-5)
    with pytest.raises(ConfigError, match="temperature"):
        build_term(TermSpec(name="tinybert_prediction", params={"temperature": 0}))


@pytest.mark.parametrize("name", ["tinybert_embedding", "tinybert_hidden", "tinybert_attention",
                                  "tinybert_prediction", "distilbert_cosine"])
def test_text_term_contract(name):
    """The registry contract (tests/contract) on text models: real sentences, a 2-layer MiniLM teacher and a small
    random student; finite scalar, gradient into the student only, the loss falls over a few steps."""
    from kdkit.recipe import recipe_from_dict
    from kdkit.schemes.base import BuildContext
    from kdkit.text.data import TextBatchLoader, load_text
    from kdkit.text.terms import TEXT_FEATURE_TERMS

    assert name in TEXT_FEATURE_TERMS or name == "tinybert_prediction"
    data = load_text("rotten_tomatoes", tokenizer="hf:minilm", max_length=16).subset(torch.arange(16))
    b = next(iter(TextBatchLoader(data, None, 16, shuffle=False, seed=0)))
    torch.manual_seed(0)
    teacher = create_model("hf:minilm", num_classes=2, layers=2)
    torch.nn.init.normal_(teacher.hf.classifier.weight, std=1.0)  # confident predictions: soft CE is far from its min
    student = create_model("hf:minilm", num_classes=2, config={"num_hidden_layers": 2, "hidden_size": 32,
                                                                "num_attention_heads": 2, "intermediate_size": 64})
    recipe = recipe_from_dict({"student": {"name": "hf:minilm"}, "teachers": [{"name": "hf:minilm"}]})
    ctx = BuildContext(recipe=recipe, num_classes=2, in_channels=1, image_size=16, example=b["input"][:4],
                       num_train=16, make_model=None, make_terms=None)
    scheme = _offline(student, teacher, build_term(TermSpec(name=name)), ctx)
    model = scheme.trainable().train()
    state = TrainState(steps_per_epoch=10, epochs=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = scheme.step(model, b, state)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and set(out.terms) == {name}
    out.loss.backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in student.parameters() if p.grad is not None)
    assert all(p.grad is None for p in teacher.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        out = scheme.step(model, b, state)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert min(losses[-2:]) < losses[0], f"{name}: loss did not fall {losses}"
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def _offline(student, teacher, term, ctx):
    from kdkit.schemes.offline import OfflineScheme
    from kdkit.teachers.frozen import FrozenTeachers

    module = DistillModule(student, [term], ctx.setup_context(student, [teacher]))
    return OfflineScheme(module, FrozenTeachers([teacher], module.teacher_taps))
