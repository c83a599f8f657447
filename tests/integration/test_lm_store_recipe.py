"""A language-model recipe reads a token logit store (`soft_labels: PATH`): `kdkit lm-cache` (and `kdkit cache`) write
it from the recipe's teacher over the recipe's training blocks (real text: the lee corpus; a tiny GPT-2 teacher saved
as an hf: folder); the distillation's first-step loss equals the online run's up to the store's stated
approximation, no teacher forward runs, a store made for other blocks or another teacher is refused in one line, and
a few steps from the store lower the loss."""

from __future__ import annotations

import json

import pytest
import torch

from kdkit.builder import build_scheme
from kdkit.data.run import build_data
from kdkit.errors import ConfigError
from kdkit.lm.corpora import read_corpus
from kdkit.lm.models import CausalLM, build_gpt2, save_hf
from kdkit.lm.store import TokenStore
from kdkit.lm.tokenizer import train_tokenizer
from kdkit.recipe import recipe_from_dict
from kdkit.runs import run
from kdkit.types import TrainState

V = 320


def _kdkit(*args: str) -> str:
    from typer.testing import CliRunner

    from kdkit.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmstore")
    tok = str(train_tokenizer(read_corpus("lee_background")[:40], tmp / "tok", V))
    torch.manual_seed(0)
    teacher = build_gpt2("gpt2", V, image_size=16, layers=1, width=32, heads=2)
    save_hf(teacher, tmp / "teacher_hf", tok)
    return tmp, tok


def _recipe(tmp, tok, name="fkl", store=None, terms=("lm_forward_kl",), **kw) -> dict:
    r = {"name": name, "output_dir": str(tmp / "runs"), "seed": 0, "epochs": 1, "threads": 1,
         "data": {"name": "lee_background", "params": {"tokenizer": tok, "block": 16, "max_docs": 40},
                  "val_fraction": 0.1, "batch_size": 4, "eval_batch_size": 8, "train_limit": 12},
         "student": {"name": "lm:gpt2", "params": {"layers": 1, "width": 16, "heads": 2}},
         "teachers": [{"name": f"hf:{tmp / 'teacher_hf'}"}],
         "terms": [{"name": t} for t in terms], "optim": {"name": "adamw", "lr": 1e-2},
         "schedule": {"name": "constant"}}
    if store is not None:
        r["soft_labels"] = str(store)
    r.update(kw)
    return r


def _write(tmp, path, r) -> None:
    path.write_text(json.dumps(r))  # JSON is YAML


def _first_step(r: dict):
    """The first training batch's loss terms, the student's logits and the number of CausalLM forwards it ran."""
    recipe = recipe_from_dict(r)
    data = build_data(recipe)
    torch.manual_seed(0)
    scheme = build_scheme(recipe, data)
    model = scheme.trainable().train()
    batch = next(iter(data.train_loader))
    calls = []
    orig = CausalLM.forward

    def counting(self, ids):
        calls.append(self)
        return orig(self, ids)

    CausalLM.forward = counting
    try:
        out = scheme.step(model, batch, TrainState())
    finally:
        CausalLM.forward = orig
    return out, len(calls)


def test_full_store_equals_online_first_step_and_runs_no_teacher(setup):
    tmp, tok = setup
    store = tmp / "tokens_full"
    _write(tmp, tmp / "full.yaml", _recipe(tmp, tok, store=store))
    assert "bytes/token" in _kdkit("lm-cache", str(tmp / "full.yaml"), "--topk", str(V))
    assert TokenStore.open(store).k == V
    online, n_online = _first_step(_recipe(tmp, tok))
    stored, n_stored = _first_step(_recipe(tmp, tok, store=store))
    assert n_online == 2 and n_stored == 1  # student + teacher online; the student alone from the store
    torch.testing.assert_close(stored.logits, online.logits)  # the same student, the same batch
    # k = V keeps every log-probability: only the fp16 rounding of log p (~5e-4 relative) separates the two
    a, b = float(online.terms["lm_forward_kl"]), float(stored.terms["lm_forward_kl"])
    assert b == pytest.approx(a, rel=5e-3)


def test_topk_store_first_step_is_the_rebuilt_teachers_kl(setup):
    tmp, tok = setup
    store = tmp / "tokens_k8"
    _kdkit("cache", _cache_yaml(tmp, tok, store), "--topk", "8")  # `kdkit cache` on an LM recipe: the token store
    got, _ = _first_step(_recipe(tmp, tok, store=store))
    online, _ = _first_step(_recipe(tmp, tok))
    # Independent float64 reference: the teacher's top-8 probabilities exact, the rest of its mass spread evenly.
    recipe = recipe_from_dict(_recipe(tmp, tok))
    data = build_data(recipe)
    batch = next(iter(data.train_loader))
    from kdkit.builder import frozen_teacher_models

    teacher = frozen_teacher_models(recipe, data)[0]
    with torch.no_grad():
        logp = torch.log_softmax(teacher(batch["input"]).double(), -1).reshape(-1, V)
    top = logp.topk(8, -1)
    p = torch.full_like(logp, 0.0)
    tail = 1 - top.values.exp().sum(-1, keepdim=True)
    p += tail / (V - 8)
    p.scatter_(-1, top.indices, top.values.exp())
    log_q = torch.log_softmax(online.logits.double(), -1)
    want = float((p * (p.log() - log_q)).sum(-1).mean().detach())
    assert float(got.terms["lm_forward_kl"]) == pytest.approx(want, rel=5e-3)  # fp16 storage of log p and the tail
    assert abs(want - float(online.terms["lm_forward_kl"])) > 1e-4  # the top-k store is an approximation


def _cache_yaml(tmp, tok, store) -> str:
    path = tmp / f"{store.name}.yaml"
    _write(tmp, path, _recipe(tmp, tok, store=store))
    return str(path)


def test_mismatched_store_is_one_line(setup):
    tmp, tok = setup
    store = tmp / "tokens_other"
    _kdkit("lm-cache", _cache_yaml(tmp, tok, store), "--topk", "4")
    with pytest.raises(ConfigError, match=r"does not match the recipe: 12 training blocks vs the recipe's 10.*"
                                          r"kdkit lm-cache RECIPE --overwrite") as err:
        _first_step(_recipe(tmp, tok, store=store, data={**_recipe(tmp, tok)["data"], "train_limit": 10}))
    assert "\n" not in str(err.value)
    torch.manual_seed(5)
    other = build_gpt2("gpt2", V, image_size=16, layers=1, width=32, heads=2)
    save_hf(other, tmp / "other_hf", tok)
    with pytest.raises(ConfigError, match="teacher's weights differ"):
        _first_step(_recipe(tmp, tok, store=store, teachers=[{"name": f"hf:{tmp / 'other_hf'}"}]))


def test_distil_from_store_end_to_end(setup):
    tmp, tok = setup
    store = tmp / "tokens_e2e"
    _kdkit("lm-cache", _cache_yaml(tmp, tok, store), "--topk", "32", "--sample")
    sampled = TokenStore.open(store)
    assert sampled.kind == "sampled" and sampled.bytes_per_token == 32 * 2 + 32 * 2 + 2  # ids, fp16 ratios, entropy
    res = run(recipe_from_dict(_recipe(tmp, tok, name="from_store", store=store, terms=("lm_sampled_kl",),
                                       epochs=3)), quiet=True)
    hist = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert (res.run_dir / "metrics.jsonl").is_file() and any(res.run_dir.glob("*.safetensors"))
