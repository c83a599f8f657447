"""``kdkit tune``: a hyperparameter search over a recipe's ``search:`` block, on Optuna (the ``tune`` extra).

Each trial is a normal run directory, ``<output_dir>/<name>-tune/trial-<number>``, of the recipe with the sampled
values set at their field paths. The objective is the trial's **best validation top-1** (the highest ``val_top1`` over
its epochs, on the recipe's validation split ``data.val_fraction``, held out of training; never a test split),
maximised. Every evaluated epoch is reported to Optuna through an engine epoch callback, so the pruner (median by
default) stops trials that trail the others at the same epoch.

Storage: by default an Optuna journal file, ``<output_dir>/<name>-tune/journal.log``; it survives a kill (the next
``kdkit tune`` adds trials to the same study) and several worker processes on one machine may share it (file locks).
``--storage URL`` (e.g. ``postgresql://...``) uses a relational database instead, for workers on several machines.

Shared soft-label store: when the recipe distils from frozen teachers that a soft-label store can replace, and the
search changes only student-side fields (terms' weights and temperatures, optimiser, schedule, student ...), the
teacher's outputs are the same in every trial. The first worker then fills one store, ``<study>/softlabels``, with
``kdkit cache`` (views = epochs when the augmentation is random, so trial epoch e sees exactly the view it would see
online), and every trial reads it (``soft_labels:``), so a trial costs a student-only run. Other workers wait for it.

Several seeds per trial (``--trial-seeds 0,1``): each trial trains once per seed, ``trial-<number>-seed<s>``, and its
value is the mean of those runs' best validation top-1. On a small validation split one run per trial cannot tell
settings apart that differ by less than the seed-to-seed spread (on 6,000 Fashion-MNIST images, ~0.3 points;
docs/tuning.md), so the search would chase noise. The runs of a trial are reported to the pruner one after the other
(seed k's epoch e is step ``k * epochs + e``), so every trial is compared with the others on the same seed. With a
random augmentation each seed draws its own views, so the shared store holds one store per seed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from kdkit.errors import ConfigError
from kdkit.recipe import Recipe, as_recipe, parse_distribution, recipe_from_dict, set_path
from kdkit.runs import run
from kdkit.utils import DirLock, atomic_write_json

OBJECTIVE = "best-epoch validation top-1 (%) on the recipe's validation split (data.val_fraction), maximised"


def objective_text(trial_seeds: list[int] | None) -> str:
    """What a study maximises: :data:`OBJECTIVE`, or with several seeds per trial the mean of it over the seeds."""
    if not trial_seeds:
        return OBJECTIVE
    return f"mean over seeds {', '.join(map(str, trial_seeds))} of each run's {OBJECTIVE.replace(', maximised', '')}" \
        ", maximised"


def _optuna():
    try:
        import optuna  # the `tune` extra
    except ModuleNotFoundError:
        raise ConfigError("kdkit tune needs Optuna: pip install 'kdkit[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class TuneResult:
    """A study after ``kdkit tune``: its directory, name, storage, and the best trial so far."""

    study_dir: Path
    study_name: str
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    best_run_dir: str | None
    n_trials: int  # trials in the study (all workers, all states)
    ran: int  # trials started by this call
    store: str | None = None  # the soft-label store the trials share (None: each trial runs its teachers)


def study_dir_of(recipe: Recipe) -> Path:
    return Path(recipe.output_dir) / f"{recipe.name}-tune"


def _storage(optuna: Any, study_dir: Path, url: str | None) -> tuple[Any, str]:
    if url:
        from sqlalchemy.exc import SQLAlchemyError

        # Workers that start together on an empty database race to create Optuna's tables (PostgreSQL: "type ...
        # already exists"); the loser finds them made on a retry.
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url), url
            except SQLAlchemyError as err:
                if attempt == 4:
                    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    raise ConfigError(f"--storage: cannot open '{url}' ({first}); check the URL, the server and "
                                      f"the database driver (psycopg2-binary is in the tune extra)") from None
                time.sleep(0.5 + attempt)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / "journal.log"
    return JournalStorage(JournalFileBackend(str(path))), str(path)


def sample(trial: Any, search: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One value per ``search:`` path from ``trial`` (an ``optuna.Trial``); ``choice`` values are suggested by index
    (any YAML value, e.g. a whole term list, can be a choice) and stored as the value in the trial's user attrs."""
    values: dict[str, Any] = {}
    for path, dist in search.items():
        kind, arg = parse_distribution(path, dist)
        if kind == "uniform":
            values[path] = trial.suggest_float(path, float(arg[0]), float(arg[1]))
        elif kind == "log_uniform":
            values[path] = trial.suggest_float(path, float(arg[0]), float(arg[1]), log=True)
        elif kind == "int":
            values[path] = trial.suggest_int(path, int(arg[0]), int(arg[1]))
        else:
            values[path] = arg[trial.suggest_categorical(path, list(range(len(arg))))]
    return values


