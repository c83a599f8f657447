"""The report's pure parts on synthetic runs: Pareto front, role inference, run loading, figures, page assembly."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from kdkit.errors import KdkitError
from kdkit.report import load_case_study, write_report
from kdkit.report.plots import axis_floor, plot_accuracy, plot_learning_curves, plot_pareto
from kdkit.report.runs import RunInfo, infer_roles, load_run, normalize_role, pareto_front, references_run, term_keys

# ----------------------------------------------------------------------------------------------------------------------
# Pareto front


def _reference_front(costs: np.ndarray, accs: np.ndarray) -> list[bool]:
    """Independent formulation: i is optimal iff its accuracy beats every strictly cheaper point and ties the best
    point of its own cost."""
    out = []
    for c, a in zip(costs, accs, strict=True):
        cheaper = accs[costs < c]
        same = accs[costs == c]
        out.append(bool((cheaper.size == 0 or a > cheaper.max()) and a == same.max()))
    return out


def test_pareto_front_small_case():
    costs = [1.0, 2.0, 3.0, 2.0, 0.5]
    accs = [90.0, 95.0, 94.0, 95.0, 80.0]
    # (3, 94) is beaten by (2, 95); the two (2, 95) tie, so neither beats the other.
    assert pareto_front(costs, accs) == [True, True, False, True, True]


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    costs = rng.integers(1, 6, size=25).astype(float)  # few distinct values: many ties on both axes
    accs = rng.integers(80, 86, size=25).astype(float)
    assert pareto_front(list(costs), list(accs)) == _reference_front(costs, accs)


def test_pareto_front_missing_values_never_optimal_nor_dominating():
    # The NaN-cost point is the most accurate; it must not knock out the others and must not be on the front.
    assert pareto_front([1.0, math.nan, 2.0], [90.0, 99.0, 95.0]) == [True, False, True]
    assert pareto_front([1.0, 2.0], [None, 95.0]) == [False, True]
    with pytest.raises(ValueError, match="2 costs but 1"):
        pareto_front([1.0, 2.0], [3.0])


def test_axis_floor_leaves_room_and_is_round():
    assert axis_floor(93.7, 98.3) == 90.0
    assert axis_floor(10.0, 98.0) == 0.0       # chance-level runs: the axis starts at 0
    f = axis_floor(99.5, 99.9)
    assert f <= 99.5 - 2.0 and f == pytest.approx(round(f * 2) / 2)


# ----------------------------------------------------------------------------------------------------------------------
# Runs and roles


def _hist(final: float, epochs: int = 4, terms: tuple[str, ...] = ("ce",)) -> list[dict]:
    out = []
    for e in range(1, epochs + 1):
        f = e / epochs
        rec = {"epoch": e, "lr": 0.01 * (1 - f) + 1e-4, "train_loss": 2.0 - 1.5 * f}
        for k, t in enumerate(terms):
            rec[f"train_{t}"] = (2.0 - 1.5 * f) * (1 + k)
        rec.update(train_top1=final * f, train_seconds=1.0, images_per_s=1000.0 + e,
                   val_top1=final - 10 * (1 - f), val_top5=99.0, val_loss=0.5)
        out.append(rec)
    return out


def _run(tmp: Path, name: str, student: str, teachers=(), terms=("ce",), final=90.0, **cfg) -> Path:
    d = tmp / name
    d.mkdir(parents=True)
    config = {"name": name, "data": {"name": "mnist_5k"}, "student": {"name": student, "params": {}},
              "teachers": [dict(t) for t in teachers], "terms": [{"name": t, "weight": 0.5} for t in terms],
              "scheme": {"name": "offline", "params": {}}, "epochs": 4, **cfg}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in _hist(final, terms=terms)))
    (d / "split.json").write_text(json.dumps({"train_idx": list(range(40)), "val_idx": list(range(10))}))
    return d


def _info(tmp: Path, *args, **kw) -> RunInfo:
    return load_run(_run(tmp, *args, **kw))


def test_roles_from_teacher_reference_and_same_student(tmp_path):
    # Neutral names: the roles must come from the recipes, not from the words "teacher"/"scratch".
    t = _info(tmp_path, "a", "cnn_teacher")
    s = _info(tmp_path, "b", "mlp")
    k = _info(tmp_path, "c", "mlp", teachers=[{"name": "cnn_teacher",
                                               "checkpoint": str(tmp_path / "a" / "checkpoints" / "best.safetensors")}],
              terms=("ce", "kd"))
    other = _info(tmp_path, "d", "resnet8")
    assert infer_roles([t, s, k, other]) == ["teacher", "scratch", "distilled", "scratch"]


def test_roles_relative_checkpoint_and_model_name_fallbacks(tmp_path):
    t = _info(tmp_path, "big", "cnn_teacher")
    k = _info(tmp_path, "small", "mlp", teachers=[{"name": "cnn_teacher", "checkpoint": "runs/elsewhere/big"}])
    assert references_run("runs/elsewhere/big", t.run_dir)            # the run dir's name is a path component
    assert not references_run("runs/elsewhere/bigger", t.run_dir)
    assert infer_roles([k, t]) == ["distilled", "teacher"]
    # No checkpoint link: the model a distilled run names as teacher makes the run a teacher.
    t2 = _info(tmp_path, "x1", "wrn16")
    k2 = _info(tmp_path, "x2", "mlp", teachers=[{"name": "wrn16"}])
    assert infer_roles([t2, k2]) == ["teacher", "distilled"]


def test_roles_names_soft_labels_schemes_and_given(tmp_path):
    assert infer_roles([_info(tmp_path, "my_teacher", "mlp")]) == ["teacher"]
    assert infer_roles([_info(tmp_path, "baseline_mlp", "mlp")]) == ["scratch"]
    assert infer_roles([_info(tmp_path, "solo", "mlp")]) == ["scratch"]
    assert infer_roles([_info(tmp_path, "sl", "mlp", soft_labels="store")]) == ["distilled"]
    assert infer_roles([_info(tmp_path, "dml", "mlp", scheme={"name": "mutual", "params": {}})]) == ["distilled"]
    r = _info(tmp_path, "r", "mlp")
    assert infer_roles([r], {0: "Teacher"}) == ["teacher"]


@pytest.mark.parametrize("text, role", [("teacher", "teacher"), ("student (scratch)", "scratch"),
                                        ("student (KD)", "distilled"), ("distilled", "distilled"),
                                        ("baseline", "scratch"), ("Teacher assistant", "teacher")])
def test_normalize_role(text, role):
    assert normalize_role(text) == role


def test_term_keys_follow_recipe_order_then_extras():
    hist = [{"train_loss": 1, "train_kd": 1, "train_ce": 1, "train_top1": 50, "train_seconds": 2, "train_extra": 3}]
    cfg = {"terms": [{"name": "ce"}, {"name": "kd"}]}
    assert term_keys(hist, cfg) == ["ce", "kd", "extra"]
    assert term_keys(hist) == ["kd", "ce", "extra"]


def test_load_run_reads_best_last_and_throughput(tmp_path):
    r = _info(tmp_path, "a", "mlp", final=90.0)
    assert r.best == (90.0, 4) and r.last_top1 == 90.0
    assert r.images_per_s == pytest.approx(1002.5)        # median of 1001..1004
    assert r.split_sizes == (40, 10) and r.model == "mlp" and r.dataset == "mnist_5k"
    (r.run_dir / "summary.json").write_text(json.dumps({"best": {"top1": 91.5, "epoch": 3}}))
    assert load_run(r.run_dir).best == (91.5, 3)


def test_load_run_errors_name_the_path(tmp_path):
    with pytest.raises(KdkitError, match=r"run directory '.*nowhere' not found"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdkitError, match=r"'.*empty/metrics.jsonl' not found"):
        load_run(tmp_path / "empty")
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(KdkitError, match="is empty"):
        load_run(tmp_path / "empty")
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"epoch": 1}\n{oops\n')
    with pytest.raises(KdkitError, match="line 2 is not JSON"):
        load_run(tmp_path / "empty")


# ----------------------------------------------------------------------------------------------------------------------
# Figures


def _check_png(png: bytes, min_w: int = 1000) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(io.BytesIO(png))
    assert img.shape[1] >= min_w and img.shape[0] >= 300
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 0.05                   # not a blank canvas
    return img


def _three(tmp: Path) -> list[RunInfo]:
    t = _info(tmp, "t", "cnn_teacher", final=98.0)
    s = _info(tmp, "s", "mlp", final=93.0)
    k = _info(tmp, "k", "mlp", teachers=[{"name": "cnn_teacher", "checkpoint": str(tmp / "t")}], terms=("ce", "kd"),
              final=95.0)
    for r, role in zip((t, s, k), infer_roles([t, s, k]), strict=True):
        r.role = role
    return [t, s, k]


def test_figures_are_non_trivial_pngs(tmp_path):
    runs = _three(tmp_path)
    for r in runs:
        _check_png(plot_learning_curves(r))
    _check_png(plot_accuracy(runs, [98.0, 93.0, 95.0], ["", "", "+2.00 vs scratch"]))
    runs[0].cost = {"latency_b1_ms": 0.5, "size_mb": 1.6}
    runs[2].cost = {"latency_b1_ms": 0.1, "size_mb": 0.26}   # runs[1] has none: left out, and the panel says so
    _check_png(plot_pareto(runs, [98.0, 93.0, 95.0]))


def test_role_colours_appear_in_accuracy_figure(tmp_path):
    img = _check_png(plot_accuracy(_three(tmp_path), [98.0, 93.0, 95.0]))
    rgb = (img[..., :3] * 255).round().astype(int).reshape(-1, 3)
    for hexcol in ("#0072B2", "#8C8C8C", "#D55E00"):
        want = np.array([int(hexcol[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(rgb - want).max(axis=1) <= 2).sum() > 500, hexcol  # a bar's worth of pixels


# ----------------------------------------------------------------------------------------------------------------------
# The page


def _case_study(tmp: Path, runs: list[RunInfo]) -> Path:
    rows = [dict(role="teacher", model="cnn_teacher", run=str(runs[0].run_dir), top1=97.5, params=390634,
                 size_mb=1.586, latency_b1_ms=0.42, latency_b64_ms=0.05),
            dict(role="student (scratch)", model="mlp", run=str(runs[1].run_dir), top1=93.7, params=50890,
                 size_mb=0.26, latency_b1_ms=0.1, latency_b64_ms=0.004),
            dict(role="student (KD)", model="mlp", run=str(runs[2].run_dir), top1=95.6, params=50890,
                 size_mb=0.26, latency_b1_ms=0.1, latency_b64_ms=0.004)]
    p = tmp / "table.json"
    p.write_text(json.dumps({"dataset": "mnist_5k (40 / 10)", "rows": rows, "threads": 2}))
    return p


def test_report_with_case_study(tmp_path):
    runs = _three(tmp_path)
    case = _case_study(tmp_path, runs)
    # Neutral order and names: the case study's roles decide, and the page orders teacher -> scratch -> KD.
    html_path = write_report([runs[2].run_dir, runs[0].run_dir, runs[1].run_dir], tmp_path / "rep", case_study=case)
    html = html_path.read_text()
    # 95.6 - 93.7 = +1.9; 1.586 / 0.26 = 6.1; 0.42 / 0.1 = 4.2
    assert "KD student: 95.6% (+1.9 over scratch), 6.1× smaller, 4.2× faster than the teacher" in html
    assert "1.90 points below the teacher" in html
    assert "7.7× fewer parameters" in html and "12.5× faster per image at batch 64" in html
    assert html.index("student (scratch)</span>") < html.index("student (KD)</span>")
    # self-contained: every image inline, nothing fetched
    srcs = re.findall(r'<img src="([^"]*)"', html)
    assert len(srcs) == 2 + 3 and all(s.startswith("data:image/png;base64,") and len(s) > 1000 for s in srcs)
    assert "<script" not in html and "http://" not in html and "https://" not in html and "<link" not in html
    out = html_path.parent
    assert {p.name for p in out.glob("*.png")} == {"accuracy.png", "pareto.png", "curves_01_k.png",
                                                   "curves_02_t.png", "curves_03_s.png"}
    md = (out / "summary.md").read_text()
    assert "| student (KD) | k | mlp | 95.60 | +1.90 |" in md
    assert "![accuracy of teacher vs students](accuracy.png)" in md
    assert "ce ×0.5 + kd ×0.5" in md


def test_report_without_case_study_or_measurements(tmp_path):
    runs = _three(tmp_path)
    html = write_report([r.run_dir for r in runs], tmp_path / "rep", measure=False).read_text()
    # best val top-1 from the histories: 95 (KD) - 93 (scratch)
    assert "KD student: 95.0% (+2.0 over scratch) (k; last-epoch validation top-1)</div>" in html
    assert "no Pareto view" in html
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == 1 + 3


def test_report_says_below_when_kd_loses(tmp_path):
    runs = _three(tmp_path)
    case = _case_study(tmp_path, runs)
    data = json.loads(case.read_text())
    data["rows"][2]["top1"] = 93.2     # KD 0.5 points under scratch; student twice as slow as the teacher
    data["rows"][2]["latency_b1_ms"] = 0.84
    case.write_text(json.dumps(data))
    html = write_report([r.run_dir for r in runs], tmp_path / "rep", case_study=case).read_text()
    assert "KD student: 93.2% (0.5 below scratch), 6.1× smaller, 2.0× slower than the teacher" in html


def test_report_notes_unmeasurable_runs(tmp_path):
    runs = _three(tmp_path)  # no weights on disk: measuring fails, the page says so and is still written
    html = write_report([runs[0].run_dir], tmp_path / "rep").read_text()
    assert "size and latency not measured (CheckpointError" in html
    assert "Best run: t (cnn_teacher), 98.0% top-1" in html


def test_case_study_errors(tmp_path):
    with pytest.raises(KdkitError, match="case-study file '.*nope.json' not found"):
        load_case_study(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"rows": [{"model": "x"}]}')
    with pytest.raises(KdkitError, match="needs a 'rows' list"):
        load_case_study(tmp_path / "bad.json")


def test_cli_report(tmp_path):
    from typer.testing import CliRunner

    from kdkit.cli import app

    runs = _three(tmp_path)
    res = CliRunner().invoke(app, ["report", *[str(r.run_dir) for r in runs], "--out", str(tmp_path / "o"),
                                   "--no-measure"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "report.html").is_file() and (tmp_path / "o" / "summary.md").is_file()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert isinstance(res.exception, KdkitError) and "missing' not found" in str(res.exception)


def test_a_regularised_run_without_teacher_is_never_the_scratch_baseline(tmp_path):
    """Label smoothing (a term, or ce's own label_smoothing) is its own role; the KD gain is over the plain-CE run."""
    t = _info(tmp_path, "a", "cnn_teacher")
    s = _info(tmp_path, "b", "mlp", final=90.0)
    ls = _info(tmp_path, "c", "mlp", terms=("label_smoothing",), final=96.0)
    ls2 = _run(tmp_path, "c2", "mlp", final=97.0)
    cfg = yaml.safe_load((ls2 / "config.yaml").read_text())
    cfg["terms"] = [{"name": "ce", "params": {"label_smoothing": 0.1}}]
    (ls2 / "config.yaml").write_text(yaml.safe_dump(cfg))
    k = _info(tmp_path, "d", "mlp", teachers=[{"name": "cnn_teacher", "checkpoint": str(tmp_path / "a")}],
              terms=("ce", "kd"), final=93.0)
    assert infer_roles([t, s, ls, load_run(ls2), k]) == ["teacher", "scratch", "regularized", "regularized",
                                                          "distilled"]
    html = write_report([tmp_path / n for n in "a b c c2 d".split()], tmp_path / "rep", measure=False).read_text()
    assert "KD student: 93.0% (+3.0 over scratch)" in html  # against b (90), not the label-smoothing runs (96, 97)
    assert "student (no teacher, regularised)" in html


def test_seeds_of_one_recipe_are_grouped_and_the_headline_takes_no_maximum(tmp_path):
    """Three seeds of one KD recipe: the headline is the mean ± sample std of their *last* epochs, not the best run's
    best epoch. Runs whose last epoch differs from their best show that the headline never selects on val."""
    _run(tmp_path, "t", "cnn_teacher", final=98.0)
    _run(tmp_path, "s", "mlp", final=90.0)
    for seed, final in ((0, 92.0), (1, 94.0), (2, 96.0)):
        _run(tmp_path, f"kd_s{seed}", "mlp", teachers=[{"name": "cnn_teacher", "checkpoint": str(tmp_path / "t")}],
             terms=("ce", "kd"), final=final, seed=seed)
    # make seed 2's last epoch worse than its best (its best epoch 96 must not become the headline)
    p = tmp_path / "kd_s2" / "metrics.jsonl"
    hist = [json.loads(x) for x in p.read_text().splitlines()]
    hist.append(dict(hist[-1], epoch=5, val_top1=91.0))
    p.write_text("".join(json.dumps(h) + "\n" for h in hist))
    runs = ["t", "s", "kd_s0", "kd_s1", "kd_s2"]
    html = write_report([tmp_path / n for n in runs], tmp_path / "rep", measure=False).read_text()
    mean = (92.0 + 94.0 + 91.0) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in (92.0, 94.0, 91.0)) / 2)
    assert f"KD student: {mean:.1f}% ± {std:.1f} over 3 seeds (+{mean - 90.0:.1f} over scratch)" in html
    assert "kd_s ×3 seeds; last-epoch validation top-1" in html
    assert "96.0%" not in html[:html.index("</h1>") + 2000]  # the best epoch of the best seed is not the headline
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert f"| kd_s ×3 seeds | student (KD) | 3 | {mean:.2f} ± {std:.2f} |" in md


def test_two_kd_recipes_get_distinct_shades_of_the_kd_colour(tmp_path):
    from kdkit.report.runs import ROLE_COLORS, shade

    _run(tmp_path, "t", "cnn_teacher", final=98.0)
    teachers = [{"name": "cnn_teacher", "checkpoint": str(tmp_path / "t")}]
    _run(tmp_path, "kd_a", "mlp", teachers=teachers, terms=("ce", "kd"), final=94.0)
    _run(tmp_path, "kd_b", "mlp", teachers=teachers, terms=("ce", "dkd"), final=95.0)
    out = tmp_path / "rep"
    write_report([tmp_path / n for n in ("t", "kd_a", "kd_b")], out, measure=False)
    img = _check_png((out / "accuracy.png").read_bytes())
    rgb = (img[..., :3] * 255).round().astype(int).reshape(-1, 3)
    second = shade(ROLE_COLORS["distilled"], 1)
    assert second != ROLE_COLORS["distilled"]
    for hexcol in (ROLE_COLORS["distilled"], second):
        want = np.array([int(hexcol[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(rgb - want).max(axis=1) <= 2).sum() > 500, hexcol  # a bar of each
