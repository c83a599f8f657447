"""Text distillation benchmark: MiniLM-L6 teacher -> small transformer students on Rotten Tomatoes (TinyBERT-style).

Rows (recipes in recipes/text/, each run with the kdkit engine exactly as ``kdkit distill`` runs them):

* ``teacher``        -- MiniLM-L6 fine-tuned on the snippets (rt_teacher.yaml); seed 0 teaches every student, rows
  ``teacher_seed`` (seeds 1, 2) only measure the teacher's spread;
* ``scratch``        -- the small student (2 layers, hidden 128, 2 heads, random init), hard labels only;
* ``kd``             -- + prediction-layer distillation (soft CE, T = 1);
* ``tinybert``       -- + embedding, hidden-state and attention distillation (one-step TinyBERT, rt_tinybert.yaml);
* ``no_embedding`` / ``no_hidden`` / ``no_attention`` / ``no_prediction`` -- the ablation: ``tinybert`` without one
  term (TinyBERT paper, table 6);
* ``tinybert_2step`` -- the paper's two steps: intermediate layers (2 epochs), then predictions (1 epoch);
* ``bilstm_scratch`` / ``bilstm_kd`` -- a BiLSTM student, without and with distillation (CE + soft CE + last hidden
  states);
* ``distilbert_scratch`` / ``distilbert`` -- a 3-layer copy of pretrained MiniLM (layers 1, 3, 6), fine-tuned with
  labels only / distilled DistilBERT-style (CE + soft CE at T = 2 + cosine on the last hidden states).

Every row keeps hard-label CE (weight 1) so that rows differ only in their distillation terms. Accuracy is the
validation accuracy after the last epoch (no epoch picked on the validation split), mean ± std over seeds.

The teacher's outputs for the training sentences are computed once into a feature cache (kdkit.text.cache), which
the distillation runs read instead of running the teacher -- bit-for-bit the same logits, features within float16
rounding -- so that the many runs fit on a shared 2-core CPU.

Usage (results: JSON on stdout and in OUT/results.json; a Markdown table with --markdown)::

    python benchmarks/text_distill.py all --seeds 0 1 2 --jobs 2
    python benchmarks/text_distill.py teacher | cache | runs --rows scratch kd | measure | speed | table --markdown

Timing figures depend on the machine's load: ``uptime`` is recorded with them; re-run ``measure`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "text"
sys.path.insert(0, str(ROOT / "src"))

# row -> (recipe, terms removed from it)
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "scratch": ("rt_student_scratch.yaml", ()),
    "kd": ("rt_student_kd.yaml", ()),
    "tinybert": ("rt_tinybert.yaml", ()),
    "no_embedding": ("rt_tinybert.yaml", ("tinybert_embedding",)),
    "no_hidden": ("rt_tinybert.yaml", ("tinybert_hidden",)),
    "no_attention": ("rt_tinybert.yaml", ("tinybert_attention",)),
    "no_prediction": ("rt_tinybert.yaml", ("tinybert_prediction",)),
    "tinybert_2step": ("rt_tinybert_2step.yaml", ()),  # a pipeline: intermediate, then prediction
    "bilstm_scratch": ("rt_bilstm_kd.yaml", ("tinybert_prediction", "tinybert_hidden")),
    "bilstm_kd": ("rt_bilstm_kd.yaml", ()),
    "distilbert_scratch": ("rt_distilbert.yaml", ("tinybert_prediction", "distilbert_cosine")),
    "distilbert": ("rt_distilbert.yaml", ()),
    "teacher_seed": ("rt_teacher.yaml", ()),  # more teacher seeds, for the teacher row's spread (seed 0 = rt_teacher)
}
MAIN_ROWS = ["scratch", "kd", "tinybert", "no_embedding", "no_hidden", "no_attention", "no_prediction"]


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def teacher_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) / "rt_teacher"


def cache_path(args: argparse.Namespace) -> Path:
    return Path(args.out) / "teacher_features.safetensors"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- steps


def run_teacher(args: argparse.Namespace) -> dict[str, Any]:
    import kdkit.text  # noqa: F401
    from kdkit.recipe import recipe_from_dict
    from kdkit.runs import run

    d = teacher_dir(args)
    if (d / "summary.json").is_file():
        return json.loads((d / "summary.json").read_text())
    data = _yaml(RECIPES / "rt_teacher.yaml")
    data.update(output_dir=str(Path(args.out)), threads=args.threads)
    _log(f"training the teacher into {d}")
    run(recipe_from_dict(data), resume=(d / "checkpoints" / "latest.json").is_file(), quiet=True)
    return json.loads((d / "summary.json").read_text())


def build_cache(args: argparse.Namespace) -> dict[str, Any]:
    """Teacher outputs for every training sentence, at the paths the student recipes read."""
    import torch

    import kdkit.text  # noqa: F401
    from kdkit.data.run import build_data
    from kdkit.models import create_model
    from kdkit.recipe import recipe_from_dict
    from kdkit.text.cache import build_feature_cache
    from kdkit.weights import resolve_checkpoint

    out = cache_path(args)
    if out.is_file():
        return {"cache": str(out), "mb": out.stat().st_size / 1e6}
    torch.set_num_threads(args.threads)
    recipe = recipe_from_dict(_recipe_dict(args, "tinybert", 0, use_cache=False))
    data = build_data(recipe)
    teacher = create_model("hf:minilm", num_classes=data.num_classes, image_size=data.image_size,
                           checkpoint=str(resolve_checkpoint(str(teacher_dir(args)), "teacher")))
    lay = teacher.text_layout()
    # Student layers 1, 2 <- teacher layers 3, 6 (uniform); the last layer also serves `final` maps.
    paths = [lay.embedding, lay.hidden[2], lay.hidden[5], lay.attention_scores[2], lay.attention_scores[5]]
    _log(f"building the teacher feature cache for {len(data.train)} sentences -> {out}")
    t0 = time.perf_counter()
    build_feature_cache(teacher, data.train, paths, out, batch_size=64)
    return {"cache": str(out), "mb": out.stat().st_size / 1e6, "seconds": time.perf_counter() - t0, "paths": paths}


def _teacher_spec(args: argparse.Namespace, t: dict[str, Any], use_cache: bool) -> None:
    t["checkpoint"] = str(teacher_dir(args))
    if use_cache and cache_path(args).is_file():
        t.setdefault("params", {})["feature_cache"] = str(cache_path(args))


def _recipe_dict(args: argparse.Namespace, row: str, seed: int, use_cache: bool = True) -> dict[str, Any]:
    file, drop = ROWS[row]
    data = copy.deepcopy(_yaml(RECIPES / file))
    if drop:
        data["terms"] = [t for t in data["terms"] if t["name"] not in drop]
    if not any(t["name"] in ("tinybert_prediction", "tinybert_hidden", "tinybert_embedding", "tinybert_attention",
                             "distilbert_cosine") for t in data.get("terms", [])) and not data.get("stages"):
        data.pop("teachers", None)  # a "scratch" row: no teacher at all
    name = f"{row}_s{seed}"
    data.update(name=name, output_dir=str(Path(args.out) / "runs"), seed=seed, threads=args.threads)
    for t in data.get("teachers", []):
        _teacher_spec(args, t, use_cache)
    for stage in data.get("stages", []):  # the two-step pipeline: stage 2 starts from stage 1's last weights
        for t in stage.get("teachers", []):
            _teacher_spec(args, t, use_cache)
        if "checkpoint" in stage.get("student", {}):
            stage["student"]["checkpoint"] = str(Path(args.out) / "runs" / name / "stages" / "intermediate" /
                                                 "last.safetensors")
    if args.epochs:
        data["epochs"] = args.epochs
    return data


def _final_dir(args: argparse.Namespace, row: str, seed: int) -> Path:
    """Run directory whose metrics are the row's result (the last stage of a pipeline)."""
    d = Path(args.out) / "runs" / f"{row}_s{seed}"
    return d / "stages" / "prediction" if row == "tinybert_2step" else d