def trial_recipe(recipe: Recipe, values: dict[str, Any], number: int, study_dir: Path,
                 seed: int | None = None) -> Recipe:
    """``recipe`` with ``values`` set, no ``search:``, run in ``study_dir/trial-<number>`` (with ``seed``: that seed,
    in ``study_dir/trial-<number>-seed<seed>``)."""
    data = recipe.model_dump(mode="json")
    data["search"] = {}
    for path, value in values.items():
        data = set_path(data, path, value)
    data.update(name=f"trial-{number}", output_dir=str(study_dir))
    if seed is not None:
        data.update(name=f"trial-{number}-seed{seed}", seed=seed)
    return recipe_from_dict(data, source=f"trial {number}")


# Search paths under these change what the teachers output (their models, the data, the combine rule, the seed the
# augmentation is drawn from): a study that searches them cannot share one store.
_TEACHER_SIDE = ("teachers", "data", "scheme", "seed", "soft_labels", "stages", "device", "precision")


def store_blocker(recipe: Recipe) -> str | None:
    """Why the trials of ``recipe``'s study cannot share one soft-label store, or None when they can."""
    from kdkit.teachers.store import check_recipe_can_use_store

    if not recipe.teachers:
        return "the recipe has no teachers"
    if recipe.soft_labels:
        return None
    touched = [p for p in recipe.search if p.split(".")[0] in _TEACHER_SIDE]
    if touched:
        return f"the search changes teacher-side field(s) {', '.join(touched)}"
    variants = [recipe]
    for path, dist in recipe.search.items():
        kind, arg = parse_distribution(path, dist)
        if kind == "choice":
            data = recipe.model_dump(mode="json") | {"search": {}}
            variants += [recipe_from_dict(set_path(data, path, v), source=f"search '{path}'") for v in arg]
    for v in variants:
        try:
            check_recipe_can_use_store(v)
        except ConfigError as err:
            return str(err).split(";")[0]
    return None


def shared_store(recipe: Recipe, sdir: Path, views: int | None = None, quiet: bool = False,
                 console: Console | None = None, name: str = "softlabels") -> tuple[Path | None, str]:
    """Fill (once per study) the soft-label store the trials share, ``sdir/name``; returns its path (None when the
    trials cannot share one) and a note saying which. Several workers: the first fills it, the others wait for its
    lock."""
    from kdkit.softlabels.cache import build_cache

    if recipe.soft_labels:
        return Path(recipe.soft_labels), f"trials read the recipe's soft-label store {recipe.soft_labels}"
    why = store_blocker(recipe)
    if why:
        return None, f"each trial runs its teachers ({why})"
    path = sdir / name
    lock = DirLock(sdir / f".{name}-fill.lock", lambda pid: ConfigError(f"store busy (pid {pid})"))
    while True:  # wait for another worker that is filling it (a killed one drops the lock with its process)
        try:
            lock.acquire()
            break
        except ConfigError:
            time.sleep(1.0)
    try:
        base = recipe.model_copy(update={"search": {}})
        n_views = views or (base.epochs if base.data.augment.crop_padding or base.data.augment.flip else 1)
        try:
            # top-100 (clipped to the class count): every logit for up to 100 classes, so a trial distils from exactly
            # the teacher outputs it would compute online (up to fp16 rounding)
            result = build_cache(base, views=n_views, topk=100, out=path, quiet=True, console=console)
        except ConfigError as err:
            return None, f"each trial runs its teachers (no store: {str(err).split(';')[0]})"
    finally:
        lock.release()
    verb = "filled" if result.chunks_computed else "reused"
    return path, (f"trials share the soft-label store {path} ({verb}; {result.manifest['views']} view(s), "
                  f"{result.seconds:.1f} s of teacher passes this call): a trial is a student-only run")


