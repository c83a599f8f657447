"""How often the student policy picks each mode for the same model and batch, measured N times in one process: the
old rule (two timed rounds in a fixed order, the median alone decides) against the current one (rounds rotate, a
cheap step gets up to 25 rounds, and a mode must beat fp32 in three quarters of them). Prints JSON.

A choice that flips from run to run on equal hardware makes a run's accuracy depend on a timing: the MLP 784-64-10 of
docs/benchmarks.md trained the same recipe in fp32 in one run and bf16 in the next (0.17 points apart on validation).
For the MLP fp32 and fp32 + channels-last are the same bytes (one input channel) and the same arithmetic, so any
preference between them is timing bias.

    .venv/bin/python benchmarks/student_policy_stability.py --models mlp cnn10k --trials 30 --threads 1
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import platform
import time

import torch
from torch import nn

from kdkit.data.sources import fashion_mnist
from kdkit.engine.precision import FP32, Mode, StudentTolerance, candidates, choose, measure_student
from kdkit.models.factory import create_model
from kdkit.types import StepOutput
from kdkit.utils import cpu_info

MODELS = {"mlp": ("mlp", {"hidden": [64]}), "cnn10k": ("cnn", {"channels": [[12], [24], [32]]})}
RULES = {"old": {"rotate": False, "min_seconds": 0.0}, "new": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = fashion_mnist("train")
    x = torch.as_tensor(data.images[: args.batch]).float().div(255.0)
    y = torch.as_tensor(data.targets[: args.batch])
    batch = {"input": x, "target": y}
    out: dict = {"cpu": cpu_info(), "torch": torch.__version__, "python": platform.python_version(),
                 "threads": args.threads, "trials": args.trials, "batch": args.batch,
                 "load_before": open("/proc/loadavg").read().split()[:3], "models": {}}
    for name in args.models:
        arch, params = MODELS[name]
        torch.manual_seed(0)
        net = create_model(arch, 10, in_channels=1, image_size=28, **params).train()
        opt_free_step = lambda b, net=net: _step(net, b)  # noqa: E731
        modes = candidates("auto", "auto", "cpu", 4)
        counts = {rule: collections.Counter() for rule in RULES}
        seconds = {rule: 0.0 for rule in RULES}
        for _ in range(args.trials):
            for rule, timing in RULES.items():  # the two rules alternate, so load hits them alike
                t0 = time.perf_counter()
                mode, _, measured, _ = measure_student(opt_free_step, net, batch, modes, torch.device("cpu"),
                                                       timing=timing)
                if rule == "old":  # the old choice: the median alone (no rounds to agree on)
                    mode = choose([dataclasses.replace(m, rounds=()) for m in measured],
                                  StudentTolerance().agrees)[0]
                seconds[rule] += time.perf_counter() - t0
                counts[rule][mode.label] += 1
        out["models"][name] = {
            "parameters": sum(p.numel() for p in net.parameters()),
            "chosen": {rule: dict(c.most_common()) for rule, c in counts.items()},
            "seconds_per_decision": {rule: round(s / args.trials, 4) for rule, s in seconds.items()},
            "same_arithmetic_as_fp32": [m.label for m in modes if m == FP32 or
                                        (m == Mode("fp32", True) and name.startswith("mlp"))]}
    out["load_after"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(out, indent=1))


def _step(net: nn.Module, b: dict) -> StepOutput:
    logits = net(b["input"])
    return StepOutput(loss=nn.functional.cross_entropy(logits, b["target"]), logits=logits, terms={})


if __name__ == "__main__":
    main()
