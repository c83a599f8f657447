"""Write recipes/cifar100/*.yaml: the CIFAR-100 benchmark of RepDistiller / mdistiller with published settings.

    python scripts/gen_cifar100_recipes.py      # regenerates the files (they are committed; a test checks they match)

Training: 240 epochs, batch 64, SGD momentum 0.9, weight decay 5e-4, lr 0.05 (0.01 for MobileNetV2/ShuffleNet
students), ×0.1 at epochs 150/180/210; random crop (pad 4) + flip; CIFAR-100 normalisation. Loss weights per method
as published (RepDistiller `train_student.py` flags; DKD from mdistiller `configs/cifar100/dkd/*`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "recipes" / "cifar100"
PAIRS = [  # teacher, student, DKD beta (mdistiller configs)
    ("resnet32x4", "resnet8x4", 8.0),
    ("wrn_40_2", "wrn_16_2", 6.0),
    ("resnet56", "resnet20", 2.0),
    ("vgg13", "vgg8", 6.0),
    ("resnet32x4", "shufflenetv2", 8.0),
    ("vgg13", "mobilenetv2", 6.0),
]
METHODS = {
    "kd": lambda beta: [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "params": {"temperature": 4.0}}],
    "fitnet": lambda beta: [{"name": "ce", "weight": 1.0}, {"name": "fitnet", "weight": 100.0}],
    "at": lambda beta: [{"name": "ce", "weight": 1.0}, {"name": "at", "weight": 1000.0, "params": {"p": 2.0}}],
    "sp": lambda beta: [{"name": "ce", "weight": 1.0}, {"name": "sp", "weight": 3000.0}],
    "rkd": lambda beta: [{"name": "ce", "weight": 1.0}, {"name": "rkd", "weight": 1.0,
                                                          "params": {"w_d": 25.0, "w_a": 50.0}}],
    "crd": lambda beta: [{"name": "ce", "weight": 1.0}, {"name": "crd", "weight": 0.8}],
    "dkd": lambda beta: [{"name": "ce", "weight": 1.0},
                         {"name": "dkd", "weight": 1.0, "warmup_epochs": 20.0,
                          "params": {"alpha": 1.0, "beta": beta, "temperature": 4.0}}],
}
SMALL_LR = {"mobilenetv2", "shufflenetv2"}
# The released teachers the published tables distil from (RepDistiller's `fetch_pretrained_teachers.sh`:
# save/models/<teacher>_vanilla/ckpt_epoch_240.pth, the last epoch of their 240) and their CIFAR-100 top-1.
TEACHER_TOP1 = {"resnet32x4": 79.42, "wrn_40_2": 75.61, "resnet56": 72.34, "vgg13": 74.64}
# Which epoch each source's student numbers are: RepDistiller (KD ... CRD) the last, mdistiller (DKD) the best.
REPORTED_EPOCH = {"dkd": "the BEST epoch (mdistiller/DKD report the best test accuracy)"}
LAST = "the LAST epoch (RepDistiller reports the accuracy after epoch 240)"


def released_checkpoint(teacher: str) -> str:
    return f"save/models/{teacher}_vanilla/ckpt_epoch_240.pth"


def recipe(method: str, teacher: str, student: str, beta: float) -> dict:
    return {
        "name": f"cifar100_{method}_{teacher}_{student}",
        "seed": 0,
        "data": {"name": "cifar100:data/cifar-100-python", "params": {"split": "train"},
                 "val": "cifar100:data/cifar-100-python", "val_params": {"split": "test"},
                 "batch_size": 64, "eval_batch_size": 256,
                 "augment": {"crop_padding": 4, "flip": True},
                 "mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]},
        "student": {"name": student},
        "teachers": [{"name": teacher, "checkpoint": released_checkpoint(teacher)}],
        "terms": METHODS[method](beta),
        "optim": {"name": "sgd", "lr": 0.01 if student in SMALL_LR else 0.05, "momentum": 0.9,
                  "weight_decay": 5e-4},
        "schedule": {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1},
        "epochs": 240,
    }


def render(method: str, teacher: str, student: str, beta: float) -> str:
    head = (f"# CIFAR-100 {method.upper()}: {teacher} -> {student}, published settings (see docs/methods.md for the\n"
            f"# published top-1). The published numbers assume RepDistiller's released teacher checkpoint\n"
            f"# ({teacher}: {TEACHER_TOP1[teacher]}% top-1, its last epoch 240), read as is from\n"
            f"# {released_checkpoint(teacher)}; a teacher you train yourself gives other numbers.\n"
            f"# The published student top-1 is {REPORTED_EPOCH.get(method, LAST)}.\n"
            f"#   kdkit distill recipes/cifar100/{method}_{teacher}_{student}.yaml \\\n"
            f"#     --set data.name=cifar100:PATH --set data.val=cifar100:PATH \\\n"
            f"#     --set teachers.0.checkpoint=PATH/TO/{teacher}_vanilla/ckpt_epoch_240.pth\n")
    return head + yaml.safe_dump(recipe(method, teacher, student, beta), sort_keys=False)


def teacher_recipe(teacher: str) -> str:
    r = recipe("kd", teacher, teacher, 0.0)
    r.update(name=f"cifar100_teacher_{teacher}", terms=[{"name": "ce"}], teachers=[])
    head = (f"# CIFAR-100 teacher {teacher} trained with cross-entropy (the tables' teacher setting; the published\n"
            f"# tables used RepDistiller's released {teacher}, {TEACHER_TOP1[teacher]}% top-1 at its last epoch 240):\n"
            f"#   kdkit train recipes/cifar100/teacher_{teacher}.yaml --set data.name=cifar100:PATH "
            f"--set data.val=cifar100:PATH\n")
    return head + yaml.safe_dump(r, sort_keys=False)


def all_files() -> dict[str, str]:
    files = {f"{m}_{t}_{s}.yaml": render(m, t, s, b) for m in METHODS for t, s, b in PAIRS}
    files.update({f"teacher_{t}.yaml": teacher_recipe(t) for t in sorted({t for t, _, _ in PAIRS})})
    return files


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in all_files().items():
        (OUT / name).write_text(text)
    print(f"wrote {len(all_files())} recipes to {OUT}")
