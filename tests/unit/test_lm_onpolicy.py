"""On-policy GKD (kdkit.lm.onpolicy): the student's generated batch is seeded and masks the prompt, λ = 0 is the offline
scheme exactly, an on-policy step's loss is JSD(β) over the generated tokens only (checked against an independent
float64 computation), and bad parameters are refused in one line. Real text (gensim's lee corpus), tiny GPT-2s."""

from __future__ import annotations

import pytest
import torch

from kdkit.errors import ConfigError
from kdkit.lm.corpora import read_corpus
from kdkit.lm.data import LMBatchLoader, load_lm_split, split_documents
from kdkit.lm.models import build_gpt2, save_hf
from kdkit.lm.onpolicy import GKDScheme, on_policy_batch
from kdkit.lm.terms import LMJSD
from kdkit.lm.tokenizer import train_tokenizer
from kdkit.models.factory import create_model
from kdkit.schemes.offline import OfflineScheme
from kdkit.types import TrainState

V, T, P = 400, 16, 5


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    docs = read_corpus("lee_background")
    train, _ = split_documents(len(docs), 0.1, 0)
    return str(train_tokenizer([docs[i] for i in train], tmp_path_factory.mktemp("tok"), V))


@pytest.fixture(scope="module")
def teacher_dir(tok, tmp_path_factory):
    torch.manual_seed(0)
    model = build_gpt2("gpt2", V, image_size=T, layers=2, width=32, heads=2)
    return save_hf(model, tmp_path_factory.mktemp("teacher"), tok)


@pytest.fixture(scope="module")
def batch(tok):
    train, _, _ = load_lm_split("lee_background", tok, block=T)
    return next(iter(LMBatchLoader(train, batch_size=4, shuffle=False, seed=0)))


def _scheme(teacher_dir, batch, lmbda: float, beta: float = 0.5, **kw):
    torch.manual_seed(1)
    # a random smaller student: far from the teacher, so the divergence is not a float32 cancellation
    student = create_model(f"hf:{teacher_dir}", num_classes=V, in_channels=1, image_size=T,
                           config={"n_layer": 1, "n_embd": 16, "n_head": 2})
    teacher = create_model(f"hf:{teacher_dir}", num_classes=V, in_channels=1, image_size=T)
    off = OfflineScheme.from_models(student, [teacher], [LMJSD(beta=beta)], batch["input"][:2], V)
    return off, GKDScheme(off.module, off.teachers, lmbda=lmbda, prompt_tokens=P, **kw)


def test_generated_batch_is_seeded_keeps_the_prompt_and_masks_it(teacher_dir, batch):
    student = create_model(f"hf:{teacher_dir}", num_classes=V, in_channels=1, image_size=T, layers=1).train()
    a = on_policy_batch(student, batch, P, T + 1 - P, 1.0, 0.9, seed=3)
    assert student.training  # train mode restored after sampling in eval mode
    assert torch.equal(a["input"], on_policy_batch(student, batch, P, T + 1 - P, 1.0, 0.9, seed=3)["input"])
    assert not torch.equal(a["input"], on_policy_batch(student, batch, P, T + 1 - P, 1.0, 0.9, seed=4)["input"])
    x, y = a["input"], a["target"].view(4, -1)
    assert x.shape == batch["input"].shape and y.shape == x.shape  # P + N - 1 = T: the corpus batch's shape
    assert torch.equal(x[:, :P], batch["input"][:, :P])  # the prompt is the block's own beginning
    assert (y[:, : P - 1] == -1).all()  # targets that are prompt tokens do not count
    assert torch.equal(y[:, P - 1 : -1], x[:, P:])  # the rest: the next generated token
    assert not torch.equal(x[:, P:], batch["input"][:, P:])  # the continuation is the student's, not the corpus's
    assert torch.equal(a["index"], batch["index"])


def test_lambda_zero_is_the_offline_scheme_exactly(teacher_dir, batch):
    off, gkd = _scheme(teacher_dir, batch, lmbda=0.0)
    off.module.eval()  # no dropout: the two steps see the same network
    for step in range(3):
        state = TrainState(step=step)
        a, b = off.step(off.module, batch, state), gkd.step(gkd.module, batch, state)
        assert torch.equal(a.loss, b.loss) and b.target is None and float(b.terms["on_policy"]) == 0.0


def test_on_policy_step_is_jsd_over_the_generated_tokens_only(teacher_dir, batch):
    beta = 0.3
    _, gkd = _scheme(teacher_dir, batch, lmbda=1.0, beta=beta, temperature=0.8)
    gkd.module.eval()
    state = TrainState(step=7)
    out = gkd.step(gkd.module, batch, state)
    assert float(out.terms["on_policy"]) == 1.0
    # the same draw again: (seed, step, micro 0) from a fresh scheme gives the same generated tokens
    _, again = _scheme(teacher_dir, batch, lmbda=1.0, beta=beta, temperature=0.8)
    on, seed = again.draw(state)
    gen = on_policy_batch(again.module.student, batch, P, T + 1 - P, 0.8, 1.0, seed)
    assert on and torch.equal(gen["target"], out.target)
    # independent float64 JSD(beta) with m = beta*p + (1-beta)*q, over tokens whose target is not -1
    with torch.no_grad():
        s = gkd.module.student(gen["input"]).double().log_softmax(-1)
        t = gkd.teachers.teachers[0].model(gen["input"]).double().log_softmax(-1)
    m = torch.log(beta * t.exp() + (1 - beta) * s.exp())
    per = beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
    keep = gen["target"] >= 0
    assert int(keep.sum()) == 4 * (T + 1 - P)  # N generated tokens per row count, P - 1 prompt targets do not
    # float32 logits and log-softmax in the term vs float64 here: ~1e-6 relative
    assert float(out.loss.detach()) == pytest.approx(float(per[keep].mean()), rel=1e-4)
    assert float(out.loss.detach()) != pytest.approx(float(per.mean()), rel=1e-4)  # counting the prompt would differ


def test_micro_batches_of_one_step_draw_afresh_and_a_restart_repeats(teacher_dir, batch):
    _, gkd = _scheme(teacher_dir, batch, lmbda=0.5)
    draws = [gkd.draw(TrainState(step=s)) for s in (0, 0, 1, 2, 3, 4, 5, 6, 7)]
    assert draws[0][1] != draws[1][1]  # two micro-batches of one optimiser step
    assert {on for on, _ in draws} == {True, False}
    _, fresh = _scheme(teacher_dir, batch, lmbda=0.5)
    assert [fresh.draw(TrainState(step=s)) for s in (0, 0, 1, 2, 3, 4, 5, 6, 7)] == draws  # a resumed run: same


def test_bad_parameters_are_refused_in_one_line(teacher_dir, batch):
    with pytest.raises(ConfigError, match="lmbda must lie in"):
        _scheme(teacher_dir, batch, lmbda=1.5)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        _scheme(teacher_dir, batch, lmbda=0.5, temperature=0.0)
    _, gkd = _scheme(teacher_dir, batch, lmbda=1.0)
    gkd.prompt_tokens = T + 1
    with pytest.raises(ConfigError, match="prompt_tokens=17 exceeds the data's block of 16"):
        gkd.step(gkd.module, batch, TrainState())
