"""How a frozen teacher runs: precision, memory format and compilation, chosen by measurement (``teacher_policy``).

A teacher only runs forward, so it can often run in bfloat16 (CPUs with AVX-512 BF16 or AMX, any recent GPU) or
float16 (GPUs) and in channels-last memory format at a fraction of the fp32 cost — or not: on a CPU without bf16
instructions bf16 is emulated and *slower*. So kdkit does not guess from the CPU's name; with ``precision: auto`` /
``channels_last: auto`` it runs every candidate mode on the first batch, checks that its outputs agree with fp32 within
a stated tolerance (:class:`Tolerance`), and keeps the fastest agreeing one (:func:`choose`, a pure function of the
measurements). The choice and every measurement go to the run directory (``teacher_policy.json``) and to the console.

Agreement, per output tensor (the logits and every tapped feature, flattened per sample to (B, D)):
``KL(softmax(ref / T) || softmax(out / T))`` averaged over the batch (T = :data:`AGREE_T`); for the logits, the
fraction of samples whose argmax (the class decision) is the same; for the features, the relative L2 error
``||out - ref|| / ||ref||``. The worst tensor decides.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor

from kdkit.engine.precision import (
    FP32,
    PRECISIONS,
    Measurement,
    Mode,
    candidates,
    clock,
    hardware,
    mode_context,
    same_hardware,
    timed_interleaved,
)
from kdkit.engine.precision import choose as choose_mode
from kdkit.types import ModelOutput
from kdkit.utils import atomic_write_text

AGREE_T = 4.0  # the temperature KD terms typically use; agreement is judged on the distribution they read


@dataclass(frozen=True)
class Tolerance:
    """When a teacher mode agrees with fp32, and when it is worth switching.

    ``kl``: 1e-3 nats per sample at T = 4. bf16 keeps 8 mantissa bits (relative error 2^-9 ≈ 0.2% per rounding);
    logit errors of ~0.05 after a deep network give KL ≈ E[(δ/T)²]/2 ≈ 1e-4, so 1e-3 passes a sound bf16 forward and
    fails one that really changes the teacher's distribution. ``argmax``: at least 99% of samples keep their top
    class (a tie that flips is allowed, a shifted decision is not). ``min_gain``: a mode replaces fp32 only when it is
    at least 5% faster — smaller differences are within timing noise, and fp32 is the exact reference.
    ``feature_rel``: a tapped feature's relative L2 error is at most 5% (bf16 rounding through the cnn_teacher gives
    0.3-0.4%; a feature read by FitNets' MSE or attention transfer then moves by far less than the student's own
    error). The argmax test is for the logits only: the argmax of a flattened feature map is the position of its
    largest activation among thousands, often a near-tie (median top-2 gap 4-7% of the maximum on the cnn_teacher's
    stages), which bf16 rounding flips in ~5% of the samples while the map itself moves by 0.3%.
    """

    kl: float = 1e-3
    argmax: float = 0.99
    min_gain: float = 0.05
    feature_rel: float = 0.05

    def agrees(self, figures: dict[str, float]) -> bool:
        return (figures.get("kl", 0.0) <= self.kl and figures.get("argmax_agreement", 1.0) >= self.argmax
                and figures.get("feature_rel_err", 0.0) <= self.feature_rel)


def choose(measurements: Sequence[Measurement], tol: Tolerance = Tolerance()) -> tuple[Mode, str]:
    """The teacher mode to keep and why (:func:`kdkit.engine.precision.choose` with the teacher's tolerance)."""
    return choose_mode(measurements, tol.agrees, tol.min_gain)


def agreement(ref: ModelOutput, out: ModelOutput, temperature: float = AGREE_T) -> tuple[float, float, float]:
    """(worst mean KL, logits' argmax agreement, worst feature relative error) of ``out`` against ``ref``.

    Each tensor (the logits and every feature) is flattened to (B, D) and compared in float64:
    ``KL(softmax(ref/T) || softmax(out/T))`` summed over D and averaged over B, the worst over all tensors; the
    fraction of rows whose logits' argmax agrees; and, over the features, the worst ``||out - ref|| / ||ref||`` over
    the whole batch (0.0 without features).
    """
    kl_worst, agree, rel_worst = 0.0, 1.0, 0.0
    pairs = [(ref.logits, out.logits)] + [(ref.features[k], out.features[k]) for k in ref.features
                                          if k in out.features]
    for i, (a, b) in enumerate(pairs):
        a = a.detach().reshape(a.shape[0], -1).double()
        b = b.detach().reshape(b.shape[0], -1).double()
        if a.shape != b.shape:
            return float("inf"), 0.0, float("inf")
        la, lb = F.log_softmax(a / temperature, 1), F.log_softmax(b / temperature, 1)
        kl = float((la.exp() * (la - lb)).sum(1).mean())
        if not (kl == kl):  # NaN: outputs overflowed (fp16 range)
            kl = float("inf")
        kl_worst = max(kl_worst, kl)
        if i == 0:
            agree = float((a.argmax(1) == b.argmax(1)).double().mean())
        else:
            rel = float((b - a).norm() / a.norm().clamp_min(1e-30))
            rel_worst = max(rel_worst, rel if rel == rel else float("inf"))
    return kl_worst, agree, rel_worst


def keep_compiled(eager_seconds: float, compiled_seconds: float, compile_seconds: float, min_gain: float = 0.05
                  ) -> tuple[bool, str]:
    """Whether a compiled forward replaces the eager one, and why (``compile: auto``); a pure function of the times.

    Kept when the compiled forward takes at most ``1 - min_gain`` of the eager time (5%: smaller differences are
    timing noise). Compilation time does not enter the decision: when it is made, compilation has already been
    paid, and from then on only the per-call times matter. It is reported as the break-even point instead,
    ``compile_seconds / (eager - compiled)`` calls, which says whether ``compile`` pays for a run of that length
    (the next run with the same teacher pays it again unless Inductor's cache holds the kernels).
    """
    ratio = compiled_seconds / eager_seconds if eager_seconds > 0 else float("inf")
    saved = eager_seconds - compiled_seconds
    payback = f"; compilation ({compile_seconds:.1f} s) is paid back after {compile_seconds / saved:.0f} calls" \
        if saved > 0 else ""
    if ratio <= 1.0 - min_gain:
        return True, f"compiled forward takes {ratio:.2f}x the eager time{payback}"
    return False, f"compiled forward takes {ratio:.2f}x the eager time, not {1 - min_gain:.2f}x or less{payback}"


@dataclass
class TeacherPolicy:
    """A recipe's ``teacher_policy``: what to try, how to judge it, where to record the choice.

    Args:
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16``.
        channels_last: ``auto`` | True | False.
        compile: ``torch.compile`` the teacher after the mode is chosen (falls back to eager with one line when
            compilation fails). True keeps the compiled teacher; ``auto`` keeps it only when :func:`keep_compiled`
            says so. Either way the compilation time and the compiled and eager forward times on the first batch
            go to the record (``compile``).
        freezing: compile with Inductor's ``freezing`` (weights folded into the graph as constants; safe for a
            frozen teacher, whose weights never change and which runs without autograd).
        device: run the teachers on this device (None: the student's); their outputs come back to the student's.
        tolerance: when a mode agrees with fp32.
        repeats: timed forwards per candidate at least (after one warm-up each), interleaved round by round; a cheap
            forward gets more rounds (:func:`kdkit.engine.precision.timed_interleaved`).
        record: JSON file the choice and measurements are written to (the run directory's ``teacher_policy.json``);
            a choice already recorded there for the same teacher, request and hardware (CPU model and SIMD flags, or
            GPU name) is reused, so a resumed run keeps it; on other hardware it is measured again.
        log: called with one line per teacher (the console).
        role: what the log lines call the model (``teacher``; ``model`` when ``kdkit eval`` runs a checkpoint).
    """

    precision: str = "fp32"
    channels_last: bool | str = False
    compile: bool | str = False
    device: str | None = None
    freezing: bool = True
    tolerance: Tolerance = field(default_factory=Tolerance)
    repeats: int = 3
    record: Path | None = None
    log: Callable[[str], None] | None = None
    role: str = "teacher"
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_spec(cls, spec: Any, record: Path | None = None, log: Callable[[str], None] | None = None
                  ) -> TeacherPolicy:
        """From the recipe's ``teacher_policy`` (a :class:`kdkit.recipe.TeacherPolicySpec`)."""
        return cls(precision=spec.precision, channels_last=spec.channels_last, compile=spec.compile,
                   device=getattr(spec, "device", None), record=record, log=log)

    @property
    def measures(self) -> bool:
        return self.precision == "auto" or self.channels_last == "auto"

    def request(self) -> dict[str, Any]:
        req = {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile}
        return req if self.device is None else {**req, "device": self.device}  # records made before it stay valid

    def decide(self, index: int, run: Callable[[Tensor, Mode], ModelOutput], x: Tensor) -> Mode:
        """Choose teacher ``index``'s mode on its first batch ``x``; ``run(x, mode)`` is one forward in that mode."""
        cands = candidates(self.precision, self.channels_last, x.device.type, x.dim(), "teacher_policy.precision")
        reused = self._recorded(index, x)
        if reused is not None:
            return reused
        clock_name = clock()[0]
        measured: list[Measurement] = []
        if len(cands) == 1:
            mode, why = cands[0], "forced by teacher_policy"
        else:
            ref = run(x, FP32)
            # each mode's first call is its warm-up (weight reorder, kernel choice); then interleaved timed rounds
            outs, times, clock_name = timed_interleaved(lambda m: run(x, m), cands, self.repeats, x.device)
            for m in cands:
                if m not in times:
                    measured.append(Measurement(m, float("inf"), {}, outs[m].error))
                else:
                    kl, agree, rel = agreement(ref, outs[m])
                    fig = {"kl": kl, "argmax_agreement": agree}
                    if ref.features:
                        fig["feature_rel_err"] = rel
                    measured.append(Measurement(m, statistics.median(times[m]), fig, rounds=tuple(times[m])))
            mode, why = choose(measured, self.tolerance)
        entry = {"teacher": index, "request": self.request(), "chosen": mode.label, **asdict(mode), "reason": why,
                 "batch_shape": list(x.shape), "device": str(x.device), "hardware": hardware(x.device),
                 "threads": torch.get_num_threads(),
                 "clock": clock_name, "tolerance": asdict(self.tolerance), "agreement_temperature": AGREE_T,
                 "measurements": [m.as_dict() for m in measured]}
        self.decisions.append(entry)
        self._write()
        if self.log is not None:
            figures = ", ".join(f"{m.mode.label} {m.seconds * 1e3:.1f} ms" if m.error is None else
                                f"{m.mode.label} failed" for m in measured)
            self.log(f"{self.role} {index}: {mode.label} — {why}" + (f" [{figures}]" if figures else ""))
        return mode

    def compiled(self, index: int, compile_seconds: float, eager_seconds: float, compiled_seconds: float,
                 clock_name: str) -> bool:
        """Record teacher ``index``'s compilation (first call's wall time, then eager and compiled forward times on
        the first batch) and say whether to keep the compiled teacher: always with ``compile: true``, by
        :func:`keep_compiled` with ``compile: auto``."""
        keep, why = keep_compiled(eager_seconds, compiled_seconds, compile_seconds, self.tolerance.min_gain)
        if self.compile is True:
            keep, why = True, "compile: true (" + why + ")"
        fig = {"requested": self.compile, "freezing": self.freezing, "kept": keep, "reason": why,
               "first_call_seconds": compile_seconds, "eager_seconds": eager_seconds,
               "compiled_seconds": compiled_seconds, "clock": clock_name}
        for d in self.decisions:
            if d["teacher"] == index:
                d["compile"] = fig
                d.pop("compile_error", None)
        self._write()
        if self.log is not None:
            self.log(f"{self.role} {index}: torch.compile {'kept' if keep else 'not kept'} — {why}")
        return keep

    def compile_failed(self, index: int, err: BaseException) -> None:
        line = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
        for d in self.decisions:
            if d["teacher"] == index:
                d["compile_error"] = line
        self._write()
        if self.log is not None:
            self.log(f"{self.role} {index}: torch.compile failed ({line}); running it eagerly")

    def _recorded(self, index: int, x: Tensor) -> Mode | None:
        if self.record is None or not self.record.is_file():
            return None
        try:
            saved = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        for d in saved.get("teachers", []):
            if d.get("teacher") != index or d.get("request") != self.request() \
                    or d.get("batch_shape", [None])[1:] != list(x.shape[1:]):
                continue
            if not same_hardware(d, x.device):  # another CPU kind (or GPU): what was fastest there may not be here
                if self.log is not None:
                    self.log(f"{self.role} {index}: the choice in {self.record} was measured on "
                             f"{d.get('hardware') or 'unrecorded hardware'}; measuring again")
                continue
            self.decisions.append(dict(d, reused=True))
            self._write()
            if self.log is not None:
                self.log(f"{self.role} {index}: {d['chosen']} (recorded in {self.record})")
            return Mode(d["precision"], d["channels_last"])
        return None

    def _write(self) -> None:
        if self.record is not None and self.record.parent.is_dir():
            atomic_write_text(self.record, json.dumps({"teachers": self.decisions}, indent=2) + "\n")


def recipe_policy(recipe: Any, record: Path | None) -> TeacherPolicy | None:
    """The recipe's ``teacher_policy`` (None for the default, plain fp32), recording its choice in ``record`` and
    saying it on stderr."""
    spec = recipe.teacher_policy
    if spec == type(spec)():
        return None
    console = Console(stderr=True, soft_wrap=True)
    return TeacherPolicy.from_spec(spec, record, log=lambda line: console.print(line, markup=False))


__all__ = ["AGREE_T", "FP32", "PRECISIONS", "Measurement", "Mode", "TeacherPolicy", "Tolerance", "agreement",
           "candidates", "choose", "keep_compiled", "mode_context", "recipe_policy", "timed_interleaved"]
