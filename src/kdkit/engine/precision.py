"""Execution modes chosen by measurement: what a mode is, how to run in it, and how to pick one (teacher and student).

A *mode* is a precision (fp32, or autocast to bf16/fp16) and a memory format (channels-last or not). Which is fastest
depends on the machine — bf16 is fast on CPUs with AVX-512 BF16 or AMX and on recent GPUs, but emulated and *slower*
on an AVX2-only CPU — so kdkit measures instead of guessing from the CPU's name. :func:`choose` is the one decision,
a pure function of the measurements: the fastest mode whose outputs agree with fp32, kept only when it beats fp32 by a
margin larger than timing noise.

The teacher's policy is :mod:`kdkit.teachers.policy` (outputs compared by KL and argmax); the student's is
:func:`measure_student` (one training step compared by loss and gradient direction), run by the engine.
"""

from __future__ import annotations

import contextlib
import copy
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdkit.errors import ConfigError
from kdkit.utils import atomic_write_text, cpu_info

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Mode:
    """One way to run a model."""

    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast to that dtype)
    channels_last: bool = False  # model and input in torch.channels_last (4-D inputs only)

    @property
    def label(self) -> str:
        return self.precision + ("+channels_last" if self.channels_last else "")


FP32 = Mode()


@dataclass
class Measurement:
    """What one mode cost and how far it is from fp32 (``agree``: named figures, e.g. KL and argmax agreement)."""

    mode: Mode
    seconds: float  # median time of one run on the measured batch
    agree: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # the mode failed to run (unsupported dtype or op): never chosen
    rounds: tuple[float, ...] = ()  # the time of each timed round (round i of every mode ran back to back)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode.label, **asdict(self.mode), "seconds": self.seconds, **self.agree,
                "error": self.error, "rounds": [round(t, 7) for t in self.rounds]}


def faster_rounds(m: Measurement, ref: Measurement) -> tuple[int, int]:
    """In how many of the rounds both were timed ``m`` ran faster than ``ref`` in the same round, and of how many."""
    pairs = list(zip(m.rounds, ref.rounds, strict=False))
    return sum(a < b for a, b in pairs), len(pairs)


def choose(measurements: Sequence[Measurement], agrees: Callable[[dict[str, float]], bool], min_gain: float = 0.05
           ) -> tuple[Mode, str]:
    """The mode to keep and why: the fastest mode that ran and ``agrees`` with fp32, if it is at least ``min_gain``
    faster than fp32 (smaller differences are timing noise, and fp32 is the exact reference) and, where both carry
    their timed rounds, faster than fp32 in at least three quarters of them (a median gain that half the rounds
    contradict is noise too: a 1 ms step's modes swap places from round to round).

    Pure function of the measurements. Without an fp32 measurement (a forced candidate set) the fastest agreeing mode
    is kept; when nothing agrees, fp32.
    """
    ok = [m for m in measurements if m.error is None and agrees(m.agree)]
    ref = next((m for m in measurements if m.mode == FP32 and m.error is None), None)
    if not ok:
        return FP32, "no candidate mode ran and agreed with fp32; running in fp32"
    best = min(ok, key=lambda m: m.seconds)
    if ref is None or best.mode == FP32:
        return best.mode, f"{best.mode.label} is the fastest agreeing mode ({best.seconds * 1e3:.1f} ms)"
    figures = ", ".join(f"{k} {v:.3g}" for k, v in best.agree.items())
    won, of = faster_rounds(best, ref)
    if best.seconds <= ref.seconds * (1.0 - min_gain) and (of == 0 or won >= 0.75 * of):
        rounds = f", faster in {won} of {of} rounds" if of else ""
        return best.mode, f"{best.mode.label} takes {best.seconds / ref.seconds:.2f}x the fp32 time{rounds} and " \
                          f"agrees with fp32 ({figures})"
    rejected = [m.mode.label for m in measurements if m not in ok]
    why = f"; {', '.join(rejected)} disagreed with fp32 or failed" if rejected else ""
    if best.seconds <= ref.seconds * (1.0 - min_gain):
        return FP32, (f"{best.mode.label} takes {best.seconds / ref.seconds:.2f}x the fp32 time but was faster in "
                      f"only {won} of {of} rounds: timing noise{why}")
    return FP32, (f"no agreeing mode is >= {min_gain:.0%} faster than fp32 (best: {best.mode.label} at "
                  f"{best.seconds / ref.seconds:.2f}x){why}")