def run_tune(recipe: Recipe | str | Path | dict[str, Any], trials: int, overrides: list[str] | None = None,
             storage: str | None = None, sampler: str = "tpe", pruner: str = "median", seed: int | None = None,
             quiet: bool = False, console: Console | None = None, store: bool = True,
             store_views: int | None = None, trial_seeds: list[int] | None = None) -> TuneResult:
    """Run ``trials`` more trials of the recipe's search (adding to the study if it exists); see the module doc.

    ``store``: share one soft-label store between the trials when the recipe allows it (``--no-store``: every trial
    runs its teachers). ``store_views``: views the store holds (default: the epochs, when the augmentation is random).
    ``trial_seeds``: train each trial once per seed and take the mean (default: one run, the recipe's seed); a study
    keeps the seeds it was made with.
    """
    optuna = _optuna()
    r = as_recipe(recipe, overrides)
    if not r.search:
        raise ConfigError(f"recipe '{r.name}' has no `search:` block; add one (docs/tuning.md), e.g. "
                          f"search: {{optim.lr: {{log_uniform: [0.0003, 0.03]}}}}")
    if r.stages:
        raise ConfigError("kdkit tune: a recipe with `stages:` (a pipeline) cannot be tuned; tune its last stage")
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    seeds = [int(x) for x in trial_seeds] if trial_seeds else None
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ConfigError(f"--trial-seeds: give each seed once, got {seeds}")
    if seeds is not None and "seed" in r.search:
        raise ConfigError("--trial-seeds: the recipe's `search:` samples `seed` too; drop one of the two")
    console = console or Console(stderr=True)
    sdir = study_dir_of(r)
    backend, where = _storage(optuna, sdir, storage)
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed)}
    # No pruning before epoch max(1, epochs // 4): with a warm-up schedule (onecycle) the first epochs' top-1 says
    # little about the last; pruning from epoch 1 stopped 28 of 30 trials of a 20-epoch KD study (docs/benchmarks.md).
    warmup = max(1, r.epochs // 4)
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup),
               "none": lambda: optuna.pruners.NopPruner()}
    if sampler not in samplers or pruner not in pruners:
        raise ConfigError(f"--sampler must be one of {sorted(samplers)} and --pruner one of {sorted(pruners)}")
    study = optuna.create_study(study_name=r.name, storage=backend, direction="maximize", sampler=samplers[sampler](),
                                pruner=pruners[pruner](), load_if_exists=True)
    if "objective" not in study.user_attrs:
        study.set_user_attr("objective", objective_text(seeds))
        study.set_user_attr("trial_seeds", seeds)
        study.set_user_attr("split", f"validation: {r.data.val_fraction:g} of {r.data.name} held out of training "
                                     f"(split_seed {r.data.split_seed})")
        study.set_user_attr("search", r.search)
    elif study.user_attrs.get("trial_seeds") != seeds:  # one objective per study: never mix one-seed and mean values
        made = study.user_attrs.get("trial_seeds")
        raise ConfigError(f"study '{r.name}' was made with "
                          f"{'--trial-seeds ' + ' '.join(map(str, made)) if made else 'one run per trial'}; add "
                          f"trials the same way, or start a new study (another recipe name or output_dir)")
    sdir.mkdir(parents=True, exist_ok=True)
    # With a random augmentation a store's views belong to one seed: the trials' runs of each seed share one store.
    per_seed = seeds is not None and augment_is_random(r)
    stores: dict[int | None, Path | None] = {}
    if not store:
        stores[None], note = None, "--no-store: each trial runs its teachers"
    elif per_seed:
        notes = []
        for s in seeds or []:
            stores[s], n = shared_store(r.model_copy(update={"seed": s}), sdir, store_views, quiet, console,
                                        name=f"softlabels-seed{s}")
            notes.append(n)
        note = notes[0] if stores[seeds[0]] is None else \
            f"{notes[0]}; one store per trial seed ({', '.join(str(stores[s]) for s in seeds)})"
    else:
        stores[None], note = shared_store(r, sdir, store_views, quiet, console)
    if not quiet:
        console.print(f"[bold]tune[/] {note}")
    store_path = stores[seeds[0]] if per_seed and seeds else stores[None]
    atomic_write_json(sdir / "study.json", {"study_name": r.name, "storage": where,
                                            "objective": study.user_attrs.get("objective", OBJECTIVE),
                                            "trial_seeds": seeds,
                                            "store": str(store_path) if store_path else None,
                                            "stores": {str(k): str(v) for k, v in stores.items() if v} if per_seed
                                            else None,
                                            "search": r.search, "recipe": r.model_dump(mode="json")})

    started = []

    def objective(trial: Any) -> float:
        started.append(trial.number)
        values = sample(trial, r.search)
        trial.set_user_attr("values", json.loads(json.dumps(values)))
        per_run: list[float] = []
        run_dirs: list[str] = []
        for k, s in enumerate(seeds or [None]):
            tr = trial_recipe(r, values, trial.number, sdir, seed=s)
            path = stores[s] if per_seed else stores[None]
            if path is not None and not tr.soft_labels:
                tr = tr.model_copy(update={"soft_labels": str(path)})
            run_dirs.append(str(tr.run_dir))
            trial.set_user_attr("run_dir", run_dirs[0])  # the first seed's run: what --show and the report open
            if seeds:
                trial.set_user_attr("run_dirs", run_dirs)
            if not quiet:
                shown = ", ".join(f"{p}={_short(v)}" for p, v in values.items())
                console.print(f"[bold]trial {trial.number}[/] {shown}{f' (seed {s})' if seeds else ''} → {tr.run_dir}")

            def report(record: dict[str, Any], k: int = k, s: int | None = s) -> None:
                if record.get("val_top1") is None:
                    return
                trial.report(float(record["val_top1"]), step=k * r.epochs + int(record["epoch"]))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {record['epoch']}{f' of seed {s}' if seeds else ''} "
                                             f"(val top-1 {record['val_top1']:.2f}%)")

            result = run(tr, quiet=quiet, epoch_callbacks=[report], track_project=r.name)
            value = result.best.get("top1")
            if value is None or not math.isfinite(value):
                raise ConfigError(f"trial {trial.number}: no validation top-1 was measured; the objective needs a "
                                  f"validation split (data.val_fraction > 0)")
            per_run.append(float(value))
            if seeds:
                done = seeds[: len(per_run)]  # the seeds run so far
                trial.set_user_attr("seed_values", {str(x): v for x, v in zip(done, per_run, strict=True)})
        return sum(per_run) / len(per_run)

    study.optimize(objective, n_trials=trials, catch=())
    out = _result(study, sdir, where, ran=len(started))
    out.store = str(store_path) if store_path is not None else None
    return out


