"""Pipelines (`stages:`): expansion, teacher hand-off between stages, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdkit.errors import ConfigError
from kdkit.pipeline import expand_stages
from kdkit.recipe import recipe_from_dict


def _recipe(stages, **top):
    base = {"name": "pipe", "output_dir": "/tmp/out", "seed": 5, "data": {"name": "mnist_5k", "batch_size": 32},
            "optim": {"name": "adamw", "lr": 0.01}, "epochs": 3, "stages": stages}
    base.update(top)
    return recipe_from_dict(base)


def test_born_again_chain_hands_each_best_checkpoint_to_the_next_stage():
    r = _recipe([
        {"name": "gen0", "student": {"name": "cnn_student"}, "terms": [{"name": "ce"}]},
        {"name": "gen1", "student": {"name": "cnn_student"}, "terms": [{"name": "ce"}, {"name": "kd"}]},
        {"name": "gen2", "student": {"name": "cnn_student"}, "terms": [{"name": "kd"}], "optim": {"lr": 0.001}},
        {"name": "ens", "ensemble": True},
    ])
    assert r.student.name == "cnn_student"  # the top-level student is filled in from the stages
    st = expand_stages(r)
    assert [s.name for s in st] == ["gen0", "gen1", "gen2", "ens"]
    assert st[0].recipe.teachers == [] and st[0].teacher_stages == []
    assert st[1].teacher_stages == ["gen0"] and st[2].teacher_stages == ["gen1"]
    assert st[3].ensemble and st[3].teacher_stages == ["gen0", "gen1", "gen2"]
    t = st[2].recipe.teachers[0]
    assert t.name == "cnn_student" and Path(t.checkpoint) == Path("/tmp/out/pipe/stages/gen1")
    assert st[1].run_dir == Path("/tmp/out/pipe/stages/gen1")
    assert st[1].recipe.run_dir == st[1].run_dir
    # data/optim/schedule merge key by key; seeds differ per stage unless set
    assert st[2].recipe.optim.lr == 0.001 and st[2].recipe.optim.name == "adamw"
    assert st[2].recipe.data.batch_size == 32
    assert [s.recipe.seed for s in st[:3]] == [5, 6, 7]
    assert [t.name for t in st[2].recipe.terms] == ["kd"]


def test_teacher_assistant_chain_and_explicit_teachers():
    r = _recipe([
        {"name": "teacher", "student": {"name": "cnn_teacher"}},
        {"name": "assistant", "student": {"name": "cnn", "params": {"width": 16}}},
        {"name": "student", "student": {"name": "mlp"}, "teacher_from": "assistant",
         "teachers": [{"name": "ccexam:mnist"}]},
        {"name": "all3", "student": {"name": "mlp"}, "teacher_from": ["teacher", "assistant"],
         "scheme": {"name": "offline", "params": {"combine": "mean_probs"}}},
    ])
    st = expand_stages(r)
    assert [t.name for t in st[2].recipe.teachers] == ["ccexam:mnist", "cnn"]
    assert st[2].recipe.teachers[1].params == {"width": 16}
    assert [t.name for t in st[3].recipe.teachers] == ["cnn_teacher", "cnn"]
    # A stage listing its own teachers gets no implicit `previous` one.
    r2 = _recipe([{"name": "a", "student": {"name": "mlp"}},
                  {"name": "b", "student": {"name": "mlp"}, "teachers": [{"name": "cnn_student"}]}])
    assert expand_stages(r2)[1].teacher_stages == []


@pytest.mark.parametrize("stages, match", [
    ([{"student": {"name": "mlp"}}], "name"),
    ([{"name": "a", "student": {"name": "mlp"}}, {"name": "a", "student": {"name": "mlp"}}], "used twice"),
    ([{"name": "a", "student": {"name": "mlp"}, "teacher_from": "previous"}], "first stage"),
    ([{"name": "a", "student": {"name": "mlp"}}, {"name": "b", "teacher_from": "zzz"}], "'zzz' is not an earlier"),
    ([{"name": "a", "student": {"name": "mlp"}, "output_dir": "x"}], "top level"),
    ([{"name": "a", "student": {"name": "mlp"}}, {"name": "b", "optim": {"lr": "fast"}}], "stage 'b' field 'optim.lr'"),
    ([{"name": "a", "student": {"name": "mlp"}}, {"name": "e", "ensemble": True},
      {"name": "c", "teacher_from": "e"}], "ensemble stage"),
])
def test_stage_errors_name_the_stage_and_field(stages, match):
    with pytest.raises(ConfigError, match=match):
        expand_stages(_recipe(stages, student={"name": "mlp"}))
