"""A recorded teacher/student mode is reused only on the hardware it was measured on (issue 15): a run resumed on
another CPU kind (bf16 fast on AVX-512 BF16, emulated and slower on AVX2-only) measures again."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from kdkit.engine.precision import Mode, decide_student, hardware, same_hardware
from kdkit.models import create_model
from kdkit.teachers.frozen import FrozenTeacher
from kdkit.teachers.policy import TeacherPolicy
from kdkit.types import StepOutput
from kdkit.utils import cpu_info

# What a record written on an AVX2-only machine holds (faked: no such machine here).
OTHER_CPU = {"cpu_model": "AMD EPYC 7B12 64-Core Processor", "cpu_flags": ["avx2", "fma"]}


def test_hardware_names_this_cpu_model_and_its_simd_flags():
    hw, cpu = hardware("cpu"), cpu_info()
    assert hw == {"cpu_model": cpu["model"], "cpu_flags": cpu["simd"]} and hw["cpu_model"]
    assert same_hardware({"device": "cpu", "hardware": hw}, "cpu")
    assert not same_hardware({"device": "cpu", "hardware": OTHER_CPU}, "cpu")
    assert not same_hardware({"device": "cpu"}, "cpu")  # an older record without hardware: measured again


def _record(path, hw: dict, mode: Mode, x: torch.Tensor) -> None:
    path.write_text(json.dumps({"teachers": [{
        "teacher": 0, "request": {"precision": "auto", "channels_last": "auto", "compile": False},
        "chosen": mode.label, "precision": mode.precision, "channels_last": mode.channels_last, "reason": "faked",
        "batch_shape": list(x.shape), "device": "cpu", "hardware": hw, "measurements": []}]}))


def test_teacher_choice_from_another_cpu_is_measured_again(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn_teacher", num_classes=10, in_channels=1, image_size=28)
    x = torch.randn(8, 1, 28, 28)
    record = tmp_path / "teacher_policy.json"
    # a fp32+channels_last choice is what an AVX2 machine could record; here it must not be taken on trust
    _record(record, OTHER_CPU, Mode("fp32", True), x)
    lines: list[str] = []
    t = FrozenTeacher(model, policy=TeacherPolicy("auto", "auto", record=record, log=lines.append, repeats=1))
    t(x)
    saved = json.loads(record.read_text())["teachers"]
    assert len(saved) == 1 and saved[0].get("reused") is None and len(saved[0]["measurements"]) == 4
    assert saved[0]["hardware"] == hardware("cpu") and saved[0]["chosen"] == t.mode.label
    assert any("measuring again" in s and "AMD EPYC 7B12" in s for s in lines)

    # the same record on this machine's hardware is reused without measuring
    _record(record, hardware("cpu"), Mode("fp32", True), x)

    def never(*a):
        raise AssertionError("a choice recorded on this hardware must be reused, not measured again")

    assert TeacherPolicy("auto", "auto", record=record).decide(0, never, x) == Mode("fp32", True)


def _student_args(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn_student", num_classes=10, in_channels=1, image_size=28)
    batch = {"input": torch.randn(16, 1, 28, 28), "target": torch.randint(0, 10, (16,))}
    acc = SimpleNamespace(device=torch.device("cpu"), unwrap_model=lambda m: m, num_processes=1,
                          is_main_process=True)
    recipe = SimpleNamespace(precision="auto", channels_last="auto")
    steps: list[int] = []

    def step(b):
        steps.append(1)
        logits = model(b["input"])
        return StepOutput(loss=torch.nn.functional.cross_entropy(logits, b["target"]), logits=logits, terms={})

    return model, batch, acc, recipe, step, steps


def test_student_choice_from_another_cpu_is_measured_again(tmp_path):
    model, batch, acc, recipe, step, steps = _student_args(tmp_path)
    record = tmp_path / "student_policy.json"
    entry = {"request": {"precision": "auto", "channels_last": "auto"}, "chosen": "bf16+channels_last",
             "precision": "bf16", "channels_last": True, "reason": "faked", "device": "cpu", "hardware": OTHER_CPU,
             "measurements": []}
    record.write_text(json.dumps(entry))
    ctx = lambda m: torch.autocast("cpu", enabled=False)  # noqa: E731 - the engine's context, reduced to fp32 here
    mode = decide_student(recipe, acc, step, model, batch, record, ctx)
    saved = json.loads(record.read_text())
    assert steps and saved.get("reused") is None and len(saved["measurements"]) == 4
    assert saved["hardware"] == hardware("cpu") and saved["chosen"] == mode.label
    # recorded on this hardware: reused, no step run
    steps.clear()
    record.write_text(json.dumps(dict(entry, hardware=hardware("cpu"))))
    assert decide_student(recipe, acc, step, model, batch, record, ctx) == Mode("bf16", True) and not steps
    assert json.loads(record.read_text())["reused"] is True


def test_an_instruction_set_cap_is_another_cpu_kind(monkeypatch):
    """The same CPU with ATen and oneDNN capped to AVX2 (the emulation of docs/benchmarks.md) runs bf16 in other
    kernels: a choice recorded uncapped is not reused capped, and the effective ISA is reported."""
    for var in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(var, raising=False)
    plain = hardware("cpu")
    assert "isa_caps" not in plain  # records written without caps keep matching
    assert cpu_info()["isa"] == {"aten_capability": torch.backends.cpu.get_cpu_capability(), "caps": {}}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    capped = hardware("cpu")
    assert capped == dict(plain, isa_caps={"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not same_hardware({"device": "cpu", "hardware": plain}, "cpu")
    assert same_hardware({"device": "cpu", "hardware": capped}, "cpu")
    assert cpu_info()["isa"]["caps"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_a_forced_bf16_student_is_recorded_as_bf16_and_reused_without_a_second_autocast(tmp_path):
    """``precision: bf16`` trains under Accelerate's autocast; the record once said ``fp32`` (the mode this layer
    applies), so a reader of student_policy.json took a bf16 run for an fp32 one (a Fashion-MNIST MLP run with
    precision bf16 ends 0.18 points from its fp32 twin). The record names what the run trains in; the mode this layer
    applies stays fp32 in precision, on first use and on reuse."""
    model, batch, acc, recipe, step, steps = _student_args(tmp_path)
    recipe.precision, recipe.channels_last = "bf16", False
    record = tmp_path / "student_policy.json"
    ctx = lambda m: torch.autocast("cpu", enabled=False)  # noqa: E731
    assert decide_student(recipe, acc, step, model, batch, record, ctx) == Mode("fp32", False) and not steps
    saved = json.loads(record.read_text())
    assert (saved["chosen"], saved["precision"]) == ("bf16", "bf16") and "Accelerate" in saved["reason"]
    # reused (same request, same hardware): still no second autocast of this layer's own
    assert decide_student(recipe, acc, step, model, batch, record, ctx) == Mode("fp32", False)
    assert json.loads(record.read_text())["reused"] is True