@contextlib.contextmanager
def mode_context(mode: Mode, device_type: str) -> Iterator[None]:
    """Autocast as ``mode`` says; fp32 turns off any autocast the caller runs under."""
    if mode.precision == "fp32":
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        with torch.autocast(device_type, dtype=DTYPES[mode.precision]):
            yield


def candidates(precision: str, channels_last: bool | str, device_type: str, input_dims: int,
               field_name: str = "precision", fp16: bool = True) -> list[Mode]:
    """The modes ``auto`` measures (fp32 always first, as the reference); a forced setting gives one mode.

    fp16 is a candidate on GPUs only (CPU fp16 autocast has few fast kernels and a narrow range), and only where the
    caller can run it (``fp16``: a student needs a gradient scaler, which ``precision: fp16`` sets up).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"{field_name}: '{precision}' is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precs = ["fp32", "bf16"] + (["fp16"] if device_type == "cuda" and fp16 else [])
    else:
        precs = [precision]
    if channels_last == "auto":
        layouts = [False, True] if input_dims == 4 else [False]
    else:
        layouts = [bool(channels_last) and input_dims == 4]
    return [Mode(p, c) for p in precs for c in layouts]


def hardware(device: torch.device | str) -> dict[str, Any]:
    """What a recorded choice depends on: the GPU's name, or the CPU model and its SIMD flags (AVX2, AVX-512, VNNI,
    AVX-512 BF16, AMX), plus the instruction-set caps set in the environment, if any (``ATEN_CPU_CAPABILITY``,
    ``ONEDNN_MAX_CPU_ISA``, ...: the same CPU capped to AVX2 runs bf16 in other kernels). A recorded choice is
    reused only on equal hardware: a run resumed on another CPU kind (bf16 fast on one, emulated on an AVX2-only one)
    measures again."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device)}
    cpu = cpu_info()
    hw: dict[str, Any] = {"cpu_model": cpu["model"], "cpu_flags": cpu["simd"]}
    if cpu["isa"]["caps"]:  # an instruction set capped below the CPU's (an emulated AVX2-only CPU) is another kind
        hw["isa_caps"] = cpu["isa"]["caps"]
    return hw


def same_hardware(entry: dict[str, Any], device: torch.device | str) -> bool:
    """Whether a recorded choice was made on this device's hardware (a record without one, from an older kdkit, was
    not: it is measured again)."""
    return entry.get("device") == str(torch.device(device)) and entry.get("hardware") == hardware(device)


def clock() -> tuple[str, Callable[[], float]]:
    """One torch thread: every op runs on the calling thread, so its CPU time is the cost whatever else runs on the
    machine; otherwise wall time."""
    return ("cpu", time.thread_time) if torch.get_num_threads() == 1 else ("wall", time.perf_counter)


