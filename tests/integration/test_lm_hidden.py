"""Decoder hidden-state terms through a layer map (TinyBERT's hidden-state MSE and DistilBERT's cosine for causal LMs):
real text (lee corpus), a 3-layer GPT-2 teacher saved as an hf: folder, a layer-cut student (teacher layers 0 and 2)
and a narrower student. Checked: a pair of identical layers costs exactly 0, values equal an independent float64
computation from forward hooks with padding left out, a learnt linear map appears when widths differ and training
lowers the term."""

from __future__ import annotations

import pytest
import torch

from kdkit.builder import build_scheme
from kdkit.data.run import build_data
from kdkit.errors import ConfigError
from kdkit.lm.corpora import read_corpus
from kdkit.lm.models import build_causal_lm, build_gpt2, save_hf
from kdkit.lm.tokenizer import train_tokenizer
from kdkit.recipe import recipe_from_dict
from kdkit.types import TrainState

V = 320


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmhidden")
    tok = str(train_tokenizer(read_corpus("lee_background")[:40], tmp / "tok", V))
    torch.manual_seed(0)
    save_hf(build_gpt2("gpt2", V, image_size=16, layers=3, width=32, heads=2, dropout=0.0), tmp / "teacher", tok)
    return tmp, tok


def _recipe(tmp, tok, student, terms) -> dict:
    return {"name": "hidden", "output_dir": str(tmp / "runs"), "seed": 0, "epochs": 1, "threads": 1,
            "data": {"name": "lee_background", "params": {"tokenizer": tok, "block": 16, "max_docs": 40},
                     "val_fraction": 0.1, "batch_size": 4, "eval_batch_size": 8, "train_limit": 12},
            "student": student, "teachers": [{"name": f"hf:{tmp / 'teacher'}"}], "terms": terms,
            "optim": {"name": "adamw", "lr": 1e-2}, "schedule": {"name": "constant"}}


def _block_outputs(model, ids):
    """Every decoder block's output (B, T, D) in float64, read by forward hooks (an independent path: no kdkit taps)."""
    outs = []
    hooks = [blk.register_forward_hook(lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o).double()))
             for blk in model.hf.transformer.h]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return outs


def test_layer_cut_student_pairs_by_layer_map(setup):
    tmp, tok = setup
    student = {"name": f"hf:{tmp / 'teacher'}", "params": {"layers": [0, 2]}}
    terms = [{"name": "lm_hidden_mse", "params": {"layer_map": {0: 0}}},
             {"name": "lm_hidden_cosine", "params": {"layer_map": {0: 0, 1: 2}}}]
    recipe = recipe_from_dict(_recipe(tmp, tok, student, terms))
    data = build_data(recipe)
    scheme = build_scheme(recipe, data)
    model = scheme.trainable().eval()
    batch = next(iter(data.train_loader))
    pad = 0  # the tokenizer's <pad>
    batch["input"][0, -4:] = pad  # padding in a row: left out of both terms
    out = scheme.step(model, batch, TrainState())
    # student layer 0 is the teacher's layer 0 (same weights, same input): 0, up to float32 rounding of one path
    assert float(out.terms["lm_hidden_mse"]) < 1e-10
    teacher = build_causal_lm(str(tmp / "teacher"), V, image_size=16).eval()
    cut = build_causal_lm(str(tmp / "teacher"), V, image_size=16, layers=[0, 2]).eval()
    t_h, s_h = _block_outputs(teacher, batch["input"]), _block_outputs(cut, batch["input"])
    mask = (batch["input"] != pad).double()
    want = 0.0
    for a, b in ((0, 0), (1, 2)):
        cos = torch.nn.functional.cosine_similarity(s_h[a], t_h[b], dim=-1)
        want += float(((1 - cos) * mask).sum() / mask.sum())
    assert float(out.terms["lm_hidden_cosine"]) == pytest.approx(want, rel=1e-4, abs=1e-6)  # float32 vs float64
    assert want > 1e-3  # layer 1 of the cut student (teacher weights of layer 2, another input) differs


def test_narrower_student_gets_a_learnt_map_and_learns(setup):
    tmp, tok = setup
    student = {"name": "lm:gpt2", "params": {"layers": 2, "width": 16, "heads": 2, "dropout": 0.0}}
    terms = [{"name": "lm_hidden_mse", "params": {"layer_map": {0: 1, 1: 2}, "shared_map": False}}]
    recipe = recipe_from_dict(_recipe(tmp, tok, student, terms))
    data = build_data(recipe)
    scheme = build_scheme(recipe, data)
    model = scheme.trainable().train()
    term = next(m for m in model.modules() if type(m).__name__ == "LMHiddenMSE")
    assert [tuple(p.weight.shape) for p in term.proj] == [(32, 16), (32, 16)]  # W: 16 -> 32, one per pair
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(iter(data.train_loader))
    losses = []
    for _ in range(8):
        out = scheme.step(model, batch, TrainState())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.terms["lm_hidden_mse"]))
    assert losses[-1] < 0.5 * losses[0]


def test_bad_layer_map_is_one_line(setup):
    tmp, tok = setup
    student = {"name": "lm:gpt2", "params": {"layers": 2, "width": 16, "heads": 2}}
    recipe = recipe_from_dict(_recipe(tmp, tok, student, [{"name": "lm_hidden_mse",
                                                           "params": {"layer_map": {0: 0, 2: 5}}}]))
    with pytest.raises(ConfigError, match=r"layers are 0-based, student 0..1, teacher 0..2"):
        build_scheme(recipe, build_data(recipe))
