"""Held-out perplexity of distilled vs scratch language-model students on lee_background (issue 18's table).

Runs, in the current directory (which must hold ``recipes/``, as the repository root does): the tokenizer
(``kdkit lm-tokenizer``), the teacher (``recipes/lm/lee_teacher.yaml``, exported to ``runs/lm/teacher_hf``) unless they
exist, then every student recipe for every seed (``--set seed=K``, run dirs ``runs/lm/<name>-seed<K>``; finished ones
are read, not rerun). Prints one JSON object: per recipe and seed, the held-out perplexity (exp of the mean token
cross-entropy of the last epoch), next-token accuracy, training tokens/s and wall time; per recipe the mean ± std.

    .venv/bin/python benchmarks/lm_distill.py --seeds 0 1 2 --epochs 3
    .venv/bin/python benchmarks/lm_distill.py --recipes lee_scratch lee_fkl --seeds 0 --epochs 1 --teacher-epochs 1

The budget is one CPU session: a 6-layer teacher for ``--teacher-epochs`` epochs and 2-layer students for ``--epochs``
epochs over the ~95k training tokens.
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

STUDENTS = ["lee_scratch", "lee_fkl", "lee_rkl", "lee_jsd", "lee_skew", "lee_tvd", "lee_gkd", "lee_cut_ce",
            "lee_cut_fkl", "lee_cut_fkl_ce"]


def _kdkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "kdkit.cli", *args], check=True)


def _read(run_dir: Path, block: int) -> dict:
    hist = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = hist[-1]
    secs = sum(h["train_seconds"] for h in hist)
    return {"perplexity": math.exp(last["val_loss"]), "next_token_top1": last["val_top1"],
            "train_tokens_per_s": sum(h["samples"] for h in hist) * block / max(secs, 1e-9), "train_seconds": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=STUDENTS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--train-limit", type=int, default=None, help="training blocks per run (default: all)")
    a = ap.parse_args()
    block = 64
    limit = [] if a.train_limit is None else ["--set", f"data.train_limit={a.train_limit}"]
    if not Path("runs/lm/tokenizer/tokenizer.json").is_file():
        _kdkit("lm-tokenizer", "lee_background", "--out", "runs/lm/tokenizer", "--vocab", str(a.vocab))
    if not Path("runs/lm/lee_teacher/summary.json").is_file():
        _kdkit("train", "recipes/lm/lee_teacher.yaml", "--set", f"epochs={a.teacher_epochs}", *limit, "--quiet")
    if not Path("runs/lm/teacher_hf/model.safetensors").is_file():
        _kdkit("lm-export", "runs/lm/lee_teacher", "--out", "runs/lm/teacher_hf")
    rows: dict[str, dict] = {"lee_teacher": {"0": _read(Path("runs/lm/lee_teacher"), block)}}
    for name in a.recipes:
        rows[name] = {}
        for seed in a.seeds:
            run_dir = Path(f"runs/lm/{name}-seed{seed}")
            if not (run_dir / "summary.json").is_file():
                # a recipe without teachers (scratch, the cut student with CE only) is trained, the others distilled
                cmd = "distill" if "teachers:" in Path(f"recipes/lm/{name}.yaml").read_text() else "train"
                t = time.time()
                _kdkit(cmd, f"recipes/lm/{name}.yaml", "--set", f"seed={seed}", "--set", f"epochs={a.epochs}",
                       "--set", f"name={name}-seed{seed}", *limit, "--quiet")
                print(f"{name} seed {seed}: {time.time() - t:.0f} s", file=sys.stderr)
            rows[name][str(seed)] = _read(run_dir, block)
    summary = {}
    for name, per_seed in rows.items():
        ppl = [r["perplexity"] for r in per_seed.values()]
        summary[name] = {"perplexity_mean": statistics.mean(ppl),
                         "perplexity_std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
                         "next_token_top1_mean": statistics.mean(r["next_token_top1"] for r in per_seed.values()),
                         "tokens_per_s_mean": statistics.mean(r["train_tokens_per_s"] for r in per_seed.values()),
                         "seeds": len(ppl)}
    print(json.dumps({"epochs": a.epochs, "seeds": a.seeds, "runs": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
