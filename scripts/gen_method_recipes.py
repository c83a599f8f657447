"""Write recipes/methods/*.yaml: one runnable recipe per loss term on the bundled MNIST digits.

    python scripts/gen_method_recipes.py

Every recipe distils from the quickstart teacher (`kdkit train recipes/mnist_teacher.yaml` first, or point
teachers.0.checkpoint elsewhere). Logit terms train the quickstart MLP student; feature terms train `cnn_student`,
whose three stages pair with the teacher's. Weights are the published ones where the method has them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "recipes" / "methods"
TEACHER = {"name": "cnn_teacher", "checkpoint": "runs/mnist_teacher"}
MLP = {"name": "mlp", "params": {"hidden": [64]}}
CNN = {"name": "cnn_student"}

CE = {"name": "ce"}
METHODS: dict[str, tuple[str, dict, list[dict]]] = {
    # name: (what, student, terms)
    "kd": ("Hinton KD: 0.5·CE + 0.5·T²·KL at T=8", MLP,
           [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 8.0}}]),
    "soft_ce": ("soft-target cross-entropy at T=8", MLP,
                [{"name": "ce", "weight": 0.5}, {"name": "soft_ce", "weight": 0.5, "params": {"temperature": 8.0}}]),
    "logit_mse": ("squared error between logits (Ba & Caruana 2014)", MLP,
                  [{"name": "ce", "weight": 0.5}, {"name": "logit_mse", "weight": 0.5}]),
    "dkd": ("decoupled KD (alpha 1, beta 8, T 4, weight warmed up over 5 epochs)", MLP,
            [CE, {"name": "dkd", "weight": 1.0, "warmup_epochs": 5,
                  "params": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}}]),
    "noisy_kd": ("noisy teacher: multiplicative Gaussian noise (sigma 0.1) on half the samples, then KD", MLP,
                 [{"name": "ce", "weight": 0.5},
                  {"name": "noisy_kd", "weight": 0.5, "params": {"sigma": 0.1, "p": 0.5, "temperature": 8.0}}]),
    "label_smoothing": ("label smoothing 0.1, no teacher", MLP, [{"name": "label_smoothing", "params": {"eps": 0.1}}]),
    "confidence_penalty": ("confidence penalty beta 0.1, no teacher", MLP,
                           [CE, {"name": "confidence_penalty", "params": {"beta": 0.1}}]),
    "tf_kd": ("teacher-free KD with a virtual teacher (a 0.9, T 4), no teacher", MLP,
              [{"name": "ce", "weight": 0.5}, {"name": "tf_kd", "weight": 0.5, "params": {"a": 0.9, "temperature": 4.0}}]),
    "fitnet": ("FitNets hint on stage 1 (weight 100) plus CE", CNN, [CE, {"name": "fitnet", "weight": 100.0}]),
    "at": ("attention transfer on every stage pair (beta 1000) plus CE", CNN, [CE, {"name": "at", "weight": 1000.0}]),
    "sp": ("similarity-preserving KD on the last stage (gamma 3000) plus CE", CNN,
           [CE, {"name": "sp", "weight": 3000.0}]),
    "rkd": ("relational KD on embeddings (distance 25, angle 50) plus CE", CNN,
            [CE, {"name": "rkd", "params": {"w_d": 25.0, "w_a": 50.0}}]),
    "crd": ("contrastive representation distillation (beta 0.8) plus CE", CNN,
            [CE, {"name": "crd", "weight": 0.8, "params": {"n_neg": 4096}}]),
    "ie": ("inheritance & exploration KD on the last stage plus CE", CNN, [CE, {"name": "ie"}]),
    "sobolev": ("Sobolev training (one projection) plus KD and CE", MLP,
                [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 8.0}},
                 {"name": "sobolev", "weight": 1.0, "params": {"projections": 1}}]),
    "kd_at": ("KD and attention transfer combined", CNN,
              [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 8.0}},
               {"name": "at", "weight": 1000.0}]),
    "fitnet_two_stage": ("FitNets' two stages: hint only for 5 epochs, then CE + KD", CNN,
                         [{"name": "fitnet", "weight": 100.0, "stop_epoch": 5},
                          {"name": "ce", "weight": 0.5, "start_epoch": 5},
                          {"name": "kd", "weight": 0.5, "start_epoch": 5, "params": {"temperature": 8.0}}]),
    # issue 17
    "dist": ("DIST: inter- and intra-class Pearson relations (beta 2, gamma 2, T 4) plus CE", MLP,
             [CE, {"name": "dist", "weight": 1.0, "params": {"beta": 2.0, "gamma": 2.0, "temperature": 4.0}}]),
    "kd_standardized": ("KD on z-scored logits (logit standardisation, base T 2, KD weight 9, CE 0.1)", MLP,
                        [{"name": "ce", "weight": 0.1},
                         {"name": "kd", "weight": 9.0, "params": {"temperature": 2.0, "standardize": True}}]),
    "pkt": ("probabilistic knowledge transfer on embeddings (weight 30000) plus CE", CNN,
            [CE, {"name": "pkt", "weight": 30000.0}]),
    "cc": ("correlation congruence on embeddings (gamma 0.4, Taylor order 2, weight 100) plus CE", CNN,
           [CE, {"name": "cc", "weight": 100.0, "params": {"gamma": 0.4, "order": 2}}]),
    "nst": ("neuron selectivity transfer on every stage pair (weight 50) plus CE", CNN,
            [CE, {"name": "nst", "weight": 50.0}]),
    "vid": ("variational information distillation on every stage pair (weight 1) plus CE", CNN,
            [CE, {"name": "vid", "weight": 1.0}]),
    "ctkd": ("curriculum temperature KD: learnable temperature in [1, 21], adversarial strength ramped over 10 epochs",
             MLP, [{"name": "ce", "weight": 0.1},
                   {"name": "ctkd", "weight": 0.9, "params": {"t_start": 1.0, "t_range": 20.0, "ramp_epochs": 10.0}}]),
    "fsp": ("FSP matrices between consecutive stages (weight 50; the student's stages mapped to the teacher's widths) "
            "plus CE", CNN, [CE, {"name": "fsp", "weight": 50.0, "params": {"connector": "conv1x1"}}]),
    "ab": ("activation boundaries alone for 5 epochs (the paper's initialisation), then CE + KD", CNN,
           [{"name": "ab", "weight": 1.0, "stop_epoch": 5},
            {"name": "ce", "weight": 0.5, "start_epoch": 5},
            {"name": "kd", "weight": 0.5, "start_epoch": 5, "params": {"temperature": 8.0}}]),
    "reviewkd": ("knowledge review: ABF-fused student stages + embeddings, hierarchical context loss (weight 1, warmed "
                 "up over 2.5 of 30 epochs as the reference's 20 of 240) plus CE", CNN,
                 [CE, {"name": "reviewkd", "weight": 1.0, "warmup_epochs": 2.5}]),
}


def render(name: str) -> str:
    what, student, terms = METHODS[name]
    # `method_` keeps every bundled recipe's run directory unique (recipes/mnist_kd.yaml is the README's mnist_kd)
    r = {"name": f"mnist_method_{name}", "seed": 0,
         "data": {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 128},
         "student": student, "teachers": [] if all(t["name"] in ("ce", "label_smoothing", "confidence_penalty",
                                                                   "tf_kd") for t in terms) else [TEACHER],
         "terms": terms, "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0005},
         "schedule": {"name": "onecycle"}, "epochs": 30}
    head = f"# {what}.\n# kdkit distill recipes/methods/{name}.yaml   (after: kdkit train recipes/mnist_teacher.yaml)\n"
    if not r["teachers"]:
        head = f"# {what}.\n# kdkit train recipes/methods/{name}.yaml\n"
    return head + yaml.safe_dump(r, sort_keys=False)


def all_files() -> dict[str, str]:
    return {f"{n}.yaml": render(n) for n in METHODS}


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for fname, text in all_files().items():
        (OUT / fname).write_text(text)
    print(f"wrote {len(METHODS)} recipes to {OUT}")
