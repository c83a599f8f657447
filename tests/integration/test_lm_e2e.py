"""Language-model distillation end to end on real text (gensim's lee news corpus), offline: train a tokenizer with
`kdkit lm-tokenizer`, a tiny GPT-2 teacher a few steps, export it as a transformers folder (`kdkit lm-export`), distil a
layer-cut student and a smaller-config student with token losses, and report held-out perplexity (`kdkit lm-eval`).
Tiny configurations: 32-token blocks, 48 training blocks, widths of 32."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdkit.lm.evaluate import evaluate_lm
from kdkit.recipe import recipe_from_dict
from kdkit.runs import run


def _kdkit(*args: str) -> str:
    """The `kdkit` command line, in this process (a fresh interpreter would spend most of the test importing)."""
    from typer.testing import CliRunner

    from kdkit.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def _recipe(out: Path, name: str, tok: str, **kw) -> dict:
    r = {"name": name, "output_dir": str(out), "seed": 0, "epochs": 3, "threads": 1,
         "data": {"name": "lee_background", "params": {"tokenizer": tok, "block": 32}, "val_fraction": 0.05,
                  "batch_size": 8, "eval_batch_size": 64, "train_limit": 48},
         "optim": {"name": "adamw", "lr": 3e-3}, "schedule": {"name": "constant"}}
    r.update(kw)
    return r


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lm_runs")


@pytest.fixture(scope="module")
def tok(out) -> str:
    _kdkit("lm-tokenizer", "lee_background", "--out", str(out / "tok"), "--vocab", "512", "--val-fraction", "0.05")
    return str(out / "tok")


@pytest.fixture(scope="module")
def teacher(out, tok) -> Path:
    r = recipe_from_dict(_recipe(out, "teacher", tok,
                                 student={"name": "lm:gpt2", "params": {"layers": 3, "width": 32, "heads": 2}},
                                 terms=[{"name": "ce"}]))
    res = run(r, quiet=True)
    _kdkit("lm-export", str(res.run_dir), "--out", str(out / "teacher_hf"))
    return res.run_dir


def test_teacher_trains_and_exports_to_hf(teacher, out):
    hist = _history(teacher)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] - 0.3  # cross-entropy (nats/token) falls
    assert (out / "teacher_hf" / "model.safetensors").is_file() and (out / "teacher_hf" / "tokenizer.json").is_file()
    # the exported folder is the same model: the same held-out perplexity through hf:PATH
    run_ppl = evaluate_lm(teacher)["perplexity"]
    hf_ppl = evaluate_lm(f"hf:{out / 'teacher_hf'}", data="lee_background", block=32, val_fraction=0.05)["perplexity"]
    assert hf_ppl == pytest.approx(run_ppl, rel=1e-6)  # same weights, same tokens, same order of operations
    assert run_ppl == pytest.approx(math.exp(hist[-1]["val_loss"]), rel=1e-6)  # perplexity = exp(mean token CE)


@pytest.mark.parametrize("student,terms", [
    ({"params": {"layers": [0, 2]}}, [{"name": "lm_forward_kl"}]),
    pytest.param({"params": {"config": {"n_layer": 1, "n_embd": 16, "n_head": 2}}},
                 [{"name": "lm_jsd", "params": {"beta": 0.5}}, {"name": "ce", "weight": 0.5}], marks=pytest.mark.slow),
    pytest.param({"params": {"layers": 1}}, [{"name": "lm_skew_kl", "params": {"alpha": 0.1}}],
                 marks=pytest.mark.slow),
    pytest.param({"params": {"config": {"n_layer": 1, "n_embd": 16, "n_head": 2}}},  # fresh: far from the teacher
                 [{"name": "lm_skew_reverse_kl", "params": {"alpha": 0.1}}, {"name": "lm_ce", "weight": 0.5}],
                 marks=pytest.mark.slow),
], ids=["cut-fkl", "config-jsd+ce", "cut-skew", "config-skew-rkl+lm_ce"])
def test_student_distils_loss_falls_and_perplexity_is_reported(teacher, out, tok, student, terms):
    name = "s_" + "_".join(t["name"] for t in terms)
    r = recipe_from_dict(_recipe(out, name, tok, student={"name": f"hf:{out / 'teacher_hf'}", **student},
                                 teachers=[{"name": f"hf:{out / 'teacher_hf'}"}], terms=terms))
    res = run(r, quiet=True)
    hist = _history(res.run_dir)
    key = f"train_{terms[0]['name']}"
    assert hist[-1][key] < hist[0][key]  # the token divergence to the teacher falls
    assert all(math.isfinite(h["val_loss"]) for h in hist)
    m = json.loads(_kdkit("lm-eval", str(res.run_dir), "--json").strip().splitlines()[-1])
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-9) and 1 < m["perplexity"] < 512
    assert m["n"] > 0 and 0 <= m["top1"] <= 100


def test_on_policy_gkd_student_loss_falls(teacher, out, tok):
    """GKD on the real corpus: half the batches are the student's own continuations of 8-token prompts."""
    r = recipe_from_dict(_recipe(out, "s_gkd", tok, student={"name": f"hf:{out / 'teacher_hf'}",
                                                              "params": {"config": {"n_layer": 1, "n_embd": 16,
                                                                                    "n_head": 2}}},
                                 teachers=[{"name": f"hf:{out / 'teacher_hf'}"}],
                                 scheme={"name": "gkd", "params": {"lmbda": 0.5, "prompt_tokens": 8}},
                                 terms=[{"name": "lm_jsd", "params": {"beta": 0.5}}]))
    res = run(r, quiet=True)
    hist = _history(res.run_dir)
    assert hist[-1]["train_lm_jsd"] < hist[0]["train_lm_jsd"]  # the divergence to the teacher falls
    on = [h["train_on_policy"] for h in hist]
    assert 0 < sum(on) / len(on) < 1  # both kinds of batch were trained on (18 coin flips at 0.5)
    assert all(math.isfinite(h["val_loss"]) for h in hist) and (res.run_dir / "last.safetensors").is_file()