def run_one(args: argparse.Namespace, row: str, seed: int) -> dict[str, Any]:
    """One benchmark run (a pipeline for tinybert_2step); skipped when its summary exists."""
    import kdkit.text  # noqa: F401
    from kdkit.recipe import recipe_from_dict
    from kdkit.runs import run

    recipe = recipe_from_dict(_recipe_dict(args, row, seed))
    d = recipe.run_dir
    if not (d / "summary.json").is_file():
        _log(f"run {recipe.name}")
        run(recipe, resume=(d / "checkpoints" / "latest.json").is_file() and not recipe.stages, quiet=True)
    return json.loads((d / "summary.json").read_text())


def run_many(args: argparse.Namespace) -> None:
    """Run rows x seeds, ``--jobs`` at a time, each in its own process (one torch thread each by default)."""
    # teacher_seed 0 is rt_teacher itself (the `teacher` step): not trained twice
    todo = [(row, s) for row in args.rows for s in args.seeds if (row, s) != ("teacher_seed", 0)]
    procs: list[tuple[subprocess.Popen, str]] = []
    while todo or procs:
        while todo and len(procs) < args.jobs:
            row, seed = todo.pop(0)
            cmd = [sys.executable, __file__, "one", row, str(seed), "--out", args.out, "--threads", str(args.threads)]
            if args.epochs:
                cmd += ["--epochs", str(args.epochs)]
            log = Path(args.out) / "logs" / f"{row}_s{seed}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            procs.append((subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), f"{row}_s{seed}"))
        time.sleep(5)
        for p, name in list(procs):
            if p.poll() is not None:
                procs.remove((p, name))
                _log(f"{name} finished with exit code {p.returncode}")


