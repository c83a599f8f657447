"""The benchmark that separates KD methods: Fashion-MNIST (60,000 train + the official 10,000 test images).

One teacher (recipes/fashion/fashion_teacher.yaml: a 0.58M-parameter VGG-style CNN, crop + flip, official test
split), two students: the MLP 784-64-10 (50,890 parameters) and a 10,078-parameter CNN (conv 12 | pool, 24 | pool, 32,
global pooling). Every run uses AdamW 3e-3, weight decay 5e-4, one-cycle, batch 128, and the student policy
(``precision: auto``, ``channels_last: auto``: bf16 / channels-last where they measure faster and agree with fp32; each
run's student_policy.json says what was picked and why). Without augmentation the logit terms read a soft-label store
of the teacher's logits instead of running the teacher; the augmented rows (``scratch_crop``, ``kd_crop``:
crop padding 2 + flip; ``consistent``: the same plus mixup, KL at T = 1 only) run the teacher online under the teacher
policy, so it sees the student's exact view; ``scratch_crop`` is there so a reader sees what the crops alone give.
Two wider students (``--students mlp256x2 cnn40k``): the MLP 784-256-256-10 (269,322 parameters) and the CNN with
channels 24 | 48 | 64 (39,154 parameters).

Protocol, so that no number is chosen on the test split:

1. **tune** -- each method's small grid (temperature, weights; `GRIDS`) is trained with seed 0 on 54,000 training
   images and scored on a 6,000-image validation split cut from the training set (stratified, ``split_seed 0``);
   the variant with the best last-epoch validation accuracy is kept (``--tune-seeds 0 1``: each variant is trained
   with each seed and scored by the mean, since one seed on 6,000 images cannot separate variants < ~0.3 points
   apart; seed s > 0 runs are named ``tune_..._ts<s>``);
2. **final** -- the kept variant is trained on all 60,000 training images with seeds 0, 1, 2 and scored on the
   official test split: mean ± std at the best and at the last epoch (the targets are stated at the last epoch; the
   best epoch is chosen on the test split itself, so it is an optimistic figure, shown for comparison with papers
   that report it).

A method can skip its tuning with ``--choose METHOD=VARIANT`` (e.g. the variant another student's tuning chose: the
row says ``chosen: given``), or be tuned on a shorter budget (``--tune-epochs``); both are CPU savings the output
states. A one-variant grid (scratch) has nothing to choose and is not tuned unless ``--tune-single`` asks for its
validation runs (what a budget chosen on validation compares). Each run is its own process; finished runs are read
back (``bench.json``), so an interrupted benchmark continues, and ``--collect`` trains nothing and reports what has
finished (rows with the seeds that did).

Function matching from a store (``--methods fm``; docs/benchmarks.md, "Function matching on the wider MLP"): Beyer et
al.'s KL-only distillation on flip + mixup views, the teacher's logits on ``--fm-views`` views of every training image
precomputed once per split and seed (``kdkit.softlabels.cache.build_cache``), so a run costs about a plain KD run;
``scratch_mix`` is CE on the same mixed views without a teacher. ``kd_crop_views`` is KD (its grid, hard labels
included) on crop + flip views read from such a store: ``kd_crop`` at store speed.

A softer teacher (docs/benchmarks.md, "A softer teacher"): ``--teacher`` any teacher run (e.g. a shorter one), or
``--fold-teachers RUN_A RUN_B`` -- teachers trained on different parts of the training images -- whose store holds
cross-fitted targets (``--fold-combine oof``: each image from the teacher that never trained on it; ``mean``: the
mean probability of all of them), built with ``kdkit.softlabels.crossfit.cross_fit``; logit methods only, and the
``kd_soft`` grid (T 1 / 2 / 4 x weight 0.9 / 1.0) is the one that experiment tuned.

    .venv/bin/python benchmarks/fashion_methods.py --teacher bench_runs/fashion_teacher --students mlp cnn10k \
        --methods scratch label_smoothing kd dkd dist --epochs 20 --out bench_runs/fashion
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdkit.deploy.measure import cpu_info  # noqa: E402

STUDENTS: dict[str, dict[str, Any]] = {
    "mlp": {"name": "mlp", "params": {"hidden": [64]}},
    "cnn10k": {"name": "cnn", "params": {"channels": [[12], [24], [32]]}},
    # Wider students (docs/benchmarks.md, "Wider students"), declared before any of their runs: does a student that
    # over-fits the hard labels (Hinton et al. 2015's wide MNIST MLP) gain more from KD? Both stay well below the
    # 0.58M-parameter teacher: the MLP 784-256-256-10 has 269,322 parameters (0.46x), the CNN 39,154 (3.8x the 10k
    # CNN's forward FLOPs: 7.1M against 1.9M per image).
    "mlp256x2": {"name": "mlp", "params": {"hidden": [256, 256]}},
    "cnn40k": {"name": "cnn", "params": {"channels": [[24], [48], [64]]}},
}
CE = {"name": "ce"}


def _kd(t: float, w: float, **extra: Any) -> list[dict]:
    return [{"name": "ce", "weight": round(1.0 - w, 4)},
            {"name": "kd", "weight": w, "params": {"temperature": t, **extra}}]


# method -> {variant name: terms}. Each grid is small on purpose (a CPU budget): the temperatures and weights the
# papers recommend, plus the seeds' advice for small students (a lower T, more weight on the soft targets).
GRIDS: dict[str, dict[str, list[dict]]] = {
    "scratch": {"ce": [CE]},
    "label_smoothing": {f"eps{e}": [{"name": "label_smoothing", "params": {"eps": e}}] for e in (0.1, 0.05)},
    # The first variant of each grid is the published setting (what --no-tune uses).
    "kd": {f"T{t}_w{w}": _kd(t, w) for t in (4.0, 1.0) for w in (0.9, 0.5)},
    "kd_standardized": {"T2_w9": [{"name": "ce", "weight": 0.1},
                                  {"name": "kd", "weight": 9.0, "params": {"temperature": 2.0, "standardize": True}}]},
    "dkd": {f"b{b}": [CE, {"name": "dkd", "warmup_epochs": 2.0,
                           "params": {"alpha": 1.0, "beta": b, "temperature": 4.0}}] for b in (8.0, 2.0)},
    "dist": {f"T{t}": [CE, {"name": "dist", "params": {"beta": 2.0, "gamma": 2.0, "temperature": t}}]
             for t in (4.0, 1.0)},
    # The six grids below each had only the published setting; on this student (50k parameters, a near-one-hot
    # teacher) KD's validation chose T 1 with weight 0.9 over the published T 4, so each gets a second variant in that
    # direction (a low temperature / a narrow temperature range, more weight on the teacher), tuned on validation.
    "ctkd": {"ramp": [{"name": "ce", "weight": 0.1},
                      {"name": "ctkd", "weight": 0.9,
                       "params": {"t_start": 1.0, "t_range": 20.0, "ramp_epochs": 5.0}}],
             "r3": [{"name": "ce", "weight": 0.1},
                    {"name": "ctkd", "weight": 0.9, "params": {"t_start": 1.0, "t_range": 3.0, "ramp_epochs": 5.0}}]},
    "soft_ce": {"T4": [{"name": "ce", "weight": 0.5}, {"name": "soft_ce", "weight": 0.5,
                                                       "params": {"temperature": 4.0}}],
                "T1_w0.9": [{"name": "ce", "weight": 0.1}, {"name": "soft_ce", "weight": 0.9,
                                                            "params": {"temperature": 1.0}}]},
    "logit_mse": {"w0.5": [{"name": "ce", "weight": 0.5}, {"name": "logit_mse", "weight": 0.5}],
                  "w0.9": [{"name": "ce", "weight": 0.1}, {"name": "logit_mse", "weight": 0.9}]},
    "noisy_kd": {"s0.1": [{"name": "ce", "weight": 0.5},
                          {"name": "noisy_kd", "weight": 0.5, "params": {"sigma": 0.1, "p": 0.5, "temperature": 4.0}}],
                 "s0.1_T1_w0.9": [{"name": "ce", "weight": 0.1},
                                  {"name": "noisy_kd", "weight": 0.9,
                                   "params": {"sigma": 0.1, "p": 0.5, "temperature": 1.0}}]},
    "tf_kd": {"a0.9": [{"name": "ce", "weight": 0.5}, {"name": "tf_kd", "weight": 0.5,
                                                      "params": {"a": 0.9, "temperature": 4.0}}],
              "a0.95_T1": [{"name": "ce", "weight": 0.5}, {"name": "tf_kd", "weight": 0.5,
                                                          "params": {"a": 0.95, "temperature": 1.0}}]},
    "confidence_penalty": {"b0.1": [CE, {"name": "confidence_penalty", "params": {"beta": 0.1}}],
                           "b0.5": [CE, {"name": "confidence_penalty", "params": {"beta": 0.5}}]},
    # feature terms (the CNN student only; they run the teacher)
    # the second variants: a tenth of the published weight (at it the hint / attention term was 20x / 9x CE here)
    "fitnet": {"w100": [CE, {"name": "fitnet", "weight": 100.0}], "w10": [CE, {"name": "fitnet", "weight": 10.0}]},
    "at": {"w1000": [CE, {"name": "at", "weight": 1000.0}], "w100": [CE, {"name": "at", "weight": 100.0}]},
    "sp": {"w3000": [CE, {"name": "sp", "weight": 3000.0}]},
    "rkd": {"d25_a50": [CE, {"name": "rkd", "params": {"w_d": 25.0, "w_a": 50.0}}]},
    "pkt": {"w30000": [CE, {"name": "pkt", "weight": 30000.0}]},
    "cc": {"w100": [CE, {"name": "cc", "weight": 100.0, "params": {"gamma": 0.4, "order": 2}}]},
    "nst": {"w50": [CE, {"name": "nst", "weight": 50.0}]},
    "vid": {"w1": [CE, {"name": "vid", "weight": 1.0}]},
    "crd": {"w0.8": [CE, {"name": "crd", "weight": 0.8, "params": {"n_neg": 4096}}]},
    "reviewkd": {"w1": [CE, {"name": "reviewkd", "weight": 1.0, "warmup_epochs": 2.0}]},
    "kd_reviewkd": {"T4_w0.9": [*_kd(4.0, 0.9), {"name": "reviewkd", "weight": 1.0, "warmup_epochs": 2.0}]},
    # FSP: kdkit's recipe (recipes/methods/fsp.yaml): CE + 50 x FSP throughout, each student stage mapped to its
    # teacher's width by a 1x1 conv (the student's 12 | 24 | 32 channels against the teacher's 32 | 64 | 128).
    "fsp": {"w50": [CE, {"name": "fsp", "weight": 50.0, "params": {"connector": "conv1x1"}}]},
    # AB as the paper's initialisation inside one schedule: AB alone for the first 2 of 20 epochs (RepDistiller: 30
    # initialisation epochs before 240, an eighth), then CE alone (AB's weight 0 after it, no KD: the feature term's
    # own effect).
    "ab": {"init2": [{"name": "ab", "weight": 1.0, "stop_epoch": 2.0}, {"name": "ce", "start_epoch": 2.0}]},
    # KD at the CNN's validation choice (T 1, weight 0.9; "Tuning with two seeds") plus FSP: the best logit term with
    # the best feature term of the 20-epoch seed-0 rows. The grid is FSP's weight around the published 50 (a fifth and
    # five times it; at 50 the weighted FSP term ended at a quarter of KD's); "T1_w0.9" is FSP 50, the first rows' name.
    "kd_fsp": {f"T1_w0.9{'' if w == 50 else f'_f{w:g}'}":
               [*_kd(1.0, 0.9), {"name": "fsp", "weight": float(w), "params": {"connector": "conv1x1"}}]
               for w in (50, 10, 250)},
    # IE-KD at the official setting (lambda_inh = lambda_exp = 1, factor = half the teacher's channels, the deepest
    # stage pair); its teacher auto-encoder trains jointly (no 30-epoch pre-training inside a 20-epoch budget).
    "ie": {"w1": [CE, {"name": "ie", "weight": 1.0}]},
    # Sobolev training matches values and derivatives: KD at the CNN's validation choice for the values, one random
    # projection of the input-gradient a step for the derivatives (weight 1, the paper's distillation setting).
    "kd_sobolev": {"T1_w0.9_p1": [*_kd(1.0, 0.9), {"name": "sobolev", "weight": 1.0, "params": {"projections": 1}}]},
}
# Rows that augment the student's batch (so they run the teacher online: it sees the student's exact augmented view).
# scratch_crop is the fairness row for kd_crop (what the crops alone give); consistent is Beyer et al.'s function
# matching (KL at T = 1 only, crops + flip + mixup, the same view to both; recipes/consistent/).
CROP = {"crop_padding": 2, "flip": True}
AUGMENT: dict[str, dict[str, Any]] = {"scratch_crop": CROP, "kd_crop": CROP, "consistent": {**CROP, "mixup": 1.0}}
GRIDS["scratch_crop"] = {"ce": [CE]}
GRIDS["kd_crop"] = dict(GRIDS["kd"])  # KD's grid (--choose kd_crop=V reuses KD's validation choice, a CPU saving)
GRIDS["consistent"] = {"T1": [{"name": "kd", "params": {"temperature": 1.0}}]}
# The softer-teacher experiment's grid (docs/benchmarks.md, "A softer teacher"): KD at T 1 / 2 / 4 with weight 0.9 or
# 1.0 on the soft targets (1.0: no hard-label CE at all).
GRIDS["kd_soft"] = {f"T{t}_w{w}": _kd(t, w) for t in (1.0, 2.0, 4.0) for w in (0.9, 1.0)}
# A second KD round for the wider MLP (docs/benchmarks.md, "Wider students"): its kd validation chose the kd grid's
# corner T 4, weight 0.5 (the kd_soft grid extends the other way, towards T 1 and weight 1.0), so this grid goes past
# that corner -- a higher temperature, less weight on the soft targets -- and is tuned on validation like the others.
GRIDS["kd_hot"] = {f"T{t}_w{w}": _kd(t, w) for t in (4.0, 8.0) for w in (0.5, 0.25)}
# KD's grid continued for the 10k CNN's 120-epoch budget (docs/benchmarks.md, "KD at T = 4 over 120 epochs"): there
# validation moved from T 1 (40 epochs) to T 4, weight 0.9 (the hottest corner of the kd grid); this grid goes one
# temperature further at that weight, then (T 8 lost) the two between the measured T 1 and T 4. Its T 4 variant is the
# kd grid's (the same recipe: link or --variants past it).
GRIDS["kd_long"] = {f"T{t}_w0.9": _kd(t, 0.9) for t in (4.0, 8.0, 2.0, 3.0)}
# Label smoothing's grid continued for the 240-epoch budget (docs/benchmarks.md, "240 epochs on the 10k CNN"; declared
# 2026-12-07 06:55 UTC before any of its runs): one step more smoothing, as kd_long is one step more temperature. Its
# eps 0.1 variant is the label_smoothing grid's (the same recipe: link or --variants past it).
GRIDS["label_smoothing_long"] = {f"eps{e}": [{"name": "label_smoothing", "params": {"eps": e}}] for e in (0.1, 0.2)}
# Function matching from a store (docs/benchmarks.md, "Function matching on the wider MLP"; declared 2026-12-04 before
# any of its runs): Beyer et al. (CVPR 2022) -- KL to the teacher only (no hard labels), teacher and student on the
# same mixup-ed view, a long schedule. The views are flip + mixup alpha 1 (crops cost the MLPs accuracy here: no
# translation invariance), precomputed once: a store of --fm-views views per training image and per split (tuning,
# final) and per seed (the augmentation seed is the run's seed), read at student speed -- epoch e shows view e mod V,
# bit for bit the image the teacher labelled. The grid: Beyer's T 1 against T 4, this student's KD validation choice
# (at T 1 the near-one-hot teacher's target on a mixed image is already two-hot-ish; T 4 adds its non-target mass);
# both read the same store. scratch_mix is the fairness row: CE on the mixed labels with the same views, no teacher.
# The declared budget (a CPU budget: the teacher's forward passes cost ~V/20 of a 20-epoch student run each): 8 views,
# 40 epochs (the budget KD's validation chose for the wider MLP; each view is shown 5 times), tuned at 40 epochs.
STORE_AUGMENT: dict[str, dict[str, Any]] = {"fm": {"flip": True, "mixup": 1.0}}
GRIDS["fm"] = {f"T{t:g}": [{"name": "kd", "params": {"temperature": t}}] for t in (1.0, 4.0)}
AUGMENT["scratch_mix"] = dict(STORE_AUGMENT["fm"])
GRIDS["scratch_mix"] = {"ce": [CE]}
# KD on crop + flip views from a store (docs/benchmarks.md, "Crop views at 120 epochs"; declared 2026-12-07 before any
# of its runs): at 40 epochs crops cost the 10k CNN 0.83 points (it under-fitted the shifted views), but at 120 epochs
# it over-fits without them (train 96.7 % vs test 91.1 % from scratch). kd_crop's online teacher nearly doubled the
# CNN's epoch at 40 epochs (~22 s against ~12 s for scratch + crop, under load); a store of --fm-views crop + flip
# views per image gives the same thing -- the teacher's logits on the exact view the student sees -- at store speed
# (epoch e reads view e mod V; 8 views of 54,000 images: 275 s once). KD's grid, hard labels included; scratch_crop
# is its fairness row.
STORE_AUGMENT["kd_crop_views"] = dict(CROP)
GRIDS["kd_crop_views"] = dict(GRIDS["kd"])
FEATURE = {"fitnet", "at", "sp", "rkd", "pkt", "cc", "nst", "vid", "crd", "reviewkd", "kd_reviewkd", "fsp", "ab",
           "kd_fsp", "ie", "kd_sobolev"}
NO_TEACHER = {"scratch", "scratch_crop", "scratch_mix", "label_smoothing", "label_smoothing_long", "tf_kd",
              "confidence_penalty"}

RUN = r"""
import json, sys
import kdkit
from kdkit.recipe import load_recipe
r = load_recipe(sys.argv[1])
res = (kdkit.distill if r.teachers else kdkit.train)(r, quiet=True, resume=sys.argv[2] == "1")
ips = sorted(h["images_per_s"] for h in res.history)
print(json.dumps({"best": res.best["top1"], "best_epoch": res.best.get("epoch"), "last": res.last["val_top1"],
                  "images_per_s": ips[len(ips) // 2]}))
"""


# Variants outside the tuning grids: only ``--choose METHOD=VARIANT`` runs them (single-seed probes between the grid's
# temperatures; the tuned rows and their --collect stay as they were).
EXTRA: dict[str, dict[str, list[dict]]] = {"kd": {"T2.0_w0.9": _kd(2.0, 0.9)}}


def run_one(recipe: dict, run_dir: Path, collect: bool = False) -> dict | None:
    """Train one recipe in its own process (or read back its finished result; with ``collect``, only read back: None
    when the run has not finished)."""
    done = run_dir / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    if collect:
        return None
    resume = "1" if (run_dir / "checkpoints" / "latest.json").is_file() else "0"
    if resume == "0" and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    p = subprocess.run([sys.executable, "-c", RUN, str(path), resume], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{run_dir.name}: {p.stderr[-1500:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    done.write_text(json.dumps(res))
    return res


def last_train_top1(run_dir: Path) -> float | None:
    """The run's training accuracy in its last epoch (its metrics.jsonl; None when absent): against the test accuracy,
    how much the student over-fits."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return lines[-1].get("train_top1") if lines else None


def recipe_for(name: str, out: Path, student: str, terms: list[dict], seed: int, epochs: int, final: bool,
               teacher: Path | None, store: Path | None, threads: int, limit: int | None = None,
               augment: dict[str, Any] | None = None, precision: str = "auto", channels_last: str = "auto") -> dict:
    data: dict[str, Any] = {"name": "fashion_mnist", "batch_size": 128}
    if augment:
        data["augment"] = dict(augment)
    if limit:  # a stratified subset of the training images (smoke runs)
        data["train_limit"] = limit
    if final:  # all 60,000 training images; the official test split scores
        data.update({"val": "fashion_mnist", "val_params": {"split": "test"}})
    else:  # tuning: a validation split cut from the training set
        data.update({"val_fraction": 0.1, "split_seed": 0})
    r: dict[str, Any] = {"name": name, "seed": seed, "output_dir": str(out), "data": data,
                         "student": STUDENTS[student], "terms": terms,
                         "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0005},
                         "schedule": {"name": "onecycle"}, "epochs": epochs, "threads": threads,
                         # the student policy: bf16 / channels-last only where they measure faster and agree with fp32
                         # (it keeps fp32 for the MLP; the run's student_policy.json says why)
                         "precision": precision, "channels_last": channels_last}
    if teacher is not None:
        r["teachers"] = [{**teacher_spec(teacher), "checkpoint": str(teacher)}]
        if store is None:  # an online teacher: the teacher policy picks its fastest mode that agrees with fp32
            r["teacher_policy"] = {"precision": precision if precision == "auto" else "fp32",
                                   "channels_last": channels_last}
    if store is not None:
        r["soft_labels"] = str(store)
    return r


def teacher_spec(teacher: Path) -> dict[str, Any]:
    """The teacher's model spec, read from its run's config.yaml (any teacher recipe's run works)."""
    spec = yaml.safe_load((teacher / "config.yaml").read_text())["student"]
    return {"name": spec["name"], "params": spec.get("params") or {}}


def build_store(out: Path, teacher: Path, threads: int, final: bool, limit: int | None = None) -> Path:
    """The teacher's logits on the training images of the final runs (all 60,000) or of the tuning runs (54,000), once
    each (k = 10 = all classes, 1 view, no augmentation). A store belongs to one split, so there are two."""
    from kdkit.recipe import recipe_from_dict
    from kdkit.softlabels.cache import build_cache

    path = out / ("softlabels_final" if final else "softlabels_tune")
    if (path / "manifest.json").is_file():
        write_store_softness(path, out / f"softlabels_{'final' if final else 'tune'}.json")
        return path
    r = recipe_for("store", out, "mlp", _kd(4.0, 0.9), 0, 1, final, teacher, None, threads, limit)
    r["soft_labels"] = str(path)
    build_cache(recipe_from_dict(r), views=1, topk=10, quiet=True)
    write_store_softness(path, out / f"softlabels_{'final' if final else 'tune'}.json")
    return path


def view_store_path(out: Path, final: bool, views: int, seed: int, augment: dict[str, Any]) -> Path:
    """Where the multi-view store of one split, seed and augmentation lives: the flip + mixup stores of ``fm`` keep
    their first name; any other augmentation is named by its keys, so two methods never read each other's views."""
    tag = "" if augment == STORE_AUGMENT["fm"] else "_" + "_".join(sorted(augment))
    return out / f"softlabels_{'final' if final else 'tune'}{tag}_views{views}_s{seed}"


def build_view_store(out: Path, teacher: Path, threads: int, final: bool, seed: int, augment: dict[str, Any],
                     views: int, limit: int | None = None) -> Path:
    """The teacher's logits on ``views`` augmented views (e.g. flip + mixup) of every training image of one split, for
    the runs with seed ``seed`` (the augmentation is a pure function of (seed, view, image), so a store serves one
    seed): V teacher passes, once; a student epoch e then reads view e mod V."""
    from kdkit.recipe import recipe_from_dict
    from kdkit.softlabels.cache import build_cache

    path = view_store_path(out, final, views, seed, augment)
    if (path / "manifest.json").is_file():
        return path
    r = recipe_for("store_views", out, "mlp", _kd(1.0, 1.0), seed, 1, final, teacher, None, threads, limit,
                   augment=augment)
    r["soft_labels"] = str(path)
    build_cache(recipe_from_dict(r), views=views, topk=10, batch_size=512, quiet=True)
    return path


def build_fold_store(out: Path, teachers: list[Path], combine: str, threads: int, final: bool,
                     limit: int | None = None) -> Path:
    """A store of soft labels from several teachers trained on different parts of the training images
    (:func:`kdkit.softlabels.crossfit.cross_fit`, what ``kdkit cache RECIPE --cross-fit RUN --cross-fit RUN`` does):
    ``combine="oof"`` gives each image the mean probability of the teacher(s) that never trained on it (an image no
    teacher trained on -- the 6,000 validation images, in the final runs' training set -- the mean of all);
    ``combine="mean"`` gives every image the mean probability of all the teachers (an ensemble; at T = 1 KD on it
    equals multi-teacher KD that averages probabilities; at T > 1 the temperature divides the log of the mean, not
    each teacher's logits). Beside the store, ``softlabels_{tune,final}.json`` records how soft its targets are."""

    from kdkit.recipe import recipe_from_dict
    from kdkit.softlabels.crossfit import cross_fit

    tag = "final" if final else "tune"
    path = out / f"softlabels_{tag}"
    if not (path / "manifest.json").is_file():
        r = recipe_for(f"store_{combine}", out, "mlp", _kd(4.0, 0.9), 0, 1, final, None, path, threads, limit)
        cross_fit(recipe_from_dict(r), teachers, combine=combine, topk=10, quiet=True)
    write_store_softness(path, out / f"softlabels_{tag}.json", combine=combine)
    return path


def write_store_softness(path: Path, info: Path, **extra: Any) -> dict[str, Any]:
    """How soft a store's targets are (at T = 1), written once to ``info`` beside it: the share of images whose teacher
    argmax is the label, the entropy of the teacher's distribution (median and mean, nats), the mean top probability,
    and the mean entropy of the distribution over the K - 1 classes other than the argmax, renormalised (log(K - 1)
    when the teacher spreads its remaining mass evenly: the "dark knowledge" carries no class relations then)."""
    import math

    import numpy as np
    import torch

    from kdkit.softlabels.store import SoftLabelStore

    if info.is_file():
        return json.loads(info.read_text())
    st = SoftLabelStore.open(path)
    p = torch.softmax(st.teacher_logits(torch.arange(st.num_samples), 0).double(), dim=1)
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum(1)
    rest = p.scatter(1, p.argmax(1, keepdim=True), 0.0)
    rest = rest / rest.sum(1, keepdim=True).clamp_min(1e-300)
    ent_rest = -(rest * torch.log(rest.clamp_min(1e-300))).sum(1)
    src = st.manifest.get("source", {})
    if "label_agreement" in src:
        agreement = src["label_agreement"]
    else:  # a store cached from one teacher records its rows' dataset indices; the labels are the training set's
        from kdkit.data.sources import fashion_mnist

        rows = torch.from_numpy(np.load(path / "samples.npy"))
        agreement = 100.0 * float((p.argmax(1) == fashion_mnist().targets[rows]).double().mean())
    stats = {**extra, "teachers": src.get("teachers"), "num_samples": st.num_samples, "label_agreement": agreement,
             "entropy_median_nats": float(ent.median()), "entropy_mean_nats": float(ent.mean()),
             "top_prob_mean": float(p.max(1).values.mean()),
             "other_class_entropy_mean_nats": float(ent_rest.mean()),
             "other_class_entropy_uniform_nats": math.log(p.shape[1] - 1)}
    info.write_text(json.dumps(stats, indent=1))
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=None, help="a trained teacher run dir (default: train "
                    "recipes/fashion/fashion_teacher.yaml into OUT/teacher first, unless no method reads a teacher)")
    ap.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    ap.add_argument("--methods", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--tune-seeds", type=int, nargs="+", default=[0],
                    help="seeds of the tuning runs; a variant's validation score is their mean (one seed on 6,000 "
                    "images cannot separate variants < ~0.3 points apart)")
    ap.add_argument("--tune-epochs", type=int, default=None,
                    help="epochs of the tuning runs (default: --epochs; a shorter tuning budget is a CPU saving, said "
                    "in the output)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on a shared CPU)")
    ap.add_argument("--no-tune", action="store_true", help="skip tuning: use each grid's first variant")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="tune only these grid variants (to spread a grid over processes; use with --tune-only)")
    ap.add_argument("--tune-only", action="store_true", help="stop after the tuning runs (no final runs)")
    ap.add_argument("--tune-single", action="store_true",
                    help="also run the validation split for one-variant grids (scratch: nothing to choose, but its "
                    "validation score says which budget to pick when budgets are compared on validation)")
    ap.add_argument("--choose", nargs="+", default=[], metavar="[STUDENT.]METHOD=VARIANT",
                    help="skip tuning METHOD (for every student, or only STUDENT's) and use VARIANT (e.g. the variant "
                    "another student's tuning chose; the output marks the row 'chosen: given')")
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: report the finished runs under --out (rows with the seeds that finished)")
    ap.add_argument("--precision", default="auto", choices=["auto", "no", "bf16"],
                    help="the students' precision (auto: the student policy measures and picks; no = fp32)")
    ap.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"],
                    help="the students' memory format (auto: the student policy measures and picks)")
    ap.add_argument("--fold-teachers", nargs="+", default=None, metavar="RUN_DIR",
                    help="instead of --teacher: teacher runs trained on different parts of the training images; the "
                    "logit terms read a store built from them (see --fold-combine); logit terms only")
    ap.add_argument("--fold-combine", default="oof", choices=["oof", "mean"],
                    help="oof: each image's target from the teacher(s) that never trained on it (cross-fitting); "
                    "mean: every image's target is the mean probability of all the teachers (an ensemble)")
    ap.add_argument("--out", default="bench_runs/fashion")
    ap.add_argument("--fm-views", type=int, default=8,
                    help="views per training image in the stores of the store-augmented methods (fm, kd_crop_views): "
                    "epoch e reads view e mod V")
    ap.add_argument("--teacher-epochs", type=int, default=None,
                    help="epochs of the teacher trained when --teacher is not given (default: the recipe's)")
    ap.add_argument("--train-limit", type=int, default=None,
                    help="train every run on a stratified subset of N training images (smoke runs)")
    args = ap.parse_args()
    out = Path(args.out)
    folds = [Path(t) for t in args.fold_teachers] if args.fold_teachers else None
    if folds and (args.teacher or set(args.methods) & (FEATURE | set(AUGMENT) | set(STORE_AUGMENT))):
        raise SystemExit("--fold-teachers: give no --teacher, and logit methods only (the teachers are read from a "
                         "store of their combined logits)")
    if args.fm_views < 1:
        raise SystemExit(f"--fm-views must be >= 1 (views per training image), got {args.fm_views}")
    if folds or set(args.methods) <= NO_TEACHER:  # no method reads a teacher: none is trained
        teacher = None
    elif args.teacher:
        teacher = Path(args.teacher)
    else:
        teacher = out / "teacher"
        t = yaml.safe_load((ROOT / "recipes" / "fashion" / "fashion_teacher.yaml").read_text())
        if args.teacher_epochs:
            t["epochs"] = args.teacher_epochs
        if args.train_limit:
            t["data"]["train_limit"] = args.train_limit
        # --collect trains nothing, a teacher included: it reads back OUT/teacher if it is there
        run_one({**t, "output_dir": str(out), "name": "teacher"}, teacher, args.collect)
    tsum = json.loads((teacher / "summary.json").read_text()) \
        if teacher is not None and (teacher / "summary.json").is_file() else {}
    stores: dict[bool, Path] = {}

    def store(final: bool, method: str = "", seed: int = 0) -> Path:
        if method in STORE_AUGMENT:  # a multi-view store per split and seed
            if args.collect:
                return view_store_path(out, final, args.fm_views, seed, STORE_AUGMENT[method])
            return build_view_store(out, teacher, args.threads, final, seed, STORE_AUGMENT[method], args.fm_views,
                                    args.train_limit)
        if args.collect:  # nothing is trained, so no store is built
            return out / ("softlabels_final" if final else "softlabels_tune")
        if final not in stores:
            stores[final] = build_fold_store(out, folds, args.fold_combine, args.threads, final, args.train_limit) \
                if folds else build_store(out, teacher, args.threads, final, args.train_limit)
        return stores[final]

    rows = []
    tune_epochs = args.tune_epochs or args.epochs
    for student in args.students:
        for method in args.methods:
            if method in FEATURE and STUDENTS[student]["name"] == "mlp":
                continue  # an MLP has no feature maps to match
            needs_teacher = method not in NO_TEACHER
            use_store = needs_teacher and method not in FEATURE and method not in AUGMENT
            cl = {"auto": "auto", "true": True, "false": False}[args.channels_last]
            augment = AUGMENT.get(method) or STORE_AUGMENT.get(method)
            opts = {"augment": augment, "precision": args.precision, "channels_last": cl}
            grid = GRIDS[method]
            tuned: dict[str, float] = {}  # variant -> mean last-epoch validation top-1 over the tuning seeds
            tuned_seeds: dict[str, dict[int, float]] = {}
            chosen_by_hand = dict(c.split("=", 1) for c in args.choose)
            given = chosen_by_hand.get(f"{student}.{method}", chosen_by_hand.get(method))
            if given is not None and given not in grid and given not in EXTRA.get(method, {}):
                raise SystemExit(f"--choose {method}={given}: no such variant; the grid has "
                                 f"{', '.join([*grid, *EXTRA.get(method, {})])}")
            if (len(grid) > 1 or args.tune_single) and not args.no_tune and given is None:
                for variant, terms in grid.items():
                    scores = {}
                    for tseed in args.tune_seeds:  # seed 0 keeps the name of the one-seed protocol's runs
                        name = f"tune_{student}_{method}_{variant}" if tune_epochs == args.epochs else \
                            f"tune_e{tune_epochs}_{student}_{method}_{variant}"
                        name += f"_ts{tseed}" if tseed else ""
                        if args.variants and variant not in args.variants and not (out / name / "bench.json").is_file():
                            continue
                        rec = recipe_for(name, out, student, terms, tseed, tune_epochs, False,
                                         teacher if needs_teacher else None,
                                         store(False, method, tseed) if use_store else None,
                                         args.threads, args.train_limit, **opts)
                        res = run_one(rec, out / name, args.collect)
                        if res is not None:
                            scores[tseed] = res["last"]
                    if len(scores) < len(args.tune_seeds):
                        continue  # a variant is scored only when all its tuning seeds have finished
                    tuned[variant] = statistics.mean(scores.values())
                    tuned_seeds[variant] = scores
                    print(f"tune {student} {method} {variant}: val {tuned[variant]:.2f} (seeds {scores})",
                          file=sys.stderr, flush=True)
            if args.tune_only:
                continue
            chosen = given or (max(tuned, key=lambda v: tuned[v]) if tuned else next(iter(grid)))
            if args.collect and (len(grid) > 1 or args.tune_single) and not given and not args.no_tune \
                    and len(tuned) < len(grid):
                continue  # an unfinished tuning: no row
            results = []
            for seed in args.seeds:
                name = f"{student}_{method}_{chosen}_s{seed}"
                rec = recipe_for(name, out, student, {**grid, **EXTRA.get(method, {})}[chosen], seed, args.epochs, True,
                                 teacher if needs_teacher else None, store(True, method, seed) if use_store else None,
                                 args.threads,
                                 args.train_limit, **opts)
                res = run_one(rec, out / name, args.collect)
                if res is None:
                    continue
                results.append({**res, "seed": seed, "train_last": last_train_top1(out / name)})
                print(f"final {student} {method} {chosen} seed {seed}: {results[-1]}", file=sys.stderr, flush=True)

            if not results:
                continue

            def ms(key: str, results: list[dict] = results) -> tuple[float, float]:
                v = [r[key] for r in results]
                return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

            (bm, bs), (lm, ls) = ms("best"), ms("last")
            rows.append({"student": student, "method": method, "variant": chosen, "tuning_val_top1": tuned,
                         "tuning_val_top1_by_seed": tuned_seeds if len(args.tune_seeds) > 1 else None,
                         "chosen": "given" if given else ("validation" if tuned else "grid's first"),
                         "augment": augment, "views": args.fm_views if method in STORE_AUGMENT else None,
                         "runs": [{k: r[k] for k in ("seed", "last", "best", "train_last")} for r in results],
                         "best_mean": bm, "best_std": bs, "last_mean": lm, "last_std": ls, "seeds": len(results),
                         "teacher_signal": "store" if use_store else ("online" if needs_teacher else "none"),
                         "images_per_s": statistics.median(r["images_per_s"] for r in results)})
    print(json.dumps({"benchmark": "fashion_methods", "epochs": args.epochs, "tune_epochs": tune_epochs,
                      "tune_seeds": args.tune_seeds,
                      "seeds": args.seeds, "precision": args.precision, "channels_last": args.channels_last,
                      "train_limit": args.train_limit,
                      "teacher": {"run": str(teacher), "best_top1": tsum.get("best", {}).get("top1"),
                                  "last_top1": tsum.get("last", {}).get("val_top1")},
                      "fold_teachers": None if not folds else
                      {"runs": [str(t) for t in folds], "combine": args.fold_combine,
                       "stores": {k: json.loads((out / f"softlabels_{k}.json").read_text())
                                  for k in ("tune", "final") if (out / f"softlabels_{k}.json").is_file()}},
                      "cpu": cpu_info(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
