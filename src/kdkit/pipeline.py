"""Sequential pipelines: a recipe with ``stages:`` runs one training per stage, each stage's best checkpoint
becoming a later stage's teacher.

This expresses the sequential schemes of the seeds with one mechanism:

* **born-again networks** (Furlanello et al., ICML 2018): generation k+1, same architecture, learns from generation k;
  an ``ensemble: true`` stage at the end evaluates the average of the generations' probabilities;
* **label refinery** (Bagherinezhad et al., 2018): each stage learns only from the previous stage's predictions
  (``kd`` at T=1, no ``ce``);
* **teacher-assistant chain** (Mirzadeh et al., AAAI 2020): teacher -> mid-sized assistant -> student;
* **re-KD from a smaller teacher** (Yuan et al., CVPR 2020): a small network teaches a larger one;
* any other chain, e.g. training N teachers and compressing their ensemble into one student
  (``teacher_from: [t1, t2, t3]`` with ``combine: mean_probs``).

A stage is a partial recipe plus three keys:

* ``name`` (required, unique): the stage's run directory is ``RUN/stages/NAME``;
* ``teacher_from``: ``previous`` (default for every stage after the first that lists no ``teachers``), ``all``
  (every earlier training stage), a stage name, a list of names, or ``none``; the named stages' students, loaded
  from their best checkpoints, are appended to the stage's own ``teachers``;
* ``ensemble: true``: no training; evaluate the probability-averaged ensemble of the ``teacher_from`` stages
  (default ``all``) on the validation split.

Everything else overrides the pipeline's top-level recipe: ``data``, ``optim`` and ``schedule`` are merged key by key,
other fields (``student``, ``terms``, ``scheme``, ``epochs``, ...) are replaced. Top-level ``teachers`` are not
inherited. A stage that sets no ``seed`` gets the pipeline's seed plus its position, so generations start from
different initialisations.

Resumable at stage granularity: a finished stage (its ``summary.json`` exists and its saved recipe equals the
stage's recipe) is skipped when the pipeline is run again; an unfinished stage resumes with ``--resume``. The final
training stage's best weights, last weights and metrics are copied to ``RUN/`` (so ``kdkit eval RUN`` and
``kdkit report RUN`` see the pipeline's result) and ``RUN/summary.json`` lists every stage.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from rich.console import Console

from kdkit.data.run import build_data
from kdkit.engine.evaluate import evaluate
from kdkit.engine.loop import FitResult
from kdkit.errors import ConfigError
from kdkit.models.factory import load_model
from kdkit.recipe import Recipe, recipe_from_dict, save_recipe
from kdkit.runs import run
from kdkit.schemes.mutual import ProbabilityEnsemble
from kdkit.utils import atomic_write_json
from kdkit.yamlio import read_yaml_file

_MERGED = ("data", "optim", "schedule")
_STAGE_KEYS = ("name", "teacher_from", "ensemble")
_NOT_IN_STAGE = ("stages", "output_dir")


@dataclass
class Stage:
    """One expanded stage: its validated recipe, where it runs, and which stages teach it."""

    name: str
    index: int
    recipe: Recipe
    run_dir: Path
    teacher_stages: list[str] = field(default_factory=list)
    ensemble: bool = False


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k in _MERGED and isinstance(v, dict) and isinstance(out.get(k), dict):
            merged = dict(out[k])
            for kk, vv in v.items():
                merged[kk] = dict(merged[kk], **vv) if isinstance(vv, dict) and isinstance(merged.get(kk), dict) \
                    else vv
            out[k] = merged
        else:
            out[k] = copy.deepcopy(v)
    return out


def _resolve_from(spec: Any, i: int, name: str, done: list[Stage]) -> list[str]:
    names = [s.name for s in done]
    training = [s.name for s in done if not s.ensemble]
    if spec in (None, "none"):
        return []
    if spec == "previous":
        if not done:
            raise ConfigError(f"stages.{i} ('{name}'): teacher_from 'previous' but it is the first stage")
        return [done[-1].name]
    if spec == "all":
        if not training:
            raise ConfigError(f"stages.{i} ('{name}'): teacher_from 'all' but no training stage comes before it")
        return training
    refs = [spec] if isinstance(spec, str) else spec
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise ConfigError(f"stages.{i}.teacher_from: expected previous, all, none, a stage name or a list of names, "
                          f"got {spec!r}")
    for r in refs:
        if r not in names:
            raise ConfigError(f"stages.{i}.teacher_from: '{r}' is not an earlier stage; earlier stages: "
                              f"{', '.join(names) or '(none)'}")
    return list(refs)


def expand_stages(recipe: Recipe) -> list[Stage]:
    """Validate and expand ``recipe.stages`` into one :class:`Stage` (with a full :class:`Recipe`) per stage.

    Raises:
        ConfigError: one line naming the stage and field at fault.
    """
    if not recipe.stages:
        raise ConfigError("the recipe has no `stages:`")
    base = recipe.model_dump(mode="json")
    for k in ("stages", "teachers"):
        base.pop(k, None)
    root = recipe.run_dir
    stages: list[Stage] = []
    for i, raw in enumerate(recipe.stages):
        if not isinstance(raw, dict):
            raise ConfigError(f"stages.{i}: expected a mapping (a partial recipe with a name), got "
                              f"{type(raw).__name__}")
        name = raw.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
            raise ConfigError(f"stages.{i}.name: give each stage a name of letters, digits, '_', '-', '.'; "
                              f"got {name!r}")
        if name in (s.name for s in stages):
            raise ConfigError(f"stages.{i}.name: '{name}' is used twice")
        bad = [k for k in raw if k in _NOT_IN_STAGE]
        if bad:
            raise ConfigError(f"stages.{i} ('{name}'): {bad} cannot be set per stage; set them at the top level")
        ensemble = bool(raw.get("ensemble", False))
        default_from = "all" if ensemble else ("previous" if stages and "teachers" not in raw else "none")
        teacher_stages = _resolve_from(raw.get("teacher_from", default_from), i, name, stages)
        for t in teacher_stages:
            if next(s for s in stages if s.name == t).ensemble:
                raise ConfigError(f"stages.{i}.teacher_from: '{t}' is an ensemble stage and has no weights; name its "
                                  f"members instead")
        over = {k: v for k, v in raw.items() if k not in _STAGE_KEYS}
        merged = _merge(base, over)
        merged["name"] = name
        merged["output_dir"] = str(root / "stages")
        if "seed" not in raw:
            merged["seed"] = recipe.seed + i
        teachers = list(merged.get("teachers") or [])
        for t in teacher_stages:
            prev = next(s for s in stages if s.name == t)
            spec = prev.recipe.student
            teachers.append({"name": spec.name, "params": copy.deepcopy(spec.params), "checkpoint": str(prev.run_dir)})
        merged["teachers"] = teachers
        if ensemble and not teacher_stages:
            raise ConfigError(f"stages.{i} ('{name}'): an ensemble stage needs stages to average (teacher_from)")
        rec = recipe_from_dict(merged, source=f"stage '{name}'")
        stages.append(Stage(name, i, rec, root / "stages" / name, teacher_stages, ensemble))
    return stages


def _saved_matches(stage: Stage) -> bool:
    cfg = stage.run_dir / "config.yaml"
    if not cfg.is_file():
        return False
    saved = read_yaml_file(cfg, f"saved recipe '{cfg}'")
    now = json.loads(json.dumps(stage.recipe.model_dump(mode="json")))
    return saved == now


def _history(run_dir: Path) -> list[dict[str, Any]]:
    p = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


def evaluate_ensemble(stage: Stage) -> dict[str, Any]:
    """Validation top-1/top-5 of the probability-averaged ensemble of the stage's teachers (and of each member)."""
    data = build_data(stage.recipe)
    members = [load_model(t.checkpoint)[0] for t in stage.recipe.teachers]
    out: dict[str, Any] = {"members": {}}
    for name, m in zip(stage.teacher_stages, members, strict=True):
        out["members"][name] = evaluate(m, data.val_loader)["top1"]
    ens = evaluate(ProbabilityEnsemble(members), data.val_loader)
    out.update(top1=ens["top1"], top5=ens.get("top5"), loss=ens["loss"], n=ens["n"])
    return out


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def run_pipeline(recipe: Recipe, resume: bool = False, quiet: bool = False, console: Any = None):
    """Run every stage of ``recipe`` in order (skipping finished ones); returns the final training stage's
    :class:`~kdkit.engine.loop.FitResult` with ``run_dir`` = the pipeline's directory."""
    stages = expand_stages(recipe)  # every stage validated before anything trains
    state = PartialState()
    root = recipe.run_dir
    console = console or Console(stderr=True)
    if state.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, root / "config.yaml")
    summary: list[dict[str, Any]] = []
    final: FitResult | None = None
    for st in stages:
        done = (st.run_dir / "summary.json").is_file()
        if done and not _saved_matches(st):
            raise ConfigError(f"stage '{st.name}' in '{st.run_dir}' finished with a different recipe; delete that "
                              f"directory to rerun the stage, or give the pipeline another name")
        if not quiet and state.is_main_process:
            what = "ensemble of " + ", ".join(st.teacher_stages) if st.ensemble else \
                f"teachers: {', '.join(st.teacher_stages) or 'none'}"
            console.print(f"[bold]stage {st.index + 1}/{len(stages)}[/] {st.name} ({what})" +
                          (" [dim]- done, skipped[/]" if done else ""))
        entry: dict[str, Any] = {"name": st.name, "run_dir": str(st.run_dir), "teachers": st.teacher_stages,
                                 "ensemble": st.ensemble, "skipped": done}
        if st.ensemble:
            if done:
                metrics = json.loads((st.run_dir / "summary.json").read_text())["best"]
            else:
                metrics = evaluate_ensemble(st)
                if state.is_main_process:
                    st.run_dir.mkdir(parents=True, exist_ok=True)
                    save_recipe(st.recipe, st.run_dir / "config.yaml")
                    atomic_write_json(st.run_dir / "summary.json", {"best": metrics, "ensemble": st.teacher_stages})
            entry["best"] = metrics
            if not quiet and state.is_main_process:
                console.print(f"  ensemble val top1 {metrics['top1']:.2f}% (members: " +
                              ", ".join(f"{k} {v:.2f}%" for k, v in metrics["members"].items()) + ")")
        else:
            if done:
                s = json.loads((st.run_dir / "summary.json").read_text())
                hist = _history(st.run_dir)
                res = FitResult(st.run_dir, s["best"], s["last"], hist, st.run_dir / "checkpoints" / "best.safetensors")
            else:
                has_ckpt = (st.run_dir / "checkpoints" / "latest.json").is_file()
                res = run(st.recipe, resume=resume and has_ckpt, quiet=quiet, console=console)
            entry["best"] = res.best
            final = res
        summary.append(entry)
        state.wait_for_everyone()
    if final is None:
        raise ConfigError("the pipeline has no training stage")
    best_path = root / "checkpoints" / "best.safetensors"
    if state.is_main_process:
        # The pipeline's directory mirrors its final training stage, so `kdkit eval/report RUN` work on it.
        for src, dst in ((final.best_path, best_path), (final.run_dir / "last.safetensors", root / "last.safetensors"),
                         (final.run_dir / "metrics.jsonl", root / "metrics.jsonl")):
            if Path(src).is_file():
                _copy_atomic(Path(src), dst)
        atomic_write_json(root / "summary.json", {"best": final.best, "last": final.last,
                                                  "best_weights": str(best_path), "final_stage": final.run_dir.name,
                                                  "stages": summary})
    state.wait_for_everyone()
    return FitResult(root, final.best, final.last, final.history, best_path)


__all__ = ["Stage", "evaluate_ensemble", "expand_stages", "run_pipeline"]