def augment_is_random(recipe: Recipe) -> bool:
    """Whether the recipe's training augmentation draws anything at random (so its views depend on the seed)."""
    a = recipe.data.augment
    return bool(a.crop_padding or a.flip or any(a.jitter) or a.mixup or a.cutmix or a.resized_crop)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if not isinstance(v, str) else v


def _result(study: Any, sdir: Path, where: str, ran: int) -> TuneResult:
    done = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    best = max(done, key=lambda t: t.value) if done else None
    return TuneResult(sdir, study.study_name, where, best.value if best else None,
                      best.user_attrs.get("values", {}) if best else {},
                      best.user_attrs.get("run_dir") if best else None, len(study.trials), ran)


def load_study(recipe: Recipe | str | Path | dict[str, Any], overrides: list[str] | None = None,
               storage: str | None = None) -> Any:
    """The recipe's Optuna study (as ``kdkit tune`` left it)."""
    optuna = _optuna()
    r = as_recipe(recipe, overrides)
    sdir = study_dir_of(r)
    if storage is None and not (sdir / "journal.log").is_file():
        raise ConfigError(f"no study for '{r.name}' in '{sdir}' yet; run kdkit tune first (or pass --storage URL)")
    store, _ = _storage(optuna, sdir, storage)
    try:
        return optuna.load_study(study_name=r.name, storage=store)
    except KeyError:
        raise ConfigError(f"storage has no study named '{r.name}'; run kdkit tune first") from None


def best_trials(study: Any, top: int = 5) -> list[dict[str, Any]]:
    """The ``top`` completed trials, best first: number, value, sampled values, run directory, epochs run."""
    done = sorted((t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None),
                  key=lambda t: -t.value)
    return [{"trial": t.number, "value": t.value, "values": t.user_attrs.get("values", {}),
             "run_dir": t.user_attrs.get("run_dir")} for t in done[:top]]


