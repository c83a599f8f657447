"""The Fashion-MNIST benchmark's method grids are valid recipes.

A grid entry is only run by hand (``benchmarks/fashion_methods.py``, 10–90 minutes a row); a misspelt term name or
parameter would surface only there, after the teacher and the store are built. Here every variant of every grid is
turned into the recipe the benchmark writes, parsed by kdkit's recipe schema and its terms built.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kdkit.recipe import recipe_from_dict
from kdkit.terms.base import build_term

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _grids() -> tuple[list[tuple[str, str, list[dict]]], object]:
    sys.path.insert(0, str(BENCH))
    try:
        import fashion_methods as fm
    finally:
        sys.path.remove(str(BENCH))
    out = []
    for source in (fm.GRIDS, fm.EXTRA):
        for method, variants in source.items():
            for variant, terms in variants.items():
                out.append((method, variant, terms))
    return out, fm


GRIDS, FM = _grids()


@pytest.mark.parametrize(("method", "variant", "terms"), GRIDS, ids=[f"{m}={v}" for m, v, _ in GRIDS])
def test_every_grid_variant_is_a_valid_recipe(tmp_path: Path, method: str, variant: str, terms: list[dict]) -> None:
    student = "cnn10k"  # the terms do not depend on the student here (their shapes are checked when a run starts)
    teacher = tmp_path / "teacher"
    reads_teacher = method not in FM.NO_TEACHER
    recipe = FM.recipe_for(f"{student}_{method}_{variant}_s0", tmp_path, student, terms, seed=0, epochs=1,
                           final=True, teacher=None, store=None, threads=1)
    if reads_teacher:  # the teacher spec is read from a run's config.yaml; here a stand-in of the benchmark's teacher
        recipe["teachers"] = [{"name": "cnn", "checkpoint": str(teacher)}]
    r = recipe_from_dict(recipe, source=f"{method}={variant}")
    assert [t.name for t in r.terms] == [t["name"] for t in terms]
    for spec in r.terms:
        build_term(spec)  # unknown parameters or bad values raise here


def test_every_feature_method_reads_a_teacher() -> None:
    """FEATURE rows run the teacher online; a method listed there must not also be a no-teacher row."""
    assert not (FM.FEATURE & FM.NO_TEACHER)
    assert FM.FEATURE <= set(FM.GRIDS)


def test_view_stores_of_different_augmentations_never_share_a_directory(tmp_path: Path) -> None:
    """A multi-view store holds the teacher's logits on one augmentation's views; a method reading another
    augmentation's store would train on targets for images it never sees. fm's stores keep their first name (runs of
    earlier sessions read them back); every other store-augmented method gets its own."""
    paths = {m: FM.view_store_path(tmp_path, False, 8, 0, aug) for m, aug in FM.STORE_AUGMENT.items()}
    assert paths["fm"] == tmp_path / "softlabels_tune_views8_s0"
    assert len(set(paths.values())) == len(paths)
    assert FM.view_store_path(tmp_path, True, 8, 2, FM.STORE_AUGMENT["kd_crop_views"]) != \
        FM.view_store_path(tmp_path, False, 8, 2, FM.STORE_AUGMENT["kd_crop_views"])


def _finished(run_dir: Path, last: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "bench.json").write_text(
        f'{{"best": {last}, "best_epoch": 1, "last": {last}, "images_per_s": 1000.0}}')


def test_tune_single_scores_a_one_variant_grid_on_validation(tmp_path: Path, monkeypatch, capsys) -> None:
    """Scratch's grid has one variant, so the protocol never trains it on the validation split; --tune-single does
    (its validation score is what a budget chosen on validation compares). Read back with --collect: the finished
    tuning run's score appears in the row only with the switch, and the row says it was chosen on validation."""
    import json

    _finished(tmp_path / "tune_cnn10k_scratch_ce", 91.5)
    _finished(tmp_path / "tune_cnn10k_scratch_ce_ts1", 91.7)
    for s in (0, 1, 2):
        _finished(tmp_path / f"cnn10k_scratch_ce_s{s}", 91.0 + s / 10)
    base = ["fashion_methods.py", "--students", "cnn10k", "--methods", "scratch", "--collect", "--tune-seeds", "0",
            "1", "--out", str(tmp_path)]
    rows = {}
    for extra in ([], ["--tune-single"]):
        monkeypatch.setattr(sys, "argv", base + extra)
        FM.main()
        rows[bool(extra)] = json.loads(capsys.readouterr().out)["rows"][0]
    assert rows[False]["tuning_val_top1"] == {} and rows[False]["chosen"] == "grid's first"
    assert rows[True]["tuning_val_top1"] == {"ce": pytest.approx(91.6)}
    assert rows[True]["tuning_val_top1_by_seed"] == {"ce": {"0": 91.5, "1": 91.7}}  # JSON keys
    assert rows[True]["chosen"] == "validation"
    assert rows[True]["last_mean"] == pytest.approx(91.1)