def _history(run_dir: Path) -> list[dict[str, Any]]:
    f = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Parameters, size on disk and CPU latency per sentence (batch 1, a median-length validation sentence) and per
    sentence at batch 32, one thread."""
    import torch

    import kdkit.text  # noqa: F401
    from kdkit.data.run import build_data
    from kdkit.deploy.measure import count_params, cpu_latency, size_on_disk_mb
    from kdkit.models import create_model
    from kdkit.recipe import recipe_from_dict

    recipe = recipe_from_dict(_recipe_dict(args, "scratch", 0, use_cache=False))
    data = build_data(recipe)
    lengths = data.val.lengths
    median = int(lengths.median())
    row = int((lengths == median).nonzero()[0])
    one = data.val.pad(torch.tensor([row]))
    batch = next(iter(data.val_loader))["input"][:32]
    models = {}
    for key in ("teacher", "scratch", "bilstm_kd", "distilbert"):
        spec = _yaml(RECIPES / ("rt_teacher.yaml" if key == "teacher" else ROWS[key][0]))["student"]
        models[key] = create_model(spec["name"], num_classes=data.num_classes, image_size=data.image_size,
                                   **spec.get("params", {})).eval()
    out: dict[str, Any] = {"uptime": os.popen("uptime").read().strip(), "threads": 1, "sentence_tokens": median,
                           "batch32_shape": list(batch.shape)}
    for key, m in models.items():
        lat1 = cpu_latency(m, one, warmup=5, repeats=30, threads=1)
        lat32 = cpu_latency(m, batch, warmup=2, repeats=10, threads=1)
        out[key] = {"params": count_params(m), "size_mb": round(size_on_disk_mb(m), 2),
                    "latency_ms_b1": round(lat1.p50_ms, 2),
                    "latency_ms_per_sentence_b32": round(lat32.per_sample_ms, 3)}
    return out


def speed(args: argparse.Namespace, steps: int = 30) -> dict[str, Any]:
    """Training-step time (forward, terms, backward, AdamW step; one thread) of the small student alone, with
    TinyBERT's terms reading the teacher feature cache, and with the teacher run live -- the cost the cache removes."""
    import torch

    import kdkit.text  # noqa: F401
    from kdkit.builder import build_scheme
    from kdkit.data.run import build_data
    from kdkit.engine.loop import build_optimizer
    from kdkit.recipe import recipe_from_dict
    from kdkit.types import TrainState

    torch.set_num_threads(1)
    out: dict[str, Any] = {"uptime": os.popen("uptime").read().strip(), "threads": 1, "steps": steps}
    for label, row, use_cache in (("student_alone", "scratch", False), ("tinybert_cached_teacher", "tinybert", True),
                                  ("tinybert_live_teacher", "tinybert", False)):
        recipe = recipe_from_dict(_recipe_dict(args, row, 0, use_cache=use_cache))
        data = build_data(recipe)
        scheme = build_scheme(recipe, data)
        model = scheme.trainable().train()
        opt = build_optimizer(recipe.optim, model)
        state = TrainState(steps_per_epoch=len(data.train_loader), epochs=1)
        batches = list(data.train_loader)[: steps + 3]
        times = []
        for i, b in enumerate(batches):
            t0 = time.perf_counter()
            o = scheme.step(model, b, state)
            opt.zero_grad(set_to_none=True)
            o.loss.backward()
            opt.step()
            if i >= 3:  # warm-up steps (the cache verifies itself on its first batch)
                times.append(time.perf_counter() - t0)
        out[label] = {"ms_per_step": round(1e3 * sum(times) / len(times), 1),
                      "sentences_per_s": round(sum(int(b["input"].shape[0]) for b in batches[3:]) / sum(times), 1)}
    return out


