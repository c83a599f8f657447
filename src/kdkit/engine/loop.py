"""The training loop: backward, clip, step, schedule, evaluate, checkpoint, log — on Hugging Face Accelerate.

The loop knows nothing about distillation methods: it is handed an object satisfying
:class:`~kdkit.types.TrainableScheme`, which answers ``step`` and lists what to evaluate. Determinism: the batch
order of epoch e and every augmentation are pure functions of the seed (see :mod:`kdkit.data`), the learning rate is
a pure function of the step, and the RNG state is checkpointed, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kdkit.engine.checkpoint import CheckpointManager, write_weights
from kdkit.engine.evaluate import evaluate
from kdkit.engine.precision import Mode, decide_student, input_in, mode_context, note_compile_error
from kdkit.engine.schedule import lr_at
from kdkit.engine.tracking import accelerator_kwargs
from kdkit.errors import KdkitError
from kdkit.recipe import OptimSpec, Recipe
from kdkit.types import TrainableScheme, TrainState, to_device
from kdkit.utils import atomic_write_text


@dataclass
class FitResult:
    run_dir: Path
    best: dict[str, Any]
    last: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_path: Path | None = None


def build_optimizer(spec: OptimSpec, module: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise KdkitError("nothing to train: the scheme's trainable module has no parameters with requires_grad")
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


def make_accelerator(recipe: Recipe):
    from accelerate import Accelerator

    cpu = recipe.device == "cpu" or (recipe.device == "auto" and not torch.cuda.is_available())
    if recipe.device == "cuda" and not torch.cuda.is_available():
        raise KdkitError("recipe field 'device': cuda requested but no GPU is visible; use device: auto or cpu")
    if cpu and recipe.precision == "fp16":
        # Accelerate ignores fp16 on CPU (the run would be plain fp32 while config.yaml says fp16): refuse it.
        raise KdkitError("recipe field 'precision': fp16 needs a CUDA GPU (on CPU it would silently run in fp32); use "
                         "precision: bf16 (CPU autocast to bfloat16) or no")
    # precision auto: the engine measures and applies the student's autocast itself (engine/precision.py)
    mixed = "no" if recipe.precision == "auto" else recipe.precision
    _fresh_accelerator_state(mixed)
    handlers = []
    if _has_term_windows(recipe):
        # A term outside its epoch window is not computed, so its connector gets no gradient in those epochs: DDP
        # must be told that some parameters may go unused (it errors otherwise).
        from accelerate import DistributedDataParallelKwargs

        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    return Accelerator(cpu=cpu, mixed_precision=mixed, kwargs_handlers=handlers, **accelerator_kwargs(recipe))


def _has_term_windows(recipe: Recipe) -> bool:
    return any(t.start_epoch > 0 or t.stop_epoch is not None for t in recipe.terms)


@contextlib.contextmanager
def _no_first_step_stride_warning() -> Iterator[None]:
    """Silence DDP's "grad strides do not match bucket view strides" on the first backward after a channels-last
    pick. Why it is harmless: DDP sized its gradient buckets from the contiguous parameters it wrapped; the student's
    mode (and so its memory format) is chosen after wrapping, on the first batch. After that first backward DDP
    rebuilds its buckets once from the parameters' current strides, so from the second step on gradients and buckets
    match and nothing is copied (measured: torch 2.14, gloo, two processes). Not silenced when DDP runs with
    ``find_unused_parameters`` (term windows): it never rebuilds its buckets, and the warning's one copy per step is
    then real."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        yield