def show_markdown(study: Any, top: int = 5) -> str:
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    lines = [f"study '{study.study_name}': {len(study.trials)} trials "
             f"({', '.join(f'{n} {k}' for k, n in sorted(states.items()))})",
             f"objective: {study.user_attrs.get('objective', OBJECTIVE)}", "",
             f"| trial | {'mean over seeds of the ' if study.user_attrs.get('trial_seeds') else ''}best val top-1 (%) "
             "| values | run directory |", "|---|---|---|---|"]
    for row in best_trials(study, top):
        vals = ", ".join(f"{k}={_short(v)}" for k, v in row["values"].items())
        lines.append(f"| {row['trial']} | {row['value']:.2f} | {vals} | {row['run_dir']} |")
    return "\n".join(lines) + "\n"


def param_importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA: the share of the objective's variance over finished trials that each
    searched field explains; they sum to 1), most important first; empty before two finished trials."""
    optuna = _optuna()
    done = [t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
    if len(done) < 2 or not study.user_attrs.get("search"):
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):  # e.g. every finished trial has the same values: nothing to apportion
        return {}


def write_show(study: Any, out_dir: Path, top: int = 5) -> dict[str, Any]:
    """What ``kdkit tune --show`` shows, as files in ``out_dir`` (the study's ``plots/``): the figures
    (:func:`write_plots`), ``show.md`` (the table printed) and ``show.json`` — trial counts by state, the objective,
    the ``top`` best trials, the parameter importances and the figures' file names — which ``kdkit report --study``
    puts in the report. Returns the ``show.json`` content."""
    out_dir = Path(out_dir)
    plots = write_plots(study, out_dir)
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    info = {"kind": "tune", "study_name": study.study_name, "n_trials": len(study.trials), "states": states,
            "objective": study.user_attrs.get("objective", OBJECTIVE), "split": study.user_attrs.get("split"),
            "search": study.user_attrs.get("search", {}), "best_trials": best_trials(study, top),
            "importances": param_importances(study), "plots": [p.name for p in plots]}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "show.json", info)
    (out_dir / "show.md").write_text(show_markdown(study, top))
    return info


def write_plots(study: Any, out_dir: Path) -> list[Path]:
    """The study's figures as PNG files in ``out_dir``: ``history.png`` (each finished trial's value and the best so
    far, by trial number), ``slices.png`` (value against each numeric searched field, log axis for ``log_uniform``;
    one panel per field) and ``importance.png`` (:func:`param_importances`, from two finished trials on). Returns the
    files written (none before the first finished trial)."""
    from matplotlib.figure import Figure

    done = [t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
    if not done:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 3.6), dpi=110)
    ax = fig.add_subplot()
    xs = [t.number for t in done]
    ys = [t.value for t in done]
    best = [max(ys[: i + 1]) for i in range(len(ys))]
    ax.scatter(xs, ys, s=14, label="trial")
    ax.step(xs, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("best-epoch val top-1 (%)")
    ax.set_title(f"study '{study.study_name}': optimisation history")
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths = [out_dir / "history.png"]
    fig.savefig(paths[0])
    search = study.user_attrs.get("search", {})
    numeric = [p for p, d in search.items() if isinstance(d, dict) and next(iter(d), None) != "choice"]
    if numeric:
        fig = Figure(figsize=(3.2 * len(numeric), 3.2), dpi=110)
        for i, path in enumerate(numeric):
            ax = fig.add_subplot(1, len(numeric), i + 1)
            pts = [(t.params[path], t.value) for t in done if path in t.params]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14)
            if next(iter(search[path])) == "log_uniform":
                ax.set_xscale("log")
            ax.set_xlabel(path, fontsize=8)
            if i == 0:
                ax.set_ylabel("best-epoch val top-1 (%)")
        fig.tight_layout()
        paths.append(out_dir / "slices.png")
        fig.savefig(paths[-1])
    importances = param_importances(study)
    if importances:
        names = list(importances)[::-1]  # the most important on top
        fig = Figure(figsize=(6, max(2.4, 0.8 + 0.45 * len(names))), dpi=110)
        ax = fig.add_subplot()
        ax.barh(names, [importances[n] for n in names], color="C0")
        for i, n in enumerate(names):
            ax.text(importances[n], i, f" {importances[n]:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, 1.1)
        ax.set_xlabel("importance (fANOVA share of the objective's variance)")
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(f"study '{study.study_name}': parameter importance")
        fig.tight_layout()
        paths.append(out_dir / "importance.png")
        fig.savefig(paths[-1])
    return paths