def table(args: argparse.Namespace) -> dict[str, Any]:
    import statistics

    res: dict[str, Any] = {"rows": {}}
    t = _history(teacher_dir(args))
    if t:
        accs = [t[-1]["val_top1"]]
        for seed in args.seeds:
            h = _history(_final_dir(args, "teacher_seed", seed))
            if seed != 0 and h:
                accs.append(h[-1]["val_top1"])
        res["rows"]["teacher"] = {"acc": accs, "mean": statistics.fmean(accs),
                                  "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "epochs": len(t),
                                  "train_seconds": sum(h["train_seconds"] for h in t),
                                  "note": "seed 0 is the teacher every student learns from"}
    for row in ROWS:
        if row == "teacher_seed":
            continue
        accs, secs, seeds = [], [], []
        for seed in args.seeds:
            d = _final_dir(args, row, seed)
            h = _history(d)
            if not h or not (d / "summary.json").is_file():
                continue
            accs.append(h[-1]["val_top1"])
            if row == "tinybert_2step":  # both stages' training time
                h = h + _history(d.parent / "intermediate")
            secs.append(sum(x["train_seconds"] for x in h))
            seeds.append(seed)
        if accs:
            res["rows"][row] = {"acc": accs, "seeds": seeds, "mean": statistics.fmean(accs),
                                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                                "train_seconds_mean": statistics.fmean(secs)}
    for key in ("measure", "speed"):
        f = Path(args.out) / f"{key}.json"
        if f.is_file():
            res[key] = json.loads(f.read_text())
    return res


def _arch(row: str) -> str:
    """Which measured architecture a row's student is."""
    if row == "teacher":
        return "teacher"
    if row.startswith("bilstm"):
        return "bilstm_kd"
    if row.startswith("distilbert"):
        return "distilbert"
    return "scratch"


def markdown(res: dict[str, Any]) -> str:
    meas = res.get("measure", {})
    lines = ["| row | val accuracy % (mean ± std) | seeds | params | size MB | ms / sentence (b=1) | "
             "ms / sentence (b=32) |", "|---|---|---|---|---|---|---|"]
    for row, r in res["rows"].items():
        m = meas.get(_arch(row), {})
        acc = f"{r['acc'][0]:.2f}" if len(r["acc"]) == 1 else f"{r['mean']:.2f} ± {r['std']:.2f}"
        params = f"{m['params'] / 1e6:.2f}M" if "params" in m else ""
        lines.append(f"| {row} | {acc} | {len(r['acc'])} | {params} | {m.get('size_mb', '')} | "
                     f"{m.get('latency_ms_b1', '')} | {m.get('latency_ms_per_sentence_b32', '')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["teacher", "cache", "runs", "one", "measure", "speed", "table", "all"])
    ap.add_argument("row", nargs="?")
    ap.add_argument("seed", nargs="?", type=int)
    ap.add_argument("--rows", nargs="+", default=MAIN_ROWS, choices=list(ROWS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (one process each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on a loaded machine)")
    ap.add_argument("--epochs", type=int, default=None, help="override every student recipe's epochs")
    ap.add_argument("--out", default=str(ROOT / "runs" / "text"))
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.step == "one":
        print(json.dumps(run_one(args, args.row, args.seed)))
        return
    if args.step in ("teacher", "all"):
        print(json.dumps({"teacher": run_teacher(args)}))
    if args.step in ("cache", "all"):
        print(json.dumps(build_cache(args)))
    if args.step in ("runs", "all"):
        run_many(args)
    if args.step in ("measure", "all"):
        from kdkit.deploy.measure import cpu_info

        m = dict(measure(args), cpu=cpu_info())
        (Path(args.out) / "measure.json").write_text(json.dumps(m, indent=2))
        print(json.dumps(m))
    if args.step in ("speed", "all"):
        from kdkit.deploy.measure import cpu_info

        sp = dict(speed(args), cpu=cpu_info())
        (Path(args.out) / "speed.json").write_text(json.dumps(sp, indent=2))
        print(json.dumps(sp))
    if args.step in ("table", "all"):
        res = table(args)
        (Path(args.out) / "results.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res))
        if args.markdown:
            print(markdown(res))


if __name__ == "__main__":
    main()