def _fresh_accelerator_state(precision: str) -> None:
    """Accelerate keeps one process-wide state and refuses a second Accelerator with another mixed precision. In a
    single process (the API, tests, a pipeline whose stages differ in precision) reset it; under torchrun the state
    belongs to the launcher and is left alone."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision", precision) != precision and int(os.environ.get("WORLD_SIZE", "1")) \
            == 1:
        AcceleratorState._reset_state()


class Engine:
    """Runs ``scheme`` for ``recipe.epochs`` epochs and writes the run directory.

    Args:
        recipe: the validated recipe (optimiser, schedule, epochs, clipping, precision, checkpointing).
        run_dir: where metrics.jsonl, checkpoints/ and best.safetensors go.
        model_meta: metadata stored with the best weights (model spec, classes, normalisation) for ``kdkit eval``.
        quiet: no progress bar (metrics are still written).
        epoch_callbacks: called with each epoch's record (the line written to ``metrics.jsonl``, with ``val_top1``
            when the epoch was evaluated) after the epoch is checkpointed; an exception they raise stops the run there
            (``kdkit tune`` prunes a trial this way). They see figures only, never the scheme.

    Training figures (loss, term values, correct counts) accumulate on the device (:class:`DeviceSums`); the host
    reads them every ``log_every_steps`` steps (progress bar), at a mid-epoch checkpoint and at the end of the epoch,
    never once per step (on a GPU a read waits for every queued kernel).
    """

    log_every_steps: int = 25
    check_every_step: bool | None = None  # test the loss for NaN/inf at every step; None: on the CPU only

    def __init__(self, recipe: Recipe, run_dir: Path, model_meta: dict[str, Any] | None = None,
                 console: Console | None = None, quiet: bool = False, accelerator: Any = None,
                 epoch_callbacks: list[Callable[[dict[str, Any]], None]] | None = None) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.model_meta = model_meta or {}
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.accelerator = accelerator or make_accelerator(recipe)
        self.ckpt = CheckpointManager(self.run_dir)
        self.epoch_callbacks = list(epoch_callbacks or [])

    # ------------------------------------------------------------------------------------------------------------
    def fit(self, scheme: TrainableScheme, train_loader: Any, val_loader: Any, resume: bool = False) -> FitResult:
        r, acc = self.recipe, self.accelerator
        device = acc.device
        raw = scheme.trainable()
        scheme.to(device)
        optimizer = build_optimizer(r.optim, raw)
        model, optimizer = acc.prepare(raw, optimizer)
        # compile: the student networks themselves, in place (nn.Module.compile): the optimizer's parameters, DDP's
        # buckets and the checkpoint keys stay those of the eager modules. Compiled after the student's mode is chosen
        # (precision/channels_last auto measure the eager student: compiling every candidate mode would cost one
        # compilation each, and a failing compiler would fail every mode); compilation happens at the first step
        compiled = [m for m in scheme.eval_models().values()] if r.compile else []
        to_compile = bool(compiled)
        steps_per_epoch = len(train_loader)
        if steps_per_epoch == 0:
            raise KdkitError("the training split has fewer samples than one batch; lower data.batch_size")
        state = TrainState(epoch=0, step=0, steps_per_epoch=steps_per_epoch, epochs=r.epochs)
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"top1": -math.inf}
        start_batch, partial = 0, None
        if resume:
            saved = self.ckpt.load(acc.unwrap_model(model), optimizer)
            state.epoch, state.step = saved["epoch"], saved["step"]
            start_batch, partial = saved["batch_in_epoch"], saved.get("partial")
            if partial is not None and not acc.is_main_process:
                # saved partial sums are already summed over processes (_global_sums): rank 0 carries them
                partial = {"loss": 0.0, "terms": {k: 0.0 for k in partial["terms"]}, "correct": 0,
                           "n_labelled": 0, "n": 0, "seconds": partial["seconds"]}
            history, best = saved["history"], saved["best"]
            state.best_metric = best.get("top1", -math.inf)
            self._write_metrics(history)
            if not self.quiet:
                self.console.print(f"[bold]resuming[/] {self.run_dir} at epoch {state.epoch + 1}, batch {start_batch}")

        eval_models = scheme.eval_models()
        eval_inputs = scheme.eval_inputs()  # the named input each evaluated model reads (default: "input")
        primary = next(iter(eval_models))
        student: Mode | None = None  # the student's mode, decided on the first batch (precision/channels_last)
        decided = not self._has_student_policy()
        first_cl_ddp = False  # the first backward after a channels-last pick under DDP (_no_first_step_stride_warning)
        for epoch in range(state.epoch, r.epochs):
            state.epoch = epoch
            train_loader.set_epoch(epoch)
            scheme.on_epoch_start(state)
            model.train()
            sums = DeviceSums(device, partial, start_batch)
            t0 = time.perf_counter()
            it = _iter_from(train_loader, start_batch)
            with self._progress(epoch, steps_per_epoch) as (prog, task):
                if prog is not None and start_batch:
                    prog.update(task, completed=start_batch)
                for b, batch in enumerate(it, start=start_batch):
                    lr = lr_at(r.schedule, r.optim.lr, state.step, steps_per_epoch, r.epochs)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    batch = to_device(batch, device)
                    if not decided:
                        student, decided = self._student_mode(scheme, model, batch, state), True
                        first_cl_ddp = student.channels_last and acc.num_processes > 1 and not _has_term_windows(r)
                    if to_compile:
                        for m in compiled:
                            m.compile()
                        to_compile = False
                    batch = input_in(batch, student)
                    try:
                        with acc.autocast(), self._student_context(student, device):
                            out = scheme.step(model, batch, state)
                        if self._check_now(device) and not torch.isfinite(out.loss):
                            self._raise_nonfinite(scheme, batch, out, lr, f"at epoch {epoch + 1}, batch {b}")
                        optimizer.zero_grad(set_to_none=True)
                        with _no_first_step_stride_warning() if first_cl_ddp else contextlib.nullcontext():
                            acc.backward(out.loss)
                    except KdkitError:
                        raise
                    except Exception as err:  # compilation fails at the first forward or backward: run eagerly
                        if not compiled:
                            raise
                        self._compile_failed(compiled, err)
                        compiled = []
                        with acc.autocast(), self._student_context(student, device):
                            out = scheme.step(model, batch, state)
                        optimizer.zero_grad(set_to_none=True)
                        acc.backward(out.loss)
                    first_cl_ddp = False
                    compiled = []  # compiled (or fallen back) by the first step: later errors are errors
                    if r.grad_clip:
                        acc.clip_grad_norm_(model.parameters(), r.grad_clip)
                    optimizer.step()
                    state.step += 1
                    sums.add(out, batch)
                    last = b + 1 == steps_per_epoch
                    if prog is not None:
                        info = None
                        if (b + 1) % self.log_every_steps == 0 or last:  # the one read of the device sums
                            now = self._read(sums, scheme, batch, out, lr, epoch, b)
                            info = _progress_info(now, now["seconds"] + time.perf_counter() - t0, lr)
                        prog.update(task, advance=1, **({"info": info} if info is not None else {}))
                    if r.checkpoint_every_steps and state.step % r.checkpoint_every_steps == 0 and not last:
                        now = self._read(sums, scheme, batch, out, lr, epoch, b)
                        sums_now = self._global_sums(dict(now, seconds=now["seconds"] + time.perf_counter() - t0))
                        self._save(model, optimizer, state, b + 1, history, best, sums_now)
            sums = self._read(sums, scheme, batch, out, lr, epoch, b) if sums.steps else sums.read()[0]
            start_batch, partial = 0, None
            train_seconds = sums["seconds"] + time.perf_counter() - t0
            record = self._epoch_record(epoch, self._global_sums(sums), train_seconds, lr)
            if (epoch + 1) % r.eval_every == 0 or epoch + 1 == r.epochs:
                for name, m in eval_models.items():
                    metrics = evaluate(m, val_loader, device, eval_inputs.get(name, "input"))
                    prefix = "val" if name == primary else f"val_{name}"
                    record.update({f"{prefix}_{k}": v for k, v in metrics.items() if k != "n"})
                if record.get("val_top1", -math.inf) > best["top1"]:
                    best = {"epoch": epoch + 1, "top1": record["val_top1"], "top5": record.get("val_top5")}
                    state.best_metric = best["top1"]
                    if acc.is_main_process:
                        meta = dict(self.model_meta, epoch=epoch + 1, val_top1=record["val_top1"])
                        write_weights(acc.unwrap_model(eval_models[primary]), self.ckpt.best_path, meta)
            history.append(record)
            state.epoch = epoch + 1
            self._save(model, optimizer, state, 0, history, best, None)
            self._write_metrics(history)
            if not self.quiet:
                self.console.print(_epoch_line(record, r.epochs))
            for callback in self.epoch_callbacks:
                callback(dict(record))
        acc.wait_for_everyone()
        last = history[-1] if history else {}
        if acc.is_main_process:
            meta = dict(self.model_meta, epoch=r.epochs, val_top1=last.get("val_top1"))
            write_weights(acc.unwrap_model(eval_models[primary]), self.run_dir / "last.safetensors", meta)
        return FitResult(self.run_dir, best, last, history, self.ckpt.best_path)

    # ------------------------------------------------------------------------------------------------------------
    def _has_student_policy(self) -> bool:
        return self.recipe.precision == "auto" or self.recipe.channels_last is not False

    def _student_context(self, mode: Mode | None, device: torch.device):
        # with precision auto the engine owns the autocast; a forced precision is Accelerate's (fp16's grad scaler)
        if mode is None or self.recipe.precision != "auto":
            return contextlib.nullcontext()
        return mode_context(mode, device.type)

    def _student_mode(self, scheme: TrainableScheme, model: torch.nn.Module, batch: dict, state: TrainState) -> Mode:
        device = self.accelerator.device
        raw = self.accelerator.unwrap_model(model)  # measured without DDP: nothing to all-reduce while measuring
        return decide_student(self.recipe, self.accelerator, lambda b: scheme.step(raw, b, state), model, batch,
                              self.run_dir / "student_policy.json", lambda m: self._student_context(m, device),
                              None if self.quiet else self.console)

    def _compile_failed(self, modules: list[torch.nn.Module], err: BaseException) -> None:
        for m in modules:
            m._compiled_call_impl = None  # nn.Module.compile's slot: None is the eager forward again
        line = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
        self.console.print(f"student: torch.compile failed ({line}); training eagerly", markup=False, soft_wrap=True)
        record = self.run_dir / "student_policy.json"
        if self._has_student_policy() and record.is_file() and self.accelerator.is_main_process:
            note_compile_error(record, line)

    def _check_now(self, device: torch.device) -> bool:
        """Whether to test the loss for NaN/inf at every step: on the CPU reading a value costs nothing; on a GPU it
        stalls the pipeline, so the test rides on the device sums, read every ``log_every_steps``."""
        return self.check_every_step if self.check_every_step is not None else device.type == "cpu"

    def _read(self, sums: DeviceSums, scheme: TrainableScheme, batch: dict, out: Any, lr: float, epoch: int,
              b: int) -> dict[str, Any]:
        now, first_bad = sums.read()
        if first_bad is not None:
            self._raise_nonfinite(scheme, batch, out, lr, f"at epoch {epoch + 1}, between batch {first_bad} and {b}")
        return now

    def _raise_nonfinite(self, scheme: TrainableScheme, batch: dict, out: Any, lr: float, where: str) -> None:
        raise KdkitError(f"loss became {float(out.loss.detach())} {where} (terms: {_fmt_terms(out.terms)}): "
                         f"{_nonfinite_cause(scheme, batch, out, lr)}")

    def _global_sums(self, sums: dict[str, Any]) -> dict[str, Any]:
        """Training sums over every data-parallel process (one all-reduce); unchanged in a single process.

        Every process computes the same terms each step, so the term names agree; ``seconds`` stays this process's.
        """
        acc = self.accelerator
        if acc.num_processes == 1:
            return sums
        names = sorted(sums["terms"])
        vec = torch.tensor([sums["loss"], sums["correct"], sums.get("n_labelled", 0), sums["n"]]
                           + [sums["terms"][k] for k in names], dtype=torch.float64, device=acc.device)
        vec = acc.reduce(vec, reduction="sum").tolist()
        out = dict(sums, loss=vec[0], correct=int(vec[1]), n=int(vec[3]), terms=dict(zip(names, vec[4:], strict=True)))
        if "n_labelled" in sums or vec[2]:
            out["n_labelled"] = int(vec[2])
        return out

    def _epoch_record(self, epoch: int, sums: dict[str, Any], seconds: float, lr: float) -> dict[str, Any]:
        n = max(1, sums["n"])
        rec: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": sums["loss"] / n}
        for k, v in sums["terms"].items():
            rec[f"train_{k}"] = v / n
        if sums.get("n_labelled"):
            rec["train_top1"] = 100.0 * sums["correct"] / sums["n_labelled"]
        rec["samples"] = sums["n"]  # trained on this epoch, over all data-parallel processes
        rec["train_seconds"] = seconds
        rec["images_per_s"] = sums["n"] / max(seconds, 1e-9)
        return rec

    def _save(self, model, optimizer, state: TrainState, batch_in_epoch: int, history, best, partial) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.ckpt.save(acc.unwrap_model(model), optimizer, {
                "epoch": state.epoch, "step": state.step, "batch_in_epoch": batch_in_epoch,
                "history": history, "best": best, "partial": partial,
            })

    def _write_metrics(self, history: list[dict[str, Any]]) -> None:
        if self.accelerator.is_main_process:
            text = "".join(json.dumps(h) + "\n" for h in history)
            atomic_write_text(self.run_dir / "metrics.jsonl", text)

    def _progress(self, epoch: int, total: int):
        return _ProgressCtx(None if self.quiet or not self.accelerator.is_main_process else self.console,
                            f"epoch {epoch + 1}/{self.recipe.epochs}", total)


class _ProgressCtx:
    def __init__(self, console: Console | None, desc: str, total: int) -> None:
        self.console, self.desc, self.total = console, desc, total
        self.prog: Progress | None = None

    def __enter__(self):
        if self.console is None:
            return None, None
        self.prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                             console=self.console, transient=True)
        self.prog.__enter__()
        task = self.prog.add_task(self.desc, total=self.total, info="")
        return self.prog, task

    def __exit__(self, *exc: object) -> None:
        if self.prog is not None:
            self.prog.__exit__(*exc)


class DeviceSums:
    """Sums of a part of an epoch (loss × batch size, each term × batch size, correct top-1 counts), kept as device
    tensors so that adding a step costs no host sync; :meth:`read` turns them into numbers with one transfer.

    ``base``: host sums to continue from (a resumed mid-epoch checkpoint's ``partial``); ``start``: the batch index
    of the first step added. Batch sizes are shapes, known on the host, so the sample count ``n`` is a plain int.
    Each sum starts from its ``base`` value and adds step by step in float64, so the figures are bit for bit those
    of adding ``float(loss) * batch_size`` on the host as before.
    """

    def __init__(self, device: torch.device, base: dict[str, Any] | None = None, start: int = 0) -> None:
        self.device = device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.base = base or {"loss": 0.0, "terms": {}, "correct": 0, "n": 0, "seconds": 0.0}
        self.sums: dict[str, torch.Tensor] = {}  # "loss", "correct", "labelled", "term:<name>"
        self.bad: torch.Tensor | None = None  # the first batch index whose loss was not finite (inf while none)
        self.n, self.start, self.steps = 0, start, 0

    def _add(self, key: str, v: torch.Tensor, base: float) -> None:
        v = v.detach().to(self.dtype)
        acc = self.sums.get(key)
        self.sums[key] = (v + base) if acc is None else acc.add_(v)

    def add(self, out: Any, batch: dict) -> None:
        x = batch["input"]
        bs = int(x.shape[0]) if hasattr(x, "shape") else len(batch["target"])
        self._add("loss", out.loss.detach().to(self.dtype) * bs, self.base["loss"])
        for k, v in out.terms.items():
            v = torch.as_tensor(v, device=self.device).detach().to(self.dtype)
            self._add(f"term:{k}", v * bs, self.base["terms"].get(k, 0.0))
        y = batch["target"] if getattr(out, "target", None) is None else out.target  # a scheme's own batch
        if y.ndim == 1:
            keep = y >= 0
            self._add("correct", ((out.logits.detach().argmax(1) == y) & keep).sum(), self.base["correct"])
            self._add("labelled", keep.sum(), self.base.get("n_labelled", 0))
        # the batch where the loss first went non-finite (inf while it stays finite): device ops only, no sync
        idx = torch.where(torch.isfinite(out.loss.detach()), math.inf, float(self.start + self.steps)).to(self.dtype)
        self.bad = idx if self.bad is None else torch.minimum(self.bad, idx)
        self.n += bs
        self.steps += 1

    def read(self) -> tuple[dict[str, Any], int | None]:
        """(host sums including ``base``, the first non-finite batch index or None) — one device-to-host copy."""
        keys = list(self.sums)
        parts = [self.sums[k] for k in keys] + ([self.bad] if self.bad is not None else [])
        vec = torch.stack(parts).tolist() if parts else []
        got = dict(zip(keys, vec, strict=False))
        out = dict(self.base, loss=got.get("loss", self.base["loss"]), correct=int(got.get("correct",
                   self.base["correct"])), n=self.base["n"] + self.n, terms=dict(self.base["terms"]))
        for k in keys:
            if k.startswith("term:"):
                out["terms"][k[5:]] = got[k]
        if "labelled" in got or "n_labelled" in self.base:
            out["n_labelled"] = int(got.get("labelled", self.base.get("n_labelled", 0)))
        bad = vec[-1] if self.bad is not None else math.inf
        return out, (None if math.isinf(bad) else int(bad))


def _iter_from(loader: Any, start: int):
    if start and hasattr(loader, "iter_from"):
        return loader.iter_from(start)
    return islice(iter(loader), start, None) if start else iter(loader)


def _nonfinite_cause(scheme: TrainableScheme, batch: dict, out: Any, lr: float) -> str:
    """The likeliest cause of a non-finite loss, checked in order: the data, the teacher, the student, one term."""
    x = batch.get("input")
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        return "the batch's input holds NaN/inf values — check the data (and data.mean/std)"
    teacher = scheme.explain_nonfinite(batch)
    if teacher:
        return teacher
    if not bool(torch.isfinite(out.logits.detach()).all()):
        return (f"the student's outputs are NaN/inf, so training diverged — lower optim.lr (now {lr:.3g}), set "
                f"grad_clip, or lower the term weights")
    bad = [k for k, v in out.terms.items() if not math.isfinite(float(v))]
    if bad:
        return (f"term(s) {', '.join(bad)} are non-finite while the student's outputs are finite — check their "
                f"params (temperature, eps, ...) and weights")
    return "check the term weights, then lower optim.lr"


def _fmt_terms(terms: dict[str, Any]) -> str:
    return " ".join(f"{k} {float(v):.4g}" for k, v in terms.items())


def _progress_info(sums: dict[str, Any], elapsed: float, lr: float) -> str:
    n = max(1, sums["n"])
    terms = " ".join(f"{k} {v / n:.4f}" for k, v in sums["terms"].items())
    return f"loss {sums['loss'] / n:.4f} | {terms} | lr {lr:.3g} | {sums['n'] / max(elapsed, 1e-9):,.0f} img/s"


def _epoch_line(rec: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {rec['epoch']}/{epochs}", f"loss {rec['train_loss']:.4f}"]
    parts += [f"{k[6:]} {v:.4f}" for k, v in rec.items() if k.startswith("train_") and k not in
              ("train_loss", "train_top1", "train_seconds")]
    if "val_top1" in rec:
        parts.append(f"val top1 {rec['val_top1']:.2f}%")
    parts.append(f"{rec['images_per_s']:,.0f} img/s")
    return " · ".join(parts)
