"""The step of a run whose only teacher term has stopped: does the teacher still run? (issue 17, AB's initialisation)

AB (Heo et al., AAAI 2019) is an initialisation: the activation-boundary term trains the student for the first epochs,
then the run goes on without it (``recipes/fashion`` / ``fashion_methods.py``'s ``ab=init2``: AB for 2 epochs, then
CE alone). The same shape -- a teacher term inside an epoch window -- is FitNets' first stage or a KD term that starts
late. Outside the window no term reads the teacher, so the offline scheme no longer runs it.

On real Fashion-MNIST batches, the 10k CNN student (``cnn`` 12 | 24 | 32) and the Fashion-MNIST teacher
(``cnn_teacher``; ``--teacher RUN_DIR`` loads a trained run, else random weights -- the cost is the same), one
optimiser step each, timed interleaved with the order rotated every round so machine load hits every kind alike:

* ``ab``: inside the window (AB + the teacher's forward with feature taps);
* ``ce_after``: after the window, as the scheme runs it now (no teacher forward);
* ``ce_after_teacher_forced``: after the window with the teacher's forward run anyway (what the scheme did before);
* ``scratch``: the same student with CE and no teacher in the recipe.

The student trains in fp32; the teacher runs under the teacher policy (its fastest mode that agrees with fp32), as
in the benchmark runs. Prints one JSON object: median ms per kind and ratios to ``scratch``.

    .venv/bin/python benchmarks/window_step.py --threads 1 --steps 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdkit.builder import build_scheme  # noqa: E402
from kdkit.data.run import build_data  # noqa: E402
from kdkit.deploy.measure import cpu_info  # noqa: E402
from kdkit.engine.loop import build_optimizer  # noqa: E402
from kdkit.recipe import recipe_from_dict  # noqa: E402
from kdkit.types import TrainState  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def recipe(terms: list[dict], teacher: str | None, threads: int, limit: int, with_teacher: bool) -> object:
    spec = yaml.safe_load((ROOT / "recipes" / "fashion" / "fashion_teacher.yaml").read_text())["student"]
    r = {"name": "window_step", "seed": 0, "data": {"name": "fashion_mnist", "batch_size": 128, "train_limit": limit,
                                                     "val_fraction": 0.1, "split_seed": 0},
         "student": {"name": "cnn", "params": {"channels": [[12], [24], [32]]}}, "terms": terms,
         "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0005}, "epochs": 2, "threads": threads,
         "precision": "no", "channels_last": False}
    if with_teacher:
        t = {"name": spec["name"], "params": spec.get("params") or {}}
        if teacher:
            t["checkpoint"] = teacher
        r["teachers"] = [t]
        r["teacher_policy"] = {"precision": "auto", "channels_last": "auto"}
    return recipe_from_dict(r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=None, help="a trained Fashion-MNIST teacher run dir (default: random weights)")
    ap.add_argument("--steps", type=int, default=40, help="timed rounds (one step of every kind a round)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    window = [{"name": "ab", "weight": 1.0, "stop_epoch": 1.0}, {"name": "ce", "start_epoch": 1.0}]
    limit = 128 * 8
    built = {}
    for kind, terms, with_teacher in (("windowed", window, True), ("scratch", [{"name": "ce"}], False)):
        r = recipe(terms, args.teacher, args.threads, limit, with_teacher)
        data = build_data(r)
        torch.manual_seed(0)
        scheme = build_scheme(r, data)
        model = scheme.trainable().train()
        built[kind] = (scheme, model, build_optimizer(r.optim, model))
        batches = list(data.train_loader)
    steps = len(batches)
    inside = TrainState(steps_per_epoch=steps, epochs=2)
    after = TrainState(steps_per_epoch=steps, epochs=2)
    after.step = steps + 1  # progress just past 1.0: AB has stopped, CE runs

    def run(kind: str, batch: dict) -> None:
        if kind == "scratch":
            scheme, model, opt = built["scratch"]
            out = scheme.step(model, batch, after)
        else:
            scheme, model, opt = built["windowed"]
            if kind == "ab":
                out = scheme.step(model, batch, inside)
            elif kind == "ce_after":
                out = scheme.step(model, batch, after)
            else:  # the scheme before this change: the teacher's forward every step, its output unused
                out = model(batch, scheme.teachers.outputs(batch), after)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    kinds = ["ab", "ce_after", "ce_after_teacher_forced", "scratch"]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cpu_before = cpu_info()
    for i in range(args.warmup + args.steps):
        batch = batches[i % steps]
        order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]  # rotate who goes first
        for k in order:
            t0 = time.perf_counter()
            run(k, batch)
            if i >= args.warmup:
                times[k].append(time.perf_counter() - t0)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    mode = built["windowed"][0].teachers.teachers[0].mode
    print(json.dumps({"benchmark": "window_step", "cpu": cpu_before, "load_average_after": cpu_info()["load_average"],
                      "threads": args.threads, "batch": 128, "rounds": args.steps, "teacher": args.teacher or "random",
                      "teacher_mode": mode.label if mode is not None else None,
                      "median_ms": {k: round(v, 2) for k, v in med.items()},
                      "over_scratch": {k: round(v / med["scratch"], 3) for k, v in med.items()},
                      "ce_after_over_forced": round(med["ce_after"] / med["ce_after_teacher_forced"], 3)}, indent=1))


if __name__ == "__main__":
    main()
