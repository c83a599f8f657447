"""A bf16 language-model teacher against the fp32 one: token KD losses and teacher forward time (issue 18).

Reads the demo's exported teacher (``runs/lm/teacher_hf``), its tokenizer and a trained student run (made by
``benchmarks/lm_distill.py``). On ``--batches`` held-out batches it computes forward KL, reverse KL and JSD(0.5) between
the student and the teacher run in fp32 and under bf16 autocast (``teacher_policy: {precision: bf16}``, the same
:class:`kdkit.teachers.frozen.FrozenTeacher` the recipes use), and times the two teacher forwards side by side in one
process (alternating, CPU time of one thread). Prints one JSON object.

    .venv/bin/python benchmarks/lm_teacher_precision.py --student runs/lm/lee_scratch-seed0 --batches 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from kdkit.lm.data import LMBatchLoader, load_lm_split
from kdkit.losses.tokens import token_divergence
from kdkit.models.factory import create_model
from kdkit.teachers.frozen import FrozenTeacher
from kdkit.teachers.policy import TeacherPolicy
from kdkit.weights import load_weights


def _cpu() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    return {"model": model or platform.processor(), "flags": sorted(f for f in flags if f.startswith(("avx", "amx")))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="runs/lm/lee_scratch-seed0", help="a trained student run directory")
    ap.add_argument("--teacher", default="runs/lm/teacher_hf")
    ap.add_argument("--tokenizer", default="runs/lm/tokenizer")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(1)
    _, val, _ = load_lm_split("lee_background", a.tokenizer, block=64)
    v = val.vocab_size
    teachers = {p: FrozenTeacher(create_model(f"hf:{a.teacher}", num_classes=v, in_channels=1, image_size=64),
                                 policy=TeacherPolicy(precision=p)) for p in ("fp32", "bf16")}
    student = create_model("lm:gpt2", num_classes=v, in_channels=1, image_size=64, layers=2, width=256, heads=4)
    load_weights(student, Path(a.student) / "checkpoints" / "best.safetensors")
    student.eval()
    kinds = ("forward_kl", "reverse_kl", "generalized_jsd")
    loss = {p: {k: [] for k in kinds} for p in teachers}
    secs: dict[str, list[float]] = {p: [] for p in teachers}
    for i, batch in enumerate(LMBatchLoader(val, a.batch, False, 0)):
        if i >= a.batches:
            break
        x, keep = batch["input"], batch["target"] >= 0
        with torch.no_grad():
            s = student(x)
        order = list(teachers) if i % 2 == 0 else list(teachers)[::-1]  # alternate, so drift hits both alike
        for p in order:
            t0 = time.process_time()
            t = teachers[p](x).logits
            secs[p].append(time.process_time() - t0)
            for k in kinds:
                loss[p][k].append(float(token_divergence(s, t, keep, k)))
    out = {"cpu": _cpu(), "batches": a.batches, "batch": a.batch, "block": 64, "threads": 1, "loss": {}, "time": {}}
    for k in kinds:
        f, b = statistics.mean(loss["fp32"][k]), statistics.mean(loss["bf16"][k])
        out["loss"][k] = {"fp32": f, "bf16": b, "relative_difference": (b - f) / f}
    # the first forward of each mode is its warm-up (kernel choice); the median of the rest is the figure
    for p in teachers:
        out["time"][p] = statistics.median(secs[p][1:] or secs[p])
    out["time"]["bf16_over_fp32"] = out["time"]["bf16"] / out["time"]["fp32"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
