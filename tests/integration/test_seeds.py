"""``kdkit seeds``: real runs (an MLP on 300 real MNIST digits, 2 epochs) over two seeds.

The table's numbers are checked against an independent computation from the runs' ``metrics.jsonl`` (numpy, ddof=1);
the paired gain against the per-seed differences; a rerun must read the finished runs, not retrain them. Numbers are
compared with a tolerance of 1e-9: both sides are float64 means/stds of a handful of values below 100, so they agree to
a few float64 ulps (eps 2.2e-16 × 100 × a few operations); 1e-9 leaves a wide margin and still catches any wrong value.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kdkit
from kdkit.errors import ConfigError

BASE = {"data": {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 300},
        "student": {"name": "mlp", "params": {"hidden": [32]}}, "optim": {"name": "adamw", "lr": 0.003},
        "schedule": {"name": "onecycle"}, "epochs": 2}
TOL = 1e-9


def _recipes(out: Path) -> tuple[dict, dict]:
    scratch = dict(BASE, name="scratch", output_dir=str(out), terms=[{"name": "ce"}])
    ls = dict(BASE, name="ls", output_dir=str(out), terms=[{"name": "ce", "params": {"label_smoothing": 0.1}}])
    return scratch, ls


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "runs"
    scratch, ls = _recipes(out)
    result = kdkit.seeds([scratch, ls], seeds=[0, 1], baseline=scratch, quiet=True)
    return out, scratch, ls, result


def test_table_equals_an_independent_computation_from_metrics(study):
    out, _, _, result = study
    assert result.json_path == out / "seeds" / "seeds.json" and result.md_path.is_file()
    assert json.loads(result.json_path.read_text()) == json.loads(json.dumps(result.table))
    assert len(result.trained) == 4 and not result.reused
    for name in ("scratch", "ls"):
        row = result.table["recipes"][name]
        best, last, ips, secs = [], [], [], []
        for seed in (0, 1):
            run = out / f"{name}-seed{seed}"
            ms = _metrics(run)
            assert len(ms) == 2 and (run / "checkpoints" / "best.safetensors").is_file()
            best.append(max(m["val_top1"] for m in ms))
            last.append(ms[-1]["val_top1"])
            ips.append(sum(m["samples"] for m in ms) / sum(m["train_seconds"] for m in ms))
            secs.append(sum(m["train_seconds"] for m in ms))
        for key, xs in (("best_top1", best), ("last_top1", last), ("images_per_s", ips), ("train_seconds", secs)):
            assert abs(row[key]["mean"] - np.mean(xs)) < TOL * max(1.0, abs(np.mean(xs))), key
            assert abs(row[key]["std"] - np.std(xs, ddof=1)) < TOL * max(1.0, abs(np.mean(xs))), key
    # the seeds differ for real: different runs, not one run read twice
    assert _metrics(out / "scratch-seed0") != _metrics(out / "scratch-seed1")
    md = result.md_path.read_text()
    assert "best-epoch val top-1" in md and "last-epoch val top-1" in md and "sample std" in md
    assert "scratch (baseline)" in md


def test_gain_is_paired_per_seed(study):
    out, _, _, result = study
    row = result.table["recipes"]["ls"]
    diffs = [max(m["val_top1"] for m in _metrics(out / f"ls-seed{s}"))
             - max(m["val_top1"] for m in _metrics(out / f"scratch-seed{s}")) for s in (0, 1)]
    gain = row["gain_best_top1"]
    assert gain["seeds"] == [0, 1] and np.allclose(gain["values"], diffs, atol=TOL, rtol=0)
    assert abs(gain["mean"] - np.mean(diffs)) < TOL and abs(gain["std"] - np.std(diffs, ddof=1)) < TOL
    last_diffs = [_metrics(out / f"ls-seed{s}")[-1]["val_top1"] - _metrics(out / f"scratch-seed{s}")[-1]["val_top1"]
                  for s in (0, 1)]
    assert abs(row["gain_last_top1"]["mean"] - np.mean(last_diffs)) < TOL
    assert "gain_best_top1" not in result.table["recipes"]["scratch"]  # no gain of the baseline against itself


def test_rerun_reads_finished_seeds_and_does_not_retrain(study):
    out, scratch, ls, result = study
    files = [out / f"{n}-seed{s}" / f for n in ("scratch", "ls") for s in (0, 1)
             for f in ("metrics.jsonl", "checkpoints/best.safetensors", "summary.json")]
    before = {f: f.stat().st_mtime_ns for f in files}
    again = kdkit.seeds([scratch, ls], seeds=[0, 1], baseline=scratch, quiet=True)
    assert again.trained == [] and len(again.reused) == 4
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert again.table["recipes"] == result.table["recipes"]


def test_cli_prints_the_table_and_reuses_runs(study, tmp_path):
    out, scratch, ls, result = study
    paths = []
    for r in (scratch, ls):
        p = tmp_path / f"{r['name']}.yaml"
        p.write_text(json.dumps(r))  # JSON is YAML
        paths.append(str(p))
    kdkit_bin = Path(sys.executable).parent / "kdkit"
    cmd = [str(kdkit_bin), "seeds", *paths, "--seeds", "0", "1", "--baseline", paths[0], "--out", str(tmp_path / "t")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "0 run(s) trained, 4 finished already" in proc.stdout
    table = json.loads((tmp_path / "t" / "seeds.json").read_text())
    assert table["recipes"] == json.loads(json.dumps(result.table["recipes"]))
    assert "| ls | 0 1 |" in proc.stdout
    bad = subprocess.run([str(kdkit_bin), "seeds", paths[0], "--seeds", "x"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--seeds: 'x' is not an integer seed" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_report_shows_the_seeds_table(study, tmp_path):
    from kdkit.errors import KdkitError
    from kdkit.report import write_report

    out, scratch, ls, result = study
    runs = sorted(out.glob("*-seed*"))
    assert len(runs) == 4
    page = write_report(runs, tmp_path / "rep", measure=False,
                        studies=[result.md_path.parent]).read_text()
    assert "Seeds study" in page and "paired" in page
    gain = result.table["recipes"]["ls"]["gain_best_top1"]
    assert f"{gain['mean']:+.2f} ± {gain['std']:.2f}" in page  # the paired gain, as kdkit seeds computed it
    best = result.table["recipes"]["scratch"]["best_top1"]
    assert f"{best['mean']:.2f} ± {best['std']:.2f}" in page
    with pytest.raises(KdkitError, match=r"report --study: '.*' holds neither seeds.json"):
        write_report(runs, tmp_path / "rep2", measure=False, studies=[tmp_path])


def test_bad_inputs_are_one_line_errors(tmp_path):
    scratch, _ = _recipes(tmp_path)
    with pytest.raises(ConfigError, match="share a name"):
        kdkit.seeds([scratch, dict(scratch)], seeds=[0])
    with pytest.raises(ConfigError, match="repeats a seed"):
        kdkit.seeds([scratch], seeds=[0, 0])
    # a finished run of another recipe under the same name is refused, not read
    kdkit.seeds([dict(scratch, epochs=1)], seeds=[0], quiet=True)
    with pytest.raises(ConfigError, match="different recipe"):
        kdkit.seeds([dict(scratch, epochs=1, optim={"name": "adamw", "lr": 0.01})], seeds=[0], quiet=True)
