"""Distillation across tokenizers with the ULD loss: two byte-level BPE tokenizers of different sizes trained offline on
the lee corpus (`kdkit lm-tokenizer`), a teacher over the larger one; the teacher reads the same text in its own tokens
(kdkit.lm.crosstok), `lm_uld` compares the sorted distributions position by position, and a student learns from it.
Without `lm_uld` the different tokenizer stays refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from kdkit.builder import build_scheme
from kdkit.data.run import build_data
from kdkit.errors import ConfigError
from kdkit.lm.crosstok import RetokenizedLM
from kdkit.lm.models import build_gpt2, save_hf
from kdkit.losses import tokens as tl
from kdkit.recipe import recipe_from_dict
from kdkit.runs import run
from kdkit.text.tokenizers import load_tokenizer
from kdkit.types import TrainState


def _kdkit(*args: str) -> str:
    from typer.testing import CliRunner

    from kdkit.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uld")
    for v in (320, 480):
        _kdkit("lm-tokenizer", "lee_background", "--out", str(tmp / f"tok{v}"), "--vocab", str(v), "--max-docs", "40")
    torch.manual_seed(0)
    teacher = build_gpt2("gpt2", 480, image_size=16, layers=1, width=32, heads=2)
    save_hf(teacher, tmp / "teacher480", str(tmp / "tok480"))
    return tmp


def _recipe(tmp, terms, teacher_params=None, **kw) -> dict:
    r = {"name": "uld", "output_dir": str(tmp / "runs"), "seed": 0, "epochs": 3, "threads": 1,
         "data": {"name": "lee_background", "params": {"tokenizer": str(tmp / "tok320"), "block": 16, "max_docs": 40},
                  "val_fraction": 0.1, "batch_size": 4, "eval_batch_size": 8, "train_limit": 12},
         "student": {"name": "lm:gpt2", "params": {"layers": 1, "width": 16, "heads": 2}},
         "teachers": [{"name": f"hf:{tmp / 'teacher480'}", "params": teacher_params or {}}],
         "terms": terms, "optim": {"name": "adamw", "lr": 1e-2}, "schedule": {"name": "constant"}}
    r.update(kw)
    return r


def test_other_tokenizer_without_uld_is_refused_in_one_line(setup):
    with pytest.raises(ConfigError, match=r"uses another tokenizer.*480 vs 320 tokens.*lm_uld") as err:
        build_data(recipe_from_dict(_recipe(setup, [{"name": "lm_forward_kl"}])))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="only by the lm_uld term"):
        build_data(recipe_from_dict(_recipe(setup, [{"name": "lm_forward_kl"}],
                                            {"input_tokenizer": str(setup / "tok320")})))


def test_cross_tokenizer_teacher_is_not_cached(setup):
    from kdkit.lm.cache import cache_lm_recipe

    r = _recipe(setup, [{"name": "ce"}, {"name": "lm_uld"}], {"input_tokenizer": str(setup / "tok320")})
    with pytest.raises(ConfigError, match="run that teacher online"):
        cache_lm_recipe(r, k=4, out=setup / "no_store")
    assert not (setup / "no_store").exists()


def test_teacher_reads_the_same_text_in_its_own_tokens(setup):
    tok320, tok480 = load_tokenizer(str(setup / "tok320")), load_tokenizer(str(setup / "tok480"))
    torch.manual_seed(0)
    lm = build_gpt2("gpt2", 480, image_size=16, layers=1, width=32, heads=2)
    wrapped = RetokenizedLM(lm, str(setup / "tok320"), f"hf:{setup / 'teacher480'}")
    data = build_data(recipe_from_dict(_recipe(setup, [{"name": "ce"}, {"name": "lm_uld"}],
                                               {"input_tokenizer": str(setup / "tok320")})))
    x = next(iter(data.train_loader))["input"]
    ids, valid = wrapped.retokenize(x)
    for row, trow, vrow in zip(x.tolist(), ids.tolist(), valid.tolist(), strict=True):
        text = tok320.decode(row, clean_up_tokenization_spaces=False)
        own = tok480.decode([i for i, v in zip(trow, vrow, strict=True) if v], clean_up_tokenization_spaces=False)
        assert text.startswith(own) and len(own) > 0  # the teacher's tokens spell the row's text (cut at T tokens)
    assert bool((~valid).any())  # the larger vocabulary needs fewer tokens: some positions have no teacher token
    logits = wrapped(x)
    assert logits.shape == (x.numel(), 480) and bool(torch.isnan(logits[~valid.reshape(-1)]).all())


def test_uld_first_step_and_training(setup):
    r = _recipe(setup, [{"name": "ce"}, {"name": "lm_uld", "weight": 1.0}],
                {"input_tokenizer": str(setup / "tok320")})
    recipe = recipe_from_dict(r)
    data = build_data(recipe)
    scheme = build_scheme(recipe, data)
    batch = next(iter(data.train_loader))
    out = scheme.step(scheme.trainable().train(), batch, TrainState())
    # independent: the teacher on its own tokens, the student's logits of this step, float64
    teacher = RetokenizedLM(build_gpt2("gpt2", 480, image_size=16, layers=1, width=32, heads=2),
                            str(setup / "tok320"), f"hf:{setup / 'teacher480'}")
    from kdkit.lm.models import build_causal_lm

    teacher.lm = build_causal_lm(str(setup / "teacher480"), 480, image_size=16).eval()
    with torch.no_grad():
        t = teacher(batch["input"]).double()
    keep = ~torch.isnan(t[:, 0])
    want = tl.universal_logit_distance(out.logits.detach().double()[keep], t[keep])
    assert float(out.terms["lm_uld"]) == pytest.approx(float(want), rel=1e-4)  # float32 step vs float64 reference
    res = run(recipe, quiet=True)
    hist = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
