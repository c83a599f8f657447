"""Timings that tell the truth: an implausible batch-1 / batch-64 pair is re-measured, then flagged instead of
printed as a result; bench's speed-up column is computed against the teacher."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from kdkit.deploy.bench import BenchEntry, bench_models, to_markdown
from kdkit.deploy.measure import measure_batch_sizes

FAST = {"warmup": 0, "repeats": 3, "min_time_s": 0.0}


def test_a_larger_batch_slower_per_sample_is_remeasured_then_flagged():
    calls = {"n": 0}

    def disturbed_once(x):  # the first b64 measurement is disturbed, the re-measurement is not
        calls["n"] += 1
        time.sleep(0.003 if len(x) == 1 else (0.4 if calls["n"] <= 3 + 3 else 0.006))

    stats, flag = measure_batch_sizes(disturbed_once, lambda bs: torch.zeros(bs, 2), (1, 64), **FAST)
    assert flag is None and stats[64].per_sample_ms < stats[1].per_sample_ms

    def always_disturbed(x):
        time.sleep(0.002 if len(x) == 1 else 0.25)  # 3.9 ms per sample at 64 vs 2 ms at 1: not a property of a model

    stats, flag = measure_batch_sizes(always_disturbed, lambda bs: torch.zeros(bs, 2), (1, 64), **FAST)
    assert flag is not None and flag.startswith("implausible timing: per-sample time at batch 64")


def test_bench_speed_up_is_relative_to_the_teacher():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(256, 2048), nn.ReLU(), nn.Linear(2048, 10))
    student = nn.Sequential(nn.Linear(256, 16), nn.ReLU(), nn.Linear(16, 10))
    entries = [BenchEntry(name=n, model=m, example_shape=(256,)) for n, m in (("teacher", teacher), ("kd", student))]
    rows = bench_models(entries, batch_sizes=(1, 64), **FAST)
    t, s = rows
    for bs in (1, 64):
        if t.get("timing_flag") or s.get("timing_flag"):
            assert s[f"vs_teacher_b{bs}"] is None
            continue
        assert t[f"vs_teacher_b{bs}"] == pytest.approx(1.0)
        assert s[f"vs_teacher_b{bs}"] == pytest.approx(t[f"p50_ms_b{bs}"] / s[f"p50_ms_b{bs}"])
    md = to_markdown(rows)
    assert "× teacher b1" in md and "× teacher b64" in md and "speed-up b1" not in md
    with pytest.raises(Exception, match="teacher 'nope' is not among"):
        bench_models(entries[:1], batch_sizes=(1,), teacher="nope", **FAST)
