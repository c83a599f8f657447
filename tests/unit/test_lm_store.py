"""The token logit store (kdkit.lm.store): real text blocks (lee corpus), a tiny GPT-2 teacher; what is stored
reproduces the teacher's distribution (exactly at k = V up to fp16, top-k and tail mass at k < V), its size per token,
and a KD step fed from it through the teacher seam."""

from __future__ import annotations

import math

import pytest
import torch

from kdkit.errors import ConfigError
from kdkit.lm.corpora import read_corpus
from kdkit.lm.data import load_lm_split
from kdkit.lm.models import build_gpt2
from kdkit.lm.store import TokenStore, TokenStoreTeacher, write_token_store
from kdkit.lm.terms import LMForwardKL
from kdkit.lm.tokenizer import train_tokenizer
from kdkit.losses import tokens as tl
from kdkit.schemes.offline import OfflineScheme
from kdkit.types import TrainState


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    tok = str(train_tokenizer(read_corpus("lee_background")[:40], tmp / "tok", 320))
    train, _, _ = load_lm_split("lee_background", tok, block=16, max_docs=40)
    torch.manual_seed(0)
    teacher = build_gpt2("gpt2", 320, image_size=16, layers=1, width=16, heads=2).eval()
    return tmp, train.subset(torch.arange(12)), teacher


def _log_probs(teacher, data, idx):
    with torch.no_grad():
        return torch.log_softmax(teacher(data.blocks[idx, :-1]).float(), -1)


def test_full_k_store_rebuilds_the_teacher(setup):
    tmp, data, teacher = setup
    store = write_token_store(teacher, data, tmp / "full", k=320, batch_size=5)
    idx = torch.tensor([3, 0, 11])
    want = _log_probs(teacher, data, idx)
    got = torch.log_softmax(store.teacher_logits(idx), -1)
    torch.testing.assert_close(got, want, rtol=0, atol=0.01)  # fp16 log-probs: ~1e-3 relative rounding


def test_topk_store_keeps_topk_and_tail_mass(setup):
    tmp, data, teacher = setup
    store = write_token_store(teacher, data, tmp / "k8", k=8)
    assert store.bytes_per_token == 8 * 2 + 8 * 2 + 2  # fp16 log-probs, uint16 ids, fp16 tail
    assert TokenStore.open(tmp / "k8").manifest["k"] == 8 and len(store) == 12
    idx = torch.arange(12)
    want = _log_probs(teacher, data, idx).exp()
    lp, ids, tail = store.lookup(idx)
    p = want.reshape(12, 16, 320)
    torch.testing.assert_close(lp.float().exp(), p.gather(-1, ids), rtol=2e-3, atol=1e-6)  # fp16 rounding
    true_tail = 1 - p.gather(-1, ids).sum(-1)
    torch.testing.assert_close(tail.float().exp(), true_tail, rtol=2e-3, atol=1e-6)
    rebuilt = torch.softmax(store.teacher_logits(idx), -1).reshape(12, 16, 320)
    torch.testing.assert_close(rebuilt.gather(-1, ids), p.gather(-1, ids), rtol=3e-3, atol=1e-6)
    # the sparse loss of the teacher against itself is 0; against a student it lower-bounds the full KL
    s = torch.randn(12 * 16, 320, generator=torch.Generator().manual_seed(0))
    sparse = tl.sparse_token_divergence(s, lp, ids, tail.float().exp())
    full = tl.forward_kl(s, torch.log(want))
    assert 0 < float(sparse) <= float(full) + 1e-3


def test_store_feeds_a_kd_step_without_teacher_forward(setup):
    tmp, data, teacher = setup
    store = write_token_store(teacher, data, tmp / "feed", k=16)
    torch.manual_seed(1)
    student = build_gpt2("gpt2", 320, image_size=16, layers=1, width=16, heads=2)
    scheme = OfflineScheme.from_models(student, [], [LMForwardKL()], data.blocks[:2, :-1], 320,
                                       store=TokenStoreTeacher(store))
    model = scheme.trainable().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = {"input": data.blocks[:4, :-1], "target": data.blocks[:4, 1:].reshape(-1), "index": torch.arange(4),
             "view": torch.zeros(4, dtype=torch.long)}
    losses = []
    for _ in range(6):
        out = scheme.step(model, batch, TrainState())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert math.isfinite(losses[0]) and losses[-1] < losses[0]


def test_bad_store_and_k_are_one_line(setup, tmp_path):
    _, data, teacher = setup
    with pytest.raises(ConfigError, match="k must lie"):
        write_token_store(teacher, data, tmp_path / "x", k=0)
    with pytest.raises(ConfigError, match="no readable manifest.json"):
        TokenStore.open(tmp_path / "nothing")


def test_compressed_store_is_lossless_and_smaller(setup):
    tmp, data, teacher = setup
    plain = write_token_store(teacher, data, tmp / "plain32", k=32)
    packed = write_token_store(teacher, data, tmp / "zip32", k=32, compress=True)
    assert packed.compressed and packed.bytes_per_token < plain.bytes_per_token
    idx = torch.tensor([7, 2, 2, 11])
    for a, b in zip(plain.lookup(idx), packed.lookup(idx), strict=True):
        assert torch.equal(a, b)  # zlib is lossless: the same fp16 bits and ids