def test_bf16_teacher_gives_the_fp32_kd_loss_within_tolerance(teacher, out, tok):
    """``teacher_policy: {precision: bf16}`` runs an LM teacher under bf16 autocast; the token losses barely move."""
    import torch

    from kdkit.lm.data import LMBatchLoader, load_lm_split
    from kdkit.losses.tokens import token_divergence
    from kdkit.models.factory import create_model
    from kdkit.teachers.frozen import FrozenTeacher
    from kdkit.teachers.policy import TeacherPolicy

    _, val, _ = load_lm_split("lee_background", tok, block=32, val_fraction=0.05)
    batch = next(iter(LMBatchLoader(val, 16, False, 0)))
    name, v = f"hf:{out / 'teacher_hf'}", val.vocab_size
    fp32 = FrozenTeacher(create_model(name, num_classes=v, in_channels=1, image_size=32))
    bf16 = FrozenTeacher(create_model(name, num_classes=v, in_channels=1, image_size=32),
                         policy=TeacherPolicy(precision="bf16"))
    torch.manual_seed(0)
    student = create_model(name, num_classes=v, in_channels=1, image_size=32,
                           config={"n_layer": 1, "n_embd": 16, "n_head": 2}).eval()
    with torch.no_grad():
        s = student(batch["input"])
    t32, t16 = fp32(batch["input"]).logits, bf16(batch["input"]).logits
    assert t16.dtype == torch.float32 and not torch.equal(t16, t32)  # bf16 really ran; outputs come back as float32
    keep = batch["target"] >= 0
    for kind in ("forward_kl", "reverse_kl", "generalized_jsd"):
        a, b = token_divergence(s, t32, keep, kind), token_divergence(s, t16, keep, kind)
        # bf16 keeps 8 significant bits: each logit is off by ~0.4 %, and the loss, a mean over hundreds of tokens,
        # moves far less (measured on the demo teacher: 5e-5 relative, docs/benchmarks.md); 1 % is a loose bound
        assert float(b) == pytest.approx(float(a), rel=1e-2), kind


def test_recipe_puts_the_teacher_in_bf16_on_its_own_device(teacher, out, tok):
    import torch

    from kdkit.teachers.frozen import FrozenTeacher
    from kdkit.teachers.policy import TeacherPolicy

    pinned = FrozenTeacher(torch.nn.Linear(2, 2), policy=TeacherPolicy(device="cpu"))
    pinned.to("meta")  # the engine moves teachers to the student's device; a pinned one stays on its own
    assert pinned.model.weight.device.type == "cpu"
    r = recipe_from_dict(_recipe(out, "s_bf16", tok, epochs=2,
                                 student={"name": f"hf:{out / 'teacher_hf'}", "params": {"layers": 1}},
                                 teachers=[{"name": f"hf:{out / 'teacher_hf'}"}], terms=[{"name": "lm_forward_kl"}],
                                 teacher_policy={"precision": "bf16", "device": "cpu"}))
    res = run(r, quiet=True)
    hist = _history(res.run_dir)
    assert hist[-1]["train_lm_forward_kl"] < hist[0]["train_lm_forward_kl"]
    rec = json.loads((res.run_dir / "teacher_policy.json").read_text())["teachers"][0]
    assert rec["chosen"].startswith("bf16") and rec["request"]["device"] == "cpu"


def test_a_teacher_device_that_is_not_one_is_refused_in_one_line(tok, out):
    from kdkit.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher_policy.device.*not a torch device"):
        recipe_from_dict(_recipe(out, "bad", tok, student={"name": "lm:gpt2"}, teacher_policy={"device": "gpu2"}))


@pytest.mark.slow  # trains a second tokenizer
def test_differing_tokenizer_is_refused_in_one_line(teacher, out, tok):
    other = out / "other_tok"
    _kdkit("lm-tokenizer", "hamlet", "--out", str(other), "--vocab", "512")
    r = recipe_from_dict(_recipe(out, "bad", str(other), student={"name": "lm:gpt2", "params": {"layers": 1}},
                                 teachers=[{"name": f"hf:{out / 'teacher_hf'}"}], terms=[{"name": "lm_forward_kl"}]))
    from kdkit.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        run(r, quiet=True)
    msg = str(err.value)
    assert "\n" not in msg and "teachers.0" in msg and "another tokenizer" in msg
