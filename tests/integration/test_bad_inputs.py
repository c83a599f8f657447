"""The standing bad-input suite (issue 14): one row per hostile input, run through the real ``kdkit`` entry point.

Every row asserts: exit code 2, exactly one line on stderr that starts with ``error:`` and holds the expected
fragment (what, where, the fix), no traceback, and nothing written or corrupted (the row's ``check``). Rows cover every
recipe field family (YAML, top level, data, models, terms, scheme, optim/schedule, precision/device, output, resume,
soft labels, weights) and every case the issue lists. ``test_table_size`` keeps the count honest.

The CLI runs in-process (``kdkit.cli.main`` with a patched ``sys.argv``), so the whole table costs seconds.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kdkit import cli
from kdkit.runs import RunLock

BASE = """\
name: base
seed: 0
output_dir: {out}
data: {{name: mnist_5k, val_fraction: 0.2, batch_size: 128, train_limit: 300}}
student: {{name: mlp, params: {{hidden: [16]}}}}
terms: [{{name: ce}}]
optim: {{name: adamw, lr: 0.003}}
epochs: 1
threads: 1
"""

KD = """\
name: kd
seed: 0
output_dir: {out}
data: {{name: mnist_5k, val_fraction: 0.2, batch_size: 128, train_limit: 300}}
student: {{name: mlp, params: {{hidden: [16]}}}}
teachers: [{{name: mlp, params: {{hidden: [32]}}}}]
terms: [{{name: ce, weight: 0.5}}, {{name: kd, weight: 0.5, params: {{temperature: 4.0}}}}]
optim: {{name: adamw, lr: 0.003}}
epochs: 1
threads: 1
"""


def invoke(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["kdkit", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr()
    code = exc.value.code
    return (0 if code is None else int(code)), out.out, out.err


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its SHA-256 (so a row can assert nothing changed)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".kdkit.lock"}


@dataclass
class World:
    """Shared artefacts of the table: a finished run, a soft-label store; and a per-row scratch directory."""

    root: Path
    run_recipe: Path
    run_dir: Path
    kd_recipe: Path
    store: Path
    tmp: Path = field(default_factory=Path)

    def recipe(self, text: str | None = None, name: str = "r.yaml", **subs: str) -> Path:
        p = self.tmp / name
        p.write_text((text or BASE).format(out=self.tmp / "runs", **subs))
        return p


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    out = root / "shared"
    run_recipe = root / "base.yaml"
    run_recipe.write_text(BASE.format(out=out) + "checkpoint_every_steps: 1\n")
    kd_recipe = root / "kd.yaml"
    kd_recipe.write_text(KD.format(out=out))
    mp = pytest.MonkeyPatch()
    try:
        for args in (["train", str(run_recipe), "-q"],
                     ["cache", str(kd_recipe), "--out", str(root / "store"), "--quiet"]):
            mp.setattr(sys, "argv", ["kdkit", *args])
            with pytest.raises(SystemExit) as exc:
                cli.main()
            assert exc.value.code in (0, None), args
    finally:
        mp.undo()
    return World(root, run_recipe, out / "base", kd_recipe, root / "store")


# ----------------------------------------------------------------------------------------------------------------------
# Setups: each takes the world (with a fresh world.tmp) and returns the kdkit arguments.


def recipe_with(extra: str, text: str | None = None) -> Callable[[World], list[str]]:
    return lambda w: ["train", str(w.recipe((text or BASE) + extra)), "-q"]


def recipe_raw(raw: str) -> Callable[[World], list[str]]:
    def setup(w: World) -> list[str]:
        p = w.tmp / "raw.yaml"
        p.write_text(raw)
        return ["train", str(p), "-q"]
    return setup


def with_set(*sets: str, cmd: str = "train") -> Callable[[World], list[str]]:
    def setup(w: World) -> list[str]:
        args = [cmd, str(w.recipe()), "-q"]
        for s in sets:
            args += ["--set", s]
        return args
    return setup


def alias_bomb(w: World) -> list[str]:
    # 9 levels of 9 aliases each: ~700 bytes that would expand to 9**9 values (the "memory exhausted at 9^8"),
    # hidden in a free-form dict field that passes schema validation
    levels = ['      a: &a ["x","x","x","x","x","x","x","x","x"]']
    prev = "a"
    for n in "bcdefghi":
        levels.append(f"      {n}: &{n} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = n
    text = BASE.format(out=w.tmp / "runs").replace(
        "data: {name: mnist_5k, val_fraction: 0.2, batch_size: 128, train_limit: 300}\n",
        "data:\n  name: mnist_5k\n  train_limit: 300\n  val_params:\n    bomb:\n" + "\n".join(levels) + "\n")
    p = w.tmp / "bomb.yaml"
    p.write_text(text)
    return ["train", str(p), "-q"]


def deep_nesting(w: World) -> list[str]:
    p = w.tmp / "deep.yaml"
    p.write_text(BASE.format(out=w.tmp / "runs") + "stages: " + "[" * 3000 + "]" * 3000 + "\n")
    return ["train", str(p), "-q"]


def huge_file(w: World) -> list[str]:
    p = w.tmp / "huge.yaml"
    p.write_text(BASE.format(out=w.tmp / "runs") + "# " + "x" * (1 << 21) + "\n")
    return ["train", str(p), "-q"]


def python_tag(w: World) -> list[str]:
    marker = w.tmp / "pwned"
    p = w.tmp / "tag.yaml"
    p.write_text(BASE.format(out=w.tmp / "runs") + f"extra: !!python/object/apply:os.system ['touch {marker}']\n")
    return ["train", str(p), "-q"]


def npz_file(kind: str) -> Callable[[World], list[str]]:
    def setup(w: World) -> list[str]:
        f = w.tmp / f"{kind}.npz"
        if kind == "empty":
            np.savez(f)
        elif kind == "zero":
            np.savez(f, x=np.zeros((0, 8, 8), np.uint8), y=np.zeros((0,), np.int64))
        else:  # one class
            np.savez(f, x=np.random.default_rng(0).integers(0, 255, (60, 8, 8), dtype=np.uint8),
                     y=np.full((60,), 3, np.int64))
        return ["train", str(w.recipe()), "-q", "--set", f"data.name=npz:{f}", "--set", "data.train_limit=null"]
    return setup


def teacher_checkpoint(kind: str) -> Callable[[World], list[str]]:
    def setup(w: World) -> list[str]:
        from kdkit.models.factory import create_model

        f = w.tmp / ("t.pt" if kind == "pickle" else "t.safetensors")
        if kind == "nan":
            sd = {k: v.clone() for k, v in create_model("mlp", num_classes=10, in_channels=1, image_size=28,
                                                       hidden=[32]).state_dict().items()}
            first = next(k for k, v in sd.items() if v.is_floating_point())
            sd[first][0] = float("nan")
            save_file(sd, str(f))
        elif kind == "pickle":
            class Evil:
                def __reduce__(self):
                    return (os.system, (f"touch {w.tmp / 'pwned'}",))
            torch.save({"state_dict": Evil()}, f)
        elif kind == "garbage":
            f.write_bytes(b"not a safetensors file at all")
        text = KD.replace("teachers: [{{name: mlp, params: {{hidden: [32]}}}}]",
                          f"teachers: [{{{{name: mlp, params: {{{{hidden: [32]}}}}, checkpoint: '{f}'}}}}]")
        return ["distill", str(w.recipe(text)), "-q"]
    return setup


def nan_teacher(w: World) -> list[str]:
    (w.tmp / "nanteacher_mod.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class NanNet(nn.Module):\n"
        "    def __init__(self, num_classes=10, **kw):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(1, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1)[:, :1]) * float('nan')\n")
    text = KD.replace("teachers: [{{name: mlp, params: {{hidden: [32]}}}}]",
                      "teachers: [{{name: 'py:nanteacher_mod:NanNet'}}]")
    return ["distill", str(w.recipe(text)), "-q"]


def run_copy(w: World) -> Path:
    """A copy of the finished shared run under world.tmp, with its recipe pointing there."""
    import shutil

    dst = w.tmp / "runs" / "base"
    shutil.copytree(w.run_dir, dst)
    (w.tmp / "base.yaml").write_text(w.run_recipe.read_text().replace(str(w.run_dir.parent), str(w.tmp / "runs")))
    return dst


def existing_run(w: World) -> list[str]:
    run_copy(w)
    return ["train", str(w.tmp / "base.yaml"), "-q"]


def corrupt_state(w: World) -> list[str]:
    import json

    d = run_copy(w)
    (d / "checkpoints" / "latest.json").unlink()
    for s in (d / "checkpoints").glob("step-*/state.json"):
        state = json.loads(s.read_text())
        del state["history"]
        s.write_text(json.dumps(state))
    return ["train", str(w.tmp / "base.yaml"), "-q", "--resume"]


def resume_other_recipe(w: World) -> list[str]:
    run_copy(w)
    return ["train", str(w.tmp / "base.yaml"), "-q", "--resume", "--set", "optim.lr=0.01"]


def locked_run(w: World) -> list[str]:
    d = w.tmp / "runs" / "base"
    d.mkdir(parents=True)
    w.held_lock = RunLock(d).acquire()  # type: ignore[attr-defined]  # released by the test
    return ["train", str(w.recipe(BASE.replace("name: base", "name: base"))), "-q"]


def output_under_file(w: World) -> list[str]:
    (w.tmp / "afile").write_text("x")
    return ["train", str(w.recipe()), "-q", "--set", f"output_dir={w.tmp / 'afile'}"]


def damaged_store(kind: str) -> Callable[[World], list[str]]:
    def setup(w: World) -> list[str]:
        import shutil

        store = w.tmp / "store"
        shutil.copytree(w.store, store)
        if kind == "truncated":
            f = store / "values.npy"
            f.write_bytes(f.read_bytes()[:-100])
        elif kind == "index":
            arr = np.load(store / "indices.npy", mmap_mode="r+")
            arr[0, 5, 0] = 99
            arr.flush()
            del arr
        elif kind == "nan":
            arr = np.load(store / "values.npy", mmap_mode="r+")
            arr[0, 7, 0] = np.nan
            arr.flush()
            del arr
        elif kind == "incomplete":
            import json

            m = json.loads((store / "manifest.json").read_text())
            m["complete"] = False
            (store / "manifest.json").write_text(json.dumps(m))
        elif kind == "not_a_store":
            shutil.rmtree(store)
            store.mkdir()
        return ["distill", str(w.recipe(KD + f"soft_labels: '{store}'\n")), "-q"]
    return setup


def eval_garbage(w: World) -> list[str]:
    f = w.tmp / "w.safetensors"
    f.write_bytes(b"\x00" * 64)
    return ["eval", str(f)]


# ----------------------------------------------------------------------------------------------------------------------
# The table: (id, setup, expected fragment of the one line)

CASES: list[tuple[str, Callable[[World], list[str]], str]] = [
    # YAML
    ("yaml-syntax", recipe_raw("name: [unclosed\n"), "not valid YAML"),
    ("yaml-alias-bomb", alias_bomb, "alias bomb"),
    ("yaml-deep-nesting", deep_nesting, "nesting deeper than 64"),
    ("yaml-recursive-alias", recipe_raw("name: &a [*a]\n"), "alias"),
    ("yaml-too-large", huge_file, "larger than 1024 kB"),
    ("yaml-python-tag", python_tag, "not valid YAML"),
    ("yaml-not-a-mapping", recipe_raw("- a\n- b\n"), "expected a mapping at the top level"),
    ("recipe-not-found", lambda w: ["train", str(w.tmp / "missing.yaml")], "not found"),
    # top level
    ("unknown-top-key", recipe_with("lerning_rate: 0.1\n"), "field 'lerning_rate': unknown key"),
    ("missing-student", recipe_raw("name: x\nepochs: 1\n"), "field 'student': required field is missing"),
    ("epochs-zero", with_set("epochs=0"), "field 'epochs'"),
    ("seed-not-int", with_set("seed=abc"), "field 'seed'"),
    ("nan-anywhere", with_set("scheme.params.temperature=.nan"), "every number in a recipe must be finite"),
    # overrides
    ("set-into-scalar", with_set("seed.x=1"), "'seed' holds a single value"),
    ("set-into-string", with_set("data.name.x=1"), "'data.name' holds a single value"),
    ("set-no-equals", with_set("optim.lr"), "must look like key.path=value"),
    ("set-bad-index", with_set("terms.5.weight=1"), "is not an index of a list"),
    # data
    ("data-unknown", with_set("data.name=nosuchdata"), "nosuchdata"),
    ("data-val-fraction", with_set("data.val_fraction=1.5"), "field 'data.val_fraction'"),
    ("data-train-limit-1", with_set("data.train_limit=1"), "data.train_limit: 1 is fewer than the 10 classes"),
    ("data-npz-no-arrays", npz_file("empty"), "needs an input array named x or images"),
    ("data-npz-zero-samples", npz_file("zero"), "holds no samples"),
    ("data-one-class", npz_file("one"), "every labelled sample has class 3"),
    ("data-batch-size-0", with_set("data.batch_size=0"), "field 'data.batch_size'"),
    # models and weights
    ("model-unknown", with_set("student.name=resnet9000"), "resnet9000"),
    ("teacher-nan-weights", teacher_checkpoint("nan"), "non-finite value(s)"),
    ("teacher-malicious-pickle", teacher_checkpoint("pickle"), "weights_only loading refuses"),
    ("teacher-garbage-file", teacher_checkpoint("garbage"), "not a readable safetensors file"),
    ("teacher-missing-file", lambda w: ["distill", str(w.recipe(KD.replace(
        "teachers: [{{name: mlp, params: {{hidden: [32]}}}}]",
        "teachers: [{{name: mlp, checkpoint: /nonexistent/t.safetensors}}]"))), "-q"], "not found"),
    ("teacher-nan-outputs", nan_teacher, "the teacher outputs hold"),
    ("eval-garbage-weights", eval_garbage, "not a readable safetensors file"),
    # terms
    ("term-unknown", with_set("terms.0.name=nosuchloss"), "nosuchloss"),
    ("term-negative-weight", with_set("terms.0.weight=-1"), "negative weight trains the student away"),
    ("term-bad-param", with_set("terms.0.params={tempreture: 4}"), "allowed params"),
    ("term-nan-temperature", recipe_with("", KD.replace("temperature: 4.0", "temperature: .nan")),
     "every number in a recipe must be finite"),
    ("term-duplicate", with_set("terms.1={name: ce}"), "appear twice"),
    # scheme, optimiser, schedule
    ("scheme-unknown", with_set("scheme.name=nosuchscheme"), "nosuchscheme"),
    ("optim-unknown", with_set("optim.name=lion"), "field 'optim.name'"),
    ("optim-negative-lr", with_set("optim.lr=-0.1"), "field 'optim.lr'"),
    ("schedule-unknown", with_set("schedule.name=wavy"), "field 'schedule.name'"),
    # precision and device
    ("precision-fp16-cpu", with_set("precision=fp16", "device=cpu"), "fp16 needs a CUDA GPU"),
    ("device-cuda-missing", with_set("device=cuda"), "cuda requested but no GPU"),
    # output and run directory
    ("output-under-a-file", output_under_file, "cannot create run directory"),
    ("run-dir-holds-run", existing_run, "already holds a run; pass --resume"),
    ("run-dir-locked", locked_run, "is in use by another kdkit process"),
    ("resume-corrupt-state", corrupt_state, "has a state.json without history"),
    ("resume-other-recipe", resume_other_recipe, "the recipe differs from the one saved in"),
    # soft-label store
    ("store-truncated-array", damaged_store("truncated"), "values.npy is damaged"),
    ("store-class-index", damaged_store("index"), "outside 0..9"),
    ("store-nan-values", damaged_store("nan"), "non-finite teacher logit"),
    ("store-incomplete", damaged_store("incomplete"), "is incomplete"),
    ("store-not-a-store", damaged_store("not_a_store"), "is not a soft-label store"),
]


@pytest.mark.parametrize("case_id,setup,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(case_id, setup, fragment, world, tmp_path, capsys, monkeypatch):
    world.tmp = tmp_path
    monkeypatch.chdir(tmp_path)  # `py:` models are found in the working directory
    args = setup(world)
    before_shared = tree_digest(world.root / "shared")
    before_tmp = {k: v for k, v in tree_digest(tmp_path).items()}
    try:
        code, out, err = invoke(args, capsys, monkeypatch)
    finally:
        lock = getattr(world, "held_lock", None)
        if lock is not None:
            lock.release()
            world.held_lock = None
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, (case_id, code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error:"), (case_id, err[-2000:])
    assert "Traceback" not in err
    assert fragment in lines[0], (case_id, lines[0])
    if os.environ.get("KDKIT_SHOW_BAD_INPUTS"):
        sys.__stderr__.write(f"{case_id}: {lines[0]}\n")
    # nothing written or corrupted: the shared run is untouched, no run directory appeared (a refused run leaves no
    # trace unless the row's input is itself a run directory), every pre-existing file is byte-identical
    assert tree_digest(world.root / "shared") == before_shared
    after_tmp = tree_digest(tmp_path)
    changed = [k for k, v in before_tmp.items() if after_tmp.get(k) != v]
    assert not changed, (case_id, changed)
    new_ckpts = [k for k in after_tmp if k not in before_tmp and ("checkpoints" in k or k.endswith(".safetensors"))]
    assert not new_ckpts, (case_id, new_ckpts)
    assert not (tmp_path / "pwned").exists(), "a YAML tag or pickle ran code"


def test_table_size():
    # the issue measured 107 hostile inputs by hand; this table keeps the ones that exercise distinct code paths
    assert len(CASES) >= 50
    assert len({c[0] for c in CASES}) == len(CASES)
