"""cpu_info reports what timings depend on, read from /proc/cpuinfo (checked against an independent parse)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdkit.deploy.measure import cpu_info


def test_cpu_info_matches_proc_cpuinfo():
    info = cpu_info()
    assert info["logical_cpus"] and info["model"]
    proc = Path("/proc/cpuinfo")
    if not proc.exists():
        pytest.skip("no /proc/cpuinfo on this OS")
    text = proc.read_text()
    flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    # The SIMD list is exactly the flags of interest this CPU has, whatever kind it is (AVX2-only or AVX-512/AMX).
    assert set(info["simd"]) == {f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                             "amx_tile", "amx_int8", "amx_bf16") if f in flags}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    if model:
        assert info["model"] == model
