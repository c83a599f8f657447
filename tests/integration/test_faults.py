"""Faults (issue 14): what survives a crash, a full disk, a second writer and an unexpected exception.

The fast tests "kill" in-process: a ``BaseException`` raised at a chosen point inside the checkpoint writes (nothing in
the write path catches it, so the files on disk are what a kill leaves). The slow tests kill for real:
``fault_runner.py`` runs ``kdkit`` in a subprocess and leaves with ``os._exit`` (no cleanup, like ``kill -9``) at the
same points, a second real process meets the lock, and SIGKILL lands at random moments. Results are
compared bitwise (every tensor of ``last.safetensors`` and ``best.safetensors``, and every metric except timings) with
an uninterrupted run of the same recipe.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kdkit import cli
from kdkit.engine.checkpoint import CheckpointManager

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"
sys.path.insert(0, str(HERE))
import fault_runner  # noqa: E402


class Killed(BaseException):
    """An in-process kill: not an Exception, so no ``except Exception`` on the way up runs."""


def kill_in_process(recipe: Path, point: str, monkeypatch, capsys, *extra: str) -> None:
    def die():
        raise Killed(point)

    with monkeypatch.context() as m:
        fault_runner.install(*point.split(":")[:1], int(point.split(":")[1]), die=die, patch=m.setattr)
        m.setattr(sys, "argv", ["kdkit", "train", str(recipe), "-q", *extra])
        with pytest.raises(Killed):
            cli.main()
    capsys.readouterr()

RECIPE = """\
name: faults
seed: 0
output_dir: {out}
data: {{name: mnist_5k, val_fraction: 0.2, batch_size: 128, train_limit: 512, augment: {{crop_padding: 2}}}}
student: {{name: mlp, params: {{hidden: [32]}}}}
terms: [{{name: ce}}]
optim: {{name: sgd, lr: 0.05}}
schedule: {{name: cosine}}
epochs: 3
threads: 1
{extra}"""

TIMING = ("train_seconds", "images_per_s")


def write_recipe(d: Path, extra: str = "checkpoint_every_steps: 1\n") -> Path:
    p = d / "recipe.yaml"
    p.write_text(RECIPE.format(out=d / "runs", extra=extra))
    return p


def invoke(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["kdkit", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    code = exc.value.code
    return (0 if code is None else int(code)), capsys.readouterr().err


def run_killed(recipe: Path, kill_at: str | None, *extra: str, timeout: float = 300) -> int:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    if kill_at:
        env["KDKIT_KILL_AT"] = kill_at
    proc = subprocess.run([sys.executable, str(HERE / "fault_runner.py"), "train", str(recipe), "-q", *extra],
                          env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode


def outcome(run_dir: Path) -> dict:
    """What a finished run produced, minus wall-clock timings."""
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        for k in TIMING:
            m.pop(k, None)
    return {"last": load_file(str(run_dir / "last.safetensors")),
            "best": load_file(str(run_dir / "checkpoints" / "best.safetensors")), "metrics": metrics}


def assert_same(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    for key in ("last", "best"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


def train_uninterrupted(d: Path, recipe: Path) -> dict:
    """Train ``recipe`` in this process through the CLI, without a fault, and return its outcome."""
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(sys, "argv", ["kdkit", "train", str(recipe), "-q"])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code in (0, None)
    finally:
        mp.undo()
    return outcome(d / "runs" / "faults")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("reference")
    return train_uninterrupted(d, write_recipe(d))


# ----------------------------------------------------------------------------------------------------------------------
# Crashes at the worst moments


@pytest.mark.parametrize("then", ["--resume", "fresh"])
def test_crash_during_the_first_checkpoint_is_resumable_and_restartable(then, tmp_path, reference, monkeypatch,
                                                                        capsys):
    recipe = write_recipe(tmp_path)
    kill_in_process(recipe, "ckpt_files:1", monkeypatch, capsys)
    ckpt = tmp_path / "runs" / "faults" / "checkpoints"
    assert list(ckpt.glob(".step-*.tmp")) and not (ckpt / "latest.json").exists()  # the crash left a half state
    code, err = invoke(["train", str(recipe), "-q", *(["--resume"] if then == "--resume" else [])], monkeypatch,
                       capsys)
    assert code == 0, err
    assert not list(ckpt.glob("*.tmp"))  # stale temporaries cleaned
    assert_same(outcome(tmp_path / "runs" / "faults"), reference)


@pytest.mark.parametrize("then", ["--resume", "fresh"])
def test_kill_between_best_weights_and_latest_json_restarts(then, tmp_path, reference, monkeypatch, capsys):
    # without mid-epoch checkpoints the first state is written after best.safetensors: a kill in between used to leave
    # a directory that neither --resume ("no checkpoint") nor a fresh run ("already holds a run") accepted
    recipe = write_recipe(tmp_path, extra="")
    kill_in_process(recipe, "best:1", monkeypatch, capsys)
    ckpt = tmp_path / "runs" / "faults" / "checkpoints"
    assert (ckpt / "best.safetensors").exists() and not (ckpt / "latest.json").exists()
    code, err = invoke(["train", str(recipe), "-q", *(["--resume"] if then == "--resume" else [])], monkeypatch,
                       capsys)
    assert code == 0, err
    assert_same(outcome(tmp_path / "runs" / "faults"), reference)


def test_garbage_latest_json_falls_back_to_the_newest_complete_state(tmp_path, reference, monkeypatch, capsys):
    recipe = write_recipe(tmp_path)
    kill_in_process(recipe, "ckpt_latest:5", monkeypatch, capsys)
    (tmp_path / "runs" / "faults" / "checkpoints" / "latest.json").write_text("{garbage")
    code, err = invoke(["train", str(recipe), "-q", "--resume"], monkeypatch, capsys)
    assert code == 0, err
    assert_same(outcome(tmp_path / "runs" / "faults"), reference)


def test_full_disk_during_a_checkpoint_is_one_line_and_resumable(tmp_path, reference, monkeypatch, capsys):
    from kdkit.engine import checkpoint

    recipe = write_recipe(tmp_path)
    calls = {"n": 0}
    real = checkpoint.save_file

    def full_disk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    code, err = invoke(["train", str(recipe), "-q"], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0] and "--resume" in lines[0], err
    ckpt = CheckpointManager(tmp_path / "runs" / "faults")
    assert ckpt.latest() is not None and ckpt.latest().name == "step-00000003"  # the previous state is intact
    assert not list(ckpt.dir.glob("*.tmp"))
    monkeypatch.setattr(checkpoint, "save_file", real)
    code, err = invoke(["train", str(recipe), "-q", "--resume"], monkeypatch, capsys)
    assert code == 0, err
    assert_same(outcome(tmp_path / "runs" / "faults"), reference)


def test_full_disk_outside_checkpoints_is_one_line(tmp_path, monkeypatch, capsys):
    from kdkit.engine import loop

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(loop, "atomic_write_text", full)
    code, err = invoke(["train", str(write_recipe(tmp_path)), "-q"], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "metrics.jsonl" in lines[0] and "No space left" in lines[0], err


def test_unexpected_exception_prints_traceback_and_asks_for_a_report(tmp_path, monkeypatch, capsys):
    from kdkit import runs

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(runs, "build_scheme", boom)
    monkeypatch.setattr(sys, "argv", ["kdkit", "train", str(write_recipe(tmp_path)), "-q"])
    with pytest.raises(RuntimeError, match="boom"):  # re-raised: Python prints the traceback and exits 1
        cli.main()
    assert "this is a bug; please report it" in capsys.readouterr().err


def test_stale_temporaries_are_cleaned_and_the_lock_is_released(tmp_path, monkeypatch, capsys):
    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / "runs" / "faults"
    (run_dir / "checkpoints" / ".step-00000099.tmp").mkdir(parents=True)
    (run_dir / ".metrics.jsonl.x1y2.tmp").write_text("partial")
    code, err = invoke(["train", str(recipe), "-q"], monkeypatch, capsys)
    assert code == 0, err
    assert not list(run_dir.rglob("*.tmp"))
    from kdkit.runs import RunLock

    RunLock(run_dir).acquire().release()  # the finished run released its lock


@pytest.mark.slow
def test_second_writer_is_refused_while_the_first_runs(tmp_path):
    """Two real processes: the second gets one line and exit 2, the first finishes with its own weights."""
    recipe = write_recipe(tmp_path, extra="checkpoint_every_steps: 1\n")
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, str(HERE / "fault_runner.py"), "train", str(recipe), "-q",
                              "--set", "epochs=40"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "runs" / "faults" / ".kdkit.lock"
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run([sys.executable, str(HERE / "fault_runner.py"), "train", str(recipe), "-q",
                                 "--set", "epochs=40"], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another kdkit process" in lines[0], second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


# ----------------------------------------------------------------------------------------------------------------------
# Soft-label store and export


def _cache_recipe(d: Path) -> Path:
    p = d / "kd.yaml"
    p.write_text(RECIPE.format(out=d / "runs", extra="teachers: [{name: mlp, params: {hidden: [16]}}]\n")
                 .replace("terms: [{name: ce}]", "terms: [{name: kd}]"))
    return p


def test_store_left_by_an_interrupted_creation_is_replaced_without_overwrite(tmp_path, monkeypatch, capsys):
    store = tmp_path / "store"
    store.mkdir()
    np.save(store / "values.npy", np.zeros((1, 3, 2), np.float16))  # what an older kdkit left: arrays, no manifest
    (store / "progress.json").write_text('{"done": []}')
    code, err = invoke(["cache", str(_cache_recipe(tmp_path)), "--out", str(store), "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((store / "manifest.json").read_text())["complete"] is True


def test_store_creation_killed_before_its_manifest_leaves_nothing_in_the_way(tmp_path, monkeypatch, capsys):
    from kdkit.softlabels import store as store_mod

    real = store_mod.atomic_write_json

    def die_at_manifest(path, obj):
        if Path(path).name == "manifest.json":
            raise KeyboardInterrupt  # a kill: nothing below runs
        return real(path, obj)

    out = tmp_path / "store"
    monkeypatch.setattr(store_mod, "atomic_write_json", die_at_manifest)
    code, _ = invoke(["cache", str(_cache_recipe(tmp_path)), "--out", str(out), "--quiet"], monkeypatch, capsys)
    assert code == 130 and not out.exists()  # only the staging directory exists
    monkeypatch.setattr(store_mod, "atomic_write_json", real)
    code, err = invoke(["cache", str(_cache_recipe(tmp_path)), "--out", str(out), "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    assert not list(tmp_path.glob(".store.creating.tmp"))  # the staging directory was removed


def test_export_never_leaves_a_new_model_beside_an_old_int8_and_summary(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from kdkit.deploy import commands
    from kdkit.models.factory import create_model

    model = create_model("mlp", num_classes=10, in_channels=1, image_size=28, hidden=[16]).eval()
    out = tmp_path / "export"
    commands.export_command(model, (1, 28, 28), out, int8=True, calibration="dynamic")
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.int8.onnx", "export.json"}
    old_onnx = (out / "model.onnx").read_bytes()

    real = commands.os.replace
    calls = {"n": 0}

    def killed_after_first_move(src, dst):
        real(src, dst)
        calls["n"] += 1
        if Path(dst).parent == out and calls["n"] >= 1 and Path(dst).name == "model.onnx":
            raise KeyboardInterrupt

    torch.manual_seed(1)
    model2 = create_model("mlp", num_classes=10, in_channels=1, image_size=28, hidden=[16]).eval()
    monkeypatch.setattr(commands.os, "replace", killed_after_first_move)
    with pytest.raises(KeyboardInterrupt):
        commands.export_command(model2, (1, 28, 28), out, int8=False)
    monkeypatch.setattr(commands.os, "replace", real)
    names = {p.name for p in out.iterdir()}
    # a new model.onnx may be there, but never beside the old int8 model and summary
    assert "export.json" not in names and "model.int8.onnx" not in names
    assert (out / "model.onnx").read_bytes() != old_onnx
    # a complete re-export without --int8 leaves no stale int8 model either
    commands.export_command(model2, (1, 28, 28), out, int8=False)
    assert {p.name for p in out.iterdir()} == {"model.onnx", "export.json"}


# ----------------------------------------------------------------------------------------------------------------------
# Terms: negative weights


def test_negative_weight_refused_unless_the_term_declares_it_meaningful():
    from kdkit.errors import ConfigError
    from kdkit.recipe import TermSpec
    from kdkit.registry import LOSSES
    from kdkit.terms.base import build_term
    from kdkit.terms.regularizers import ConfidencePenaltyTerm

    with pytest.raises(ConfigError, match="negative weight"):
        build_term(TermSpec(name="confidence_penalty", weight=-0.5))

    class EntropyBonus(ConfidencePenaltyTerm):
        allows_negative_weight = True  # −β·H with a negative weight *rewards* entropy: meaningful

    LOSSES.add("_test_entropy_bonus", EntropyBonus)
    try:
        term = build_term(TermSpec(name="_test_entropy_bonus", weight=-0.5))
        assert term.schedule.weight == -0.5
    finally:
        LOSSES._entries.pop("_test_entropy_bonus")


# ----------------------------------------------------------------------------------------------------------------------
# Slow: kills at every checkpoint point and at random moments


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["ckpt_files:2", "ckpt_renamed:1", "ckpt_renamed:5", "ckpt_latest:1",
                                     "ckpt_latest:7", "best:2"])
def test_kill_inside_checkpoint_writes_resumes_bitwise(kill_at, tmp_path, reference):
    recipe = write_recipe(tmp_path)
    assert run_killed(recipe, kill_at) == 137
    assert run_killed(recipe, None, "--resume") == 0
    assert_same(outcome(tmp_path / "runs" / "faults"), reference)


LONG = "checkpoint_every_steps: 1\n"


@pytest.fixture(scope="module")
def reference_long(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("reference_long")
    return train_uninterrupted(d, _long_recipe(d))


def _long_recipe(d: Path) -> Path:
    p = write_recipe(d, LONG)
    p.write_text(p.read_text().replace("train_limit: 512", "train_limit: 1024").replace("epochs: 3", "epochs: 4"))
    return p


@pytest.mark.slow
def test_random_sigkills_resume_bitwise(tmp_path, reference_long):
    """SIGKILL a real run at random moments once it is training (checkpoints every step, so many kills land inside
    checkpoint writes) and resume until it finishes; the result must equal the uninterrupted run bit for bit."""
    recipe = _long_recipe(tmp_path)
    run_dir = tmp_path / "runs" / "faults"
    latest = run_dir / "checkpoints" / "latest.json"
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    rng = random.Random(int(os.environ.get("KDKIT_KILL_SEED", "14")))
    kills = inside = runs = 0
    # How many random kills land before a run finishes depends on this machine's speed; whole experiments are
    # repeated (each checked bitwise) until at least 5 kills have been tried.
    for _ in range(6):
        runs += 1
        shutil.rmtree(run_dir, ignore_errors=True)
        for attempt in range(60):
            args = [sys.executable, str(HERE / "fault_runner.py"), "train", str(recipe), "-q"]
            if attempt:
                args.append("--resume")
            before = latest.read_text() if latest.exists() else None
            proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            # wait until this attempt has saved a checkpoint of its own (so every attempt makes progress), then kill
            # at a random moment: with a checkpoint every step, many kills land inside the checkpoint writes
            deadline = time.time() + 180
            while proc.poll() is None and time.time() < deadline:
                try:
                    if latest.read_text() != before:
                        break
                except OSError:
                    pass
                time.sleep(0.01)
            try:
                proc.wait(timeout=rng.uniform(0.0, 0.2))  # a step with its checkpoint takes ~30 ms here
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                ckpt = latest.parent
                # evidence of a kill inside a checkpoint write: a temporary left, or a state not yet published
                inside += bool(list(ckpt.glob("*.tmp")) or len(list(ckpt.glob("step-*"))) > 1)
                continue
            assert proc.returncode == 0, proc.stderr.read()[-2000:]
            break
        else:
            pytest.fail("the run never finished")
        assert_same(outcome(run_dir), reference_long)
        if kills >= 5:
            break
    assert kills >= 5, f"only {kills} kills landed in {runs} runs; the timings need adjusting"
    print(f"random SIGKILLs: {kills} kills ({inside} inside a checkpoint write) over {runs} run(s), each run "
          f"bitwise equal to the uninterrupted one")
