"""The published-table recipes (recipes/cifar100/) run two training steps on a small CIFAR-100-format directory.

The directory is written here in the official python-pickle layout (train/test/meta, byte-string keys). Teachers are
randomly initialised (no checkpoint): the point is that every recipe builds — models, taps, automatic stage pairing,
connectors, memory banks — and trains. The default suite runs every method on two pairs (one same-family, one
cross-architecture); all 42 recipes run under `-m slow`.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

import kdkit
from kdkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.name for p in (ROOT / "recipes" / "cifar100").glob("*.yaml") if not p.name.startswith("teacher_"))
FAST_PAIRS = ("resnet56_resnet20", "vgg13_mobilenetv2")


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar") / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 128), ("test", 32)):
        fine = [int(v) for v in rng.integers(0, 100, n)]
        obj = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": fine,
               b"coarse_labels": [f // 5 for f in fine], b"filenames": [f"{i}.png".encode() for i in range(n)]}
        (root / split).write_bytes(pickle.dumps(obj, protocol=2))
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    (root / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def test_recipes_are_generated_from_the_script():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_cifar100_recipes as gen
    finally:
        sys.path.pop(0)
    files = gen.all_files()
    assert len(files) == 46
    for name, text in files.items():
        assert (ROOT / "recipes" / "cifar100" / name).read_text() == text, f"{name} is stale; rerun the script"


def _two_steps(name: str, cifar100_dir: Path, out: Path) -> None:
    r = load_recipe(ROOT / "recipes" / "cifar100" / name, [
        f"data.name=cifar100:{cifar100_dir}", f"data.val=cifar100:{cifar100_dir}", "teachers.0.checkpoint=null",
        f"output_dir={out}", "epochs=1"])
    assert r.epochs == 1 and r.data.batch_size == 64 and r.optim.momentum == 0.9
    res = kdkit.distill(r, quiet=True)
    hist = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 1 and np.isfinite(hist[0]["train_loss"])
    for t in r.terms:
        assert f"train_{t.log_name}" in hist[0]
    state = json.loads((res.run_dir / "checkpoints" / "latest.json").read_text())
    assert state["dir"] == "step-00000002"  # 128 samples / batch 64


@pytest.mark.parametrize("name", [n for n in RECIPES if n.split("_", 1)[1].removesuffix(".yaml") in FAST_PAIRS])
def test_recipe_two_steps(name, cifar100_dir, tmp_path):
    _two_steps(name, cifar100_dir, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_two_steps(name, cifar100_dir, tmp_path):
    _two_steps(name, cifar100_dir, tmp_path)


# RepDistiller's released teachers (save/models/<name>_vanilla/ckpt_epoch_240.pth): {"epoch", "model", "accuracy",
# "optimizer"}, saved by PyTorch 0.4 (no BatchNorm num_batches_tracked); VGG's classifier is named `classifier`.
RELEASED = {"resnet32x4": ("resnet8x4", "fc.", 79.42), "wrn_40_2": ("wrn_16_2", "fc.", 75.61),
            "resnet56": ("resnet20", "fc.", 72.34), "vgg13": ("vgg8", "classifier.", 74.64)}


@pytest.mark.parametrize("teacher", sorted(RELEASED))
def test_released_teacher_checkpoint_loads_through_the_table_recipe(teacher, cifar100_dir, tmp_path):
    import torch

    from kdkit.builder import build_context
    from kdkit.data.run import build_data
    from kdkit.models import create_model

    student, head, top1 = RELEASED[teacher]
    torch.manual_seed(0)
    src = create_model(teacher, num_classes=100, in_channels=3).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a BN buffer left unloaded shows
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    legacy = {(head + k[3:] if k.startswith("fc.") else k): v for k, v in src.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    path = tmp_path / "save" / "models" / f"{teacher}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 240, "model": legacy, "accuracy": torch.tensor(top1),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005, "momentum": 0.9, "params": [0, 1]}]}},
               path)
    recipe_file = ROOT / "recipes" / "cifar100" / f"kd_{teacher}_{student}.yaml"
    assert f"{teacher}_vanilla/ckpt_epoch_240.pth" in recipe_file.read_text()  # the recipe names its teacher
    assert f"{top1}% top-1" in recipe_file.read_text()
    r = load_recipe(recipe_file, [f"data.name=cifar100:{cifar100_dir}", f"data.val=cifar100:{cifar100_dir}",
                                  f"teachers.0.checkpoint={path}", f"output_dir={tmp_path}"])
    loaded = build_context(r, build_data(r)).make_model(r.teachers[0]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)  # the very weights: bitwise equal outputs
