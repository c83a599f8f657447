"""Training-step speed: student-only step vs. online KD step (teacher forward + student step), images/s, CPU.

Runs kdkit's own code path (OfflineScheme + DistillModule + engine optimiser), on random inputs of the right shape
(speed does not depend on pixel values). Prints one JSON object.

    .venv/bin/python benchmarks/step_speed.py                     # all pairs, batch 128
    .venv/bin/python benchmarks/step_speed.py --pairs quickstart --steps 20

Target (issue 2): t(KD step) <= (t(student step) + t(teacher forward)) * 1.05.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdkit.engine.loop import build_optimizer  # noqa: E402
from kdkit.models import create_model  # noqa: E402
from kdkit.recipe import OptimSpec, TermSpec, recipe_from_dict  # noqa: E402
from kdkit.schemes.base import BuildContext  # noqa: E402
from kdkit.schemes.offline import OfflineScheme  # noqa: E402
from kdkit.terms import build_term  # noqa: E402
from kdkit.types import TrainState  # noqa: E402

PAIRS = {
    "resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4", (3, 32, 32), 100),
    "wrn_40_2-wrn_16_2": ("wrn_40_2", "wrn_16_2", (3, 32, 32), 100),
    "quickstart": ("cnn_teacher", "mlp", (1, 28, 28), 10),
}


def _ctx(shape, classes, teacher, student):
    recipe = recipe_from_dict({"student": {"name": student}, "teachers": [{"name": teacher}]})
    return BuildContext(recipe=recipe, num_classes=classes, in_channels=shape[0], image_size=shape[1],
                        example=torch.randn(2, *shape), num_train=50000, make_model=None, make_terms=None)


def _time(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_pair(name: str, batch: int, steps: int, warmup: int) -> dict:
    teacher_name, student_name, shape, classes = PAIRS[name]
    torch.manual_seed(0)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, classes, (batch,))
    b = {"input": x, "target": y, "index": torch.arange(batch), "view": torch.zeros(batch, dtype=torch.long)}
    kw = dict(num_classes=classes, in_channels=shape[0], image_size=shape[1])
    teacher, student = create_model(teacher_name, **kw), create_model(student_name, **kw)
    ctx = _ctx(shape, classes, teacher_name, student_name)
    opt_spec = OptimSpec(name="sgd", lr=0.01)
    state = TrainState(steps_per_epoch=100, epochs=1)

    def runner(scheme):
        model = scheme.trainable().train()
        opt = build_optimizer(opt_spec, model)

        def step():
            out = scheme.step(model, b, state)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        return step

    only = OfflineScheme(student, [], [build_term(TermSpec(name="ce"))], ctx)
    t_student = _time(runner(only), steps, warmup)
    kd = OfflineScheme(student, [teacher], [build_term(TermSpec(name="ce", weight=0.1)),
                                           build_term(TermSpec(name="kd", weight=0.9))], ctx)
    t_kd = _time(runner(kd), steps, warmup)
    t_teacher = _time(lambda: kd.teachers[0](x), steps, warmup)
    med = {k: statistics.median(v) for k, v in (("student", t_student), ("kd", t_kd), ("teacher_fwd", t_teacher))}
    bound = (med["student"] + med["teacher_fwd"]) * 1.05
    return {
        "pair": name, "teacher": teacher_name, "student": student_name, "input": list(shape), "classes": classes,
        "batch": batch, "steps": steps,
        "student_step_img_s": batch / med["student"], "kd_step_img_s": batch / med["kd"],
        "teacher_forward_img_s": batch / med["teacher_fwd"],
        "kd_over_student": med["kd"] / med["student"],
        "kd_over_student_plus_teacher": med["kd"] / (med["student"] + med["teacher_fwd"]),
        "meets_target": med["kd"] <= bound,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    rows = [bench_pair(p, args.batch, args.steps if p != "quickstart" else max(args.steps, 30), args.warmup)
            for p in args.pairs]
    print(json.dumps({"benchmark": "step_speed", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "machine": platform.processor() or platform.machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
