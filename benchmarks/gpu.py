"""The execution policies of issue 15 on a CUDA GPU: teacher forward and KD step in every mode, the `auto` picks, and
the fp16 student step with a gradient scaler. Prints one JSON object; without a GPU it says so and exits 0 (never run
by the tests -- run it by hand as soon as a GPU machine is available).

    .venv/bin/python benchmarks/gpu.py                          # all pairs, batch 128
    .venv/bin/python benchmarks/gpu.py --pairs resnet32x4-resnet8x4 --batch 256 --steps 50

Same code path as benchmarks/step_speed.py (OfflineScheme + DistillModule + the engine's optimiser, random inputs of
the right shape); times are wall clock after `torch.cuda.synchronize()`, medians over interleaved steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdkit.engine.loop import build_optimizer  # noqa: E402
from kdkit.engine.precision import FP32, Mode, candidates, input_in, measure_student, mode_context  # noqa: E402
from kdkit.models import create_model  # noqa: E402
from kdkit.recipe import OptimSpec, TermSpec  # noqa: E402
from kdkit.schemes.offline import OfflineScheme  # noqa: E402
from kdkit.teachers.frozen import FrozenTeachers  # noqa: E402
from kdkit.teachers.policy import TeacherPolicy  # noqa: E402
from kdkit.terms.base import build_term  # noqa: E402
from kdkit.types import TrainState  # noqa: E402

PAIRS = {
    "resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4", (3, 32, 32), 100),
    "wrn_40_2-wrn_16_2": ("wrn_40_2", "wrn_16_2", (3, 32, 32), 100),
    "quickstart": ("cnn_teacher", "mlp", (1, 28, 28), 10),
}


def bench_pair(name: str, batch: int, steps: int, warmup: int, dev: torch.device) -> dict:
    teacher_name, student_name, shape, classes = PAIRS[name]
    torch.manual_seed(0)
    x = torch.randn(batch, *shape, device=dev)
    y = torch.randint(0, classes, (batch,), device=dev)
    kw = dict(num_classes=classes, in_channels=shape[0], image_size=shape[1])
    teacher, student = create_model(teacher_name, **kw).to(dev), create_model(student_name, **kw).to(dev)
    state = TrainState(steps_per_epoch=100, epochs=1)

    def terms():
        return [build_term(TermSpec(name="ce", weight=0.1)), build_term(TermSpec(name="kd", weight=0.9))]

    def scheme(teacher_policy: TeacherPolicy | None) -> OfflineScheme:
        s = OfflineScheme.from_models(copy.deepcopy(student), [], terms(), x[:2], classes)
        s.teachers = FrozenTeachers([copy.deepcopy(teacher)], s.module.teacher_taps, policy=teacher_policy).to(dev)
        s.module.to(dev)
        return s

    def runner(s: OfflineScheme, mode: Mode | None = None, fp16_scaler: bool = False):
        model = s.trainable().train()
        opt = build_optimizer(OptimSpec(name="sgd", lr=0.01), model)
        scaler = torch.amp.GradScaler("cuda") if fp16_scaler else None
        if mode is not None:
            model.to(memory_format=torch.channels_last if mode.channels_last else torch.contiguous_format)

        def step():
            b = input_in({"input": x, "target": y}, mode)
            ctx = torch.autocast("cuda", dtype=torch.float16) if fp16_scaler else mode_context(mode or FP32, "cuda")
            with ctx:
                out = s.step(model, b, state)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                out.loss.backward()
                opt.step()
            else:
                scaler.scale(out.loss).backward()
                scaler.step(opt)
                scaler.update()

        return step

    fp32 = scheme(None)
    policy = TeacherPolicy("auto", "auto", repeats=5)
    auto = scheme(policy)
    auto.teachers.outputs({"input": x})  # the teacher's first batch: measure every mode (fp16 included) and choose
    model = auto.trainable().train()
    s_mode, s_why, s_measured, _ = measure_student(lambda b: auto.step(model, b, state), model,
                                                   {"input": x, "target": y},
                                                   candidates("auto", "auto", "cuda", x.dim(), fp16=False), dev)
    fp16 = scheme(TeacherPolicy("fp16", False))
    variants = {"kd_fp32": runner(fp32), "kd_auto": runner(auto, s_mode), "kd_fp16_scaler": runner(fp16, None, True)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(warmup + steps):
        for k, f in variants.items():
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            f()
            torch.cuda.synchronize(dev)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    t_dec = policy.decisions[0]
    return {
        "pair": name, "batch": batch, "steps": steps, **{f"{k}_ms": round(1e3 * v, 3) for k, v in med.items()},
        "kd_auto_over_kd_fp32": med["kd_auto"] / med["kd_fp32"],
        "kd_fp16_scaler_over_kd_fp32": med["kd_fp16_scaler"] / med["kd_fp32"],
        "teacher_auto_mode": t_dec["chosen"], "teacher_auto_reason": t_dec["reason"],
        "teacher_modes": t_dec["measurements"],
        "student_auto_mode": s_mode.label, "student_auto_reason": s_why,
        "student_modes": [m.as_dict() for m in s_measured],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu", "cuda": False, "torch": torch.__version__,
                          "note": "no CUDA GPU visible; nothing measured"}, indent=2))
        return
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    rows = [bench_pair(p, args.batch, args.steps, args.warmup, dev) for p in args.pairs]
    print(json.dumps({"benchmark": "gpu", "cuda": True, "torch": torch.__version__, "cuda_version": torch.version.cuda,
                      "gpu": props.name, "capability": list(torch.cuda.get_device_capability(dev)),
                      "bf16_supported": torch.cuda.is_bf16_supported(),
                      "memory_gb": round(props.total_memory / 2**30, 1), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