def timed_interleaved(run: Callable[[Mode], Any], modes: Sequence[Mode], repeats: int, device: torch.device,
                      min_seconds: float = 0.2, max_rounds: int = 25, rotate: bool = True
                      ) -> tuple[dict[Mode, Any], dict[Mode, list[float]], str]:
    """Run each mode once (warm-up: its output, or the error line when it fails), then timed rounds of every working
    mode (so machine load hits them alike); returns (first outputs, each mode's time in every round, clock name).

    Round ``r`` starts at the ``r``-th mode (mod their number): a mode that always ran first in its round measured
    slower than the same arithmetic run second (fp32 against fp32 + channels-last on a 784-64-10 MLP, whose layouts
    are the same bytes: slower in 70 of 82 runs, by a median 7 %), which was enough to pick a mode for nothing. At
    least ``repeats`` rounds, and more -- up to ``max_rounds`` -- while a mode has under ``min_seconds`` of timed
    runs: two rounds of a 1 ms step are noise, twenty-five cost a twentieth of a second. ``rotate=False`` keeps the
    modes' order in every round (the old behaviour; ``benchmarks/student_policy_stability.py`` measures what rotating
    changes).
    """
    name, tick = clock()
    outs: dict[Mode, Any] = {}
    for m in modes:
        try:
            outs[m] = run(m)
        except Exception as err:  # an unsupported dtype/op on this device: that mode is out
            outs[m] = _Failed(f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}")
    working = [m for m in modes if not isinstance(outs[m], _Failed)]
    times: dict[Mode, list[float]] = {m: [] for m in working}
    r = 0
    while working and (r < repeats or (r < max_rounds and min(sum(t) for t in times.values()) < min_seconds)):
        for i in range(len(working)):
            m = working[(r * rotate + i) % len(working)]
            t0 = tick()
            run(m)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[m].append(tick() - t0)
        r += 1
    return outs, times, name


@dataclass(frozen=True)
class _Failed:
    error: str


# ---------------------------------------------------------------------------------------------------- the student
@dataclass(frozen=True)
class StudentTolerance:
    """When a student mode "trains as well" as fp32, judged on one training step from the same weights and batch.

    ``loss``: the loss differs from fp32's by at most 2% (bf16 autocast rounds activations to 8 mantissa bits:
    ~0.2-1% on a small network's loss). ``grad_cos``: the gradient over every trainable parameter points the same way
    (cosine >= 0.99), so the optimiser takes the same step. A one-step check; the accuracy check over whole runs is
    benchmarks/step_speed.py --accuracy (docs/speed.md).
    """

    loss: float = 0.02
    grad_cos: float = 0.99
    min_gain: float = 0.05

    def agrees(self, figures: dict[str, float]) -> bool:
        return figures.get("loss_rel", 0.0) <= self.loss and figures.get("grad_cos", 1.0) >= self.grad_cos


def to_mode(module: torch.nn.Module, batch: dict, mode: Mode) -> dict:
    """Put ``module`` in ``mode``'s memory format and return ``batch`` with its input in it."""
    module.to(memory_format=torch.channels_last if mode.channels_last else torch.contiguous_format)
    return input_in(batch, mode)


def input_in(batch: dict, mode: Mode | None) -> dict:
    """``batch`` with a 4-D input in ``mode``'s memory format (the batch itself when nothing changes)."""
    x = batch.get("input")
    if mode is not None and mode.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
        return dict(batch, input=x.contiguous(memory_format=torch.channels_last))
    return batch


