"""A teacher that trained on the student's validation images is named, on real bundled digits: the student's run
records how many of its validation images each teacher run trained on (``split.json``, key
``teachers_trained_on_val``) and warns in one line; a teacher trained on the same split is not named. The counts are
checked against an independent set intersection of the two runs' recorded splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kdkit
from kdkit.data.leakage import split_train_indices, teachers_on_validation
from kdkit.report.page import write_report


def _recipe(out: Path, name: str, split_seed: int, teacher: Path | None = None) -> dict:
    r = {"name": name, "output_dir": str(out), "seed": 0, "epochs": 1, "threads": 1,
         "data": {"name": "mnist_5k", "val_fraction": 0.2, "split_seed": split_seed, "batch_size": 128},
         "student": {"name": "mlp", "params": {"hidden": [32]}}, "terms": [{"name": "ce"}],
         "optim": {"name": "adamw", "lr": 0.003}}
    if teacher is not None:
        r["teachers"] = [{"name": "mlp", "params": {"hidden": [64]}, "checkpoint": str(teacher)}]
        r["terms"] = [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "params": {"temperature": 4.0}}]
    return r


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two MLP teachers, 1 epoch each: one on the student's split (split_seed 0), one on another split (seed 1)."""
    out = tmp_path_factory.mktemp("saw_val")
    runs = {}
    for seed in (0, 1):
        r = _recipe(out, f"teacher_split{seed}", seed)
        r["student"] = {"name": "mlp", "params": {"hidden": [64]}}
        runs[seed] = kdkit.train(r, quiet=True).run_dir
    return out, runs


def _split(run: Path) -> dict:
    return json.loads((run / "split.json").read_text())


def test_a_teacher_on_another_split_is_named_with_the_right_count(teachers, capsys):
    out, runs = teachers
    res = kdkit.distill(_recipe(out, "student_other", 0, runs[1]))
    split = _split(res.run_dir)
    want = len(set(split["val_idx"]) & set(_split(runs[1])["train_idx"]))  # independent: the recorded splits
    assert 0 < want < len(split["val_idx"])  # a different stratified split shares most, not all, of them
    assert split["teachers_trained_on_val"] == [{"teacher": 0, "run": str(runs[1]), "val_images_seen": want,
                                                 "val_images": len(split["val_idx"])}]
    err = capsys.readouterr()
    line = [x for x in (err.err + err.out).splitlines() if "validation images" in x]
    assert len(line) == 1 and f"trained on {want} of this run's 1000 validation images" in line[0]
    assert "data.val_fraction and data.split_seed" in line[0]


def test_the_report_names_the_teacher_that_saw_the_validation_images(teachers, tmp_path):
    out, runs = teachers
    student = out / "student_other"  # written by the first test; distilled again when run alone
    if not (student / "summary.json").is_file():
        student = kdkit.distill(_recipe(out, "student_other", 0, runs[1]), quiet=True).run_dir
    seen = _split(student)["teachers_trained_on_val"][0]["val_images_seen"]
    page = write_report([runs[1], student], tmp_path / "report", measure=False)
    summary = (page.parent / "summary.md").read_text()
    assert f"trained on {seen} of its 1000 validation images, so its validation top-1 is optimistic" in summary
    clean = write_report([runs[0]], tmp_path / "report_clean", measure=False)
    assert "validation top-1 is optimistic" not in (clean.parent / "summary.md").read_text()


def test_a_teacher_on_the_same_split_is_not_named(teachers):
    out, runs = teachers
    res = kdkit.distill(_recipe(out, "student_same", 0, runs[0]), quiet=True)
    assert "teachers_trained_on_val" not in _split(res.run_dir)


def test_whole_training_part_and_train_limit():
    # a teacher trained on a separate training part saw every image below n_train; train_limit keeps a subset
    assert split_train_indices({"train": "d", "val": "d_test", "n_train": 5})[1].tolist() == [0, 1, 2, 3, 4]
    got = split_train_indices({"source": "d", "train_idx": [7, 3, 9, 1], "train_limit_positions": [0, 2]})
    assert got[0] == "d" and got[1].tolist() == [7, 9]


def test_whole_training_part_teacher_counts_every_val_image(tmp_path):
    (tmp_path / "split.json").write_text(json.dumps({"train": "d", "val": "d_test", "n_train": 100, "n_val": 10}))
    student = {"source": "d", "train_idx": [0, 1, 2], "val_idx": [3, 50, 99, 150]}
    assert teachers_on_validation(student, [None, tmp_path / "w.safetensors", tmp_path]) == [
        {"teacher": 2, "run": str(tmp_path), "val_images_seen": 3, "val_images": 4}]
    assert teachers_on_validation({**student, "source": "other"}, [tmp_path]) == []  # another dataset: unmatched
    assert teachers_on_validation({"train": "d", "val": "d_test", "n_train": 3, "n_val": 1}, [tmp_path]) == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for text in ("{}", "not json", '{"train_idx": [1, "x"]}'):  # never a crash: the check is advice
        (foreign / "split.json").write_text(text)
        assert teachers_on_validation(student, [foreign]) == []
