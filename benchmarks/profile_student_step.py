"""Where a student's training step spends its time: a torch.profiler table of one student step (forward, KD loss,
backward, SGD step) in fp32 and in bf16 autocast + channels-last, CPU (issue 15).

The student's own bf16 step is what limits the online and cached KD ratios on a CPU without AMX (docs/benchmarks.md);
this says which operators dominate it. Self CPU time per operator over ``--steps`` profiled steps (after 2 warm-up
steps), one torch thread by default; prints one JSON object: the top operators and the share of a few groups
(convolution forward / backward, batch norm, dtype conversions and copies, the optimiser).

    .venv/bin/python benchmarks/profile_student_step.py --student wrn_16_2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdkit.models import create_model  # noqa: E402
from kdkit.utils import cpu_info  # noqa: E402

# operator name -> group, by substring, first match wins
GROUPS = [("convolution backward", ("convolution_backward",)),
          ("convolution forward", ("mkldnn_convolution", "_convolution", "aten::convolution", "conv2d")),
          ("batch norm", ("batch_norm",)),
          ("dtype conversion / copy", ("aten::to", "_to_copy", "copy_", "contiguous", "clone")),
          ("optimiser", ("Optimizer.step", "_single_tensor_sgd", "add_", "mul_")),
          ("activation", ("relu", "threshold_backward"))]


def step_fn(name: str, bf16_cl: bool, batch: int, classes: int):
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes).train()
    x, y, t = torch.randn(batch, 3, 32, 32), torch.randint(0, classes, (batch,)), torch.randn(batch, classes) * 4
    if bf16_cl:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16_cl):
            z = model(x).float()
        kd = F.kl_div(F.log_softmax(z / 4, 1), F.log_softmax(t / 4, 1), reduction="batchmean", log_target=True)
        loss = 0.1 * F.cross_entropy(z, y) + 0.9 * 16 * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def table(name: str, bf16_cl: bool, batch: int, steps: int, classes: int, top: int) -> dict:
    step = step_fn(name, bf16_cl, batch, classes)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups = {g: 0.0 for g, _ in GROUPS} | {"other": 0.0}
    for e in events:
        g = next((g for g, keys in GROUPS if any(k in e.key for k in keys)), "other")
        groups[g] += e.self_cpu_time_total
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return {"mode": "bf16+channels_last" if bf16_cl else "fp32", "step_ms": round(total / 1e3 / steps, 1),
            "groups_share": {g: round(v / total, 3) for g, v in groups.items()},
            "top_ops": [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 1),
                         "share": round(e.self_cpu_time_total / total, 3), "calls_per_step": e.count // steps}
                        for e in events[:top]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--student", default="wrn_16_2")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [table(args.student, m, args.batch, args.steps, args.classes, args.top) for m in (False, True)]
    print(json.dumps({"benchmark": "profile_student_step", "student": args.student, "batch": args.batch,
                      "threads": args.threads, "torch": torch.__version__, "cpu": cpu_info(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