class _GeneratorSlots:
    """Every ``torch.Generator`` a submodule holds as an attribute (a loss term's own randomness: CRD's negatives,
    noisy-teacher noise), as it was when this snapshot was taken: :meth:`restore` puts each slot back -- the same
    generator's saved state, or the slot's earlier value (``None``) when the generator was created lazily since."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.before: dict[tuple[int, str], tuple[Any, torch.Tensor | None]] = {}
        for m in module.modules():
            for k, v in vars(m).items():
                if isinstance(v, torch.Generator):
                    self.before[(id(m), k)] = (v, v.get_state())
                elif v is None:
                    self.before[(id(m), k)] = (None, None)

    def restore(self) -> None:
        for m in self.module.modules():
            for k, v in list(vars(m).items()):
                if not isinstance(v, torch.Generator):
                    continue
                old, state = self.before.get((id(m), k), (None, None))
                if old is v and state is not None:
                    v.set_state(state)
                elif (id(m), k) in self.before:
                    setattr(m, k, old)
                else:
                    delattr(m, k)


def measure_student(step: Callable[[dict], Any], module: torch.nn.Module, batch: dict, modes: Sequence[Mode],
                    device: torch.device, tol: StudentTolerance = StudentTolerance(), repeats: int = 2,
                    context: Callable[[Mode], Any] | None = None, timing: dict[str, Any] | None = None
                    ) -> tuple[Mode, str, list[Measurement], str]:
    """Time one forward + backward of the student per mode on ``batch`` and compare it with fp32's.

    ``step(batch)`` returns the step output (``.loss``); ``context(mode)`` is what it runs under (default: autocast as
    the mode says). The module's parameters, buffers (BatchNorm statistics, memory banks), the global RNG and the
    generators its submodules hold are restored afterwards and gradients cleared, so the run continues as if nothing
    had been measured. Every compared step (fp32's reference included) starts from that same saved state: a step that
    updates a buffer (CRD's memory bank) or draws from its own generator (CRD's negatives) would otherwise compare
    fp32 with a later, different step and reject every mode (fp32 against itself measured grad_cos 0.97 for CRD).
    ``timing``: keyword arguments for :func:`timed_interleaved` (rounds, rotation).
    Returns (chosen mode, reason, measurements, clock name).
    """
    context = context or (lambda m: mode_context(m, device.type))
    saved = copy.deepcopy(module.state_dict())
    generators = _GeneratorSlots(module)
    params = [p for p in module.parameters() if p.requires_grad]
    was_training = module.training

    def run(mode: Mode) -> tuple[float, torch.Tensor]:
        b = to_mode(module, batch, mode)
        for p in params:
            p.grad = None
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), context(mode):
            out = step(b)
        out.loss.backward()
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float() for p in params])
        return float(out.loss.detach()), grad

    def compare(mode: Mode) -> tuple[float, torch.Tensor]:
        # Agreement is judged in eval mode: dropout masks are drawn in memory order, so channels-last drops other
        # elements than contiguous would (same distribution, other values) -- a difference of randomness, not of
        # numerics. Eval mode leaves only the numerics; the saved state and generators make every compared step the
        # same step.
        module.load_state_dict(saved)
        generators.restore()
        module.eval()
        try:
            return run(mode)
        finally:
            module.train(was_training)

    try:
        outs, times, clock_name = timed_interleaved(run, modes, repeats, device, **(timing or {}))
        measured = []
        ref = compare(FP32) if FP32 in times else None
        for m in modes:
            if m not in times:
                measured.append(Measurement(m, float("inf"), {}, outs[m].error))
                continue
            fig: dict[str, float] = {}
            if ref is not None:
                o = compare(m)
                fig["loss_rel"] = abs(o[0] - ref[0]) / max(abs(ref[0]), 1e-12)
                fig["grad_cos"] = float(torch.nn.functional.cosine_similarity(o[1].double(), ref[1].double(), dim=0))
            measured.append(Measurement(m, statistics.median(times[m]), fig, rounds=tuple(times[m])))
        if len(modes) == 1:
            mode, why = modes[0], "forced by the recipe"
        else:
            mode, why = choose(measured, tol.agrees, tol.min_gain)
    finally:
        module.load_state_dict(saved)
        generators.restore()
        for p in params:
            p.grad = None
    to_mode(module, batch, mode)
    return mode, why, measured, clock_name


def decide_student(recipe: Any, acc: Any, step: Callable[[dict], Any], model: torch.nn.Module, batch: dict,
                   record: Path, context: Callable[[Mode], Any], console: Any = None) -> Mode:
    """The student's mode for the recipe's ``precision``/``channels_last`` on the first ``batch``: reused from
    ``record`` (a resumed run keeps its choice), forced, or measured (:func:`measure_student`; ``step(batch)`` runs
    the unwrapped module, so under data parallelism nothing is all-reduced; then every process takes rank 0's
    choice). Puts the trainable module in that memory format
    and writes the choice with its measurements to ``record`` (``RUN/student_policy.json``)."""
    device = acc.device
    raw = acc.unwrap_model(model)
    x = batch.get("input")
    dims = x.dim() if isinstance(x, torch.Tensor) else 0
    request = {"precision": recipe.precision, "channels_last": recipe.channels_last}
    # a forced precision stays Accelerate's (its autocast, fp16's grad scaler); only the memory format is chosen here
    modes = candidates(recipe.precision if recipe.precision == "auto" else "fp32", recipe.channels_last, device.type,
                       dims, "precision", fp16=False)
    entry: dict[str, Any] | None = None
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("request") == request and same_hardware(saved, device):
            entry = dict(saved, reused=True)
            entry.pop("compile_error", None)  # this run compiles (or fails to) afresh
        elif saved.get("request") == request and console is not None and acc.is_main_process:
            console.print(f"student: {record} was measured on {saved.get('hardware') or 'unrecorded hardware'}; "
                          f"measuring again on {hardware(device)}", markup=False, soft_wrap=True)
    # a forced bf16/fp16 is Accelerate's autocast, not this layer's: the record names it (what the run trains in),
    # the mode this layer applies stays fp32 in precision
    accelerate_autocast = recipe.precision in ("bf16", "fp16")
    if entry is not None:
        mode = Mode("fp32" if accelerate_autocast else entry["precision"], entry["channels_last"])
    else:
        measured: list[Measurement] = []
        clock_name = ""
        if len(modes) == 1:
            mode, why = modes[0], "forced by the recipe"
        else:
            # on the unwrapped module: under data parallelism the measuring steps must not all-reduce anything
            mode, why, measured, clock_name = measure_student(step, raw, batch, modes, device, context=context)
            if acc.num_processes > 1:  # every process trains in rank 0's choice
                idx = torch.tensor([modes.index(mode)], device=device)
                torch.distributed.broadcast(idx, 0)
                mode = modes[int(idx)]
        trains = Mode(recipe.precision, mode.channels_last) if accelerate_autocast else mode
        if accelerate_autocast:
            why += f" ({recipe.precision}: Accelerate's autocast)"
        entry = {"request": request, "chosen": trains.label, "precision": trains.precision,
                 "channels_last": mode.channels_last, "reason": why, "device": str(device),
                 "hardware": hardware(device),
                 "batch_shape": list(x.shape) if dims else None, "threads": torch.get_num_threads(),
                 "clock": clock_name, "tolerance": asdict(StudentTolerance()),
                 # compile: true compiles the student after this choice: the modes were measured eagerly
                 "measured_eagerly": bool(getattr(recipe, "compile", False)),
                 "measurements": [m.as_dict() for m in measured]}
    to_mode(raw, batch, mode)
    if acc.is_main_process:
        atomic_write_text(record, json.dumps(entry, indent=2) + "\n")
        if console is not None:
            figures = ", ".join(f"{m['mode']} {m['seconds'] * 1e3:.1f} ms" for m in entry["measurements"]
                                if m.get("error") is None)
            console.print(f"student: {entry['chosen']} — {entry['reason']}" + (f" [{figures}]" if figures else ""),
                          markup=False, soft_wrap=True)
    return mode


def note_compile_error(record: Path, line: str) -> None:
    """Add the student's ``torch.compile`` failure (one line) to its policy record: it trained eagerly in the mode
    the record gives."""
    try:
        entry = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    atomic_write_text(record, json.dumps(dict(entry, compile_error=line), indent=2) + "\n")


__all__ = ["DTYPES", "FP32", "PRECISIONS", "Measurement", "Mode", "StudentTolerance", "candidates", "choose", "clock",
           "decide_student", "faster_rounds", "hardware", "input_in", "measure_student", "mode_context",
           "note_compile_error", "same_hardware", "timed_interleaved", "to_mode"]
