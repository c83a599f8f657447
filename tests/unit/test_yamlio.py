"""Bounded YAML loading (issue 14): ordinary anchors still work; bombs, deep nesting and recursion are one line."""

from __future__ import annotations

import pytest
import torch

from kdkit.errors import ConfigError
from kdkit.recipe import load_recipe, parse_override
from kdkit.yamlio import MAX_DEPTH, MAX_NODES, load_yaml


def test_anchors_and_merge_keys_used_the_ordinary_way_still_load():
    text = "base: &b {lr: 0.1, momentum: 0.9}\noptim: {<<: *b, lr: 0.2}\nlist: [*b, *b]\n"
    data = load_yaml(text, "t")
    assert data["optim"] == {"lr": 0.2, "momentum": 0.9} and data["list"] == [data["base"], data["base"]]


def test_alias_bomb_is_refused_before_expansion():
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, n in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{n}: &{n} [" + ",".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(ConfigError, match="alias bomb"):
        load_yaml("\n".join(lines), "t")


def test_node_limit_is_exact():
    # MAX_NODES - 3 scalars (+ list, key, map) load; one alias that doubles a large list does not
    ok = "k: [" + ",".join(["1"] * (MAX_NODES - 3)) + "]"
    assert len(load_yaml(ok, "t")["k"]) == MAX_NODES - 3
    with pytest.raises(ConfigError, match="more than"):
        load_yaml("k: &k [" + ",".join(["1"] * (MAX_NODES // 2)) + "]\nj: *k\n", "t")


def test_depth_limit_and_recursion():
    assert load_yaml("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1), "t") is not None
    with pytest.raises(ConfigError, match=f"nesting deeper than {MAX_DEPTH}"):
        load_yaml("[" * 5000 + "]" * 5000, "t")
    with pytest.raises(ConfigError, match="alias"):
        load_yaml("a: &a [*a]", "t")


def test_no_code_runs_from_tags(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(f"x: !!python/object/apply:os.system ['touch {marker}']", "t")
    assert not marker.exists()


def test_override_values_are_bounded_too():
    with pytest.raises(ConfigError, match="nesting deeper"):
        parse_override("data.params=" + "[" * 500 + "]" * 500)
    assert parse_override("optim.lr=fast") == (["optim", "lr"], "fast")  # not YAML-special: a plain string
    assert parse_override("x=[1, 2") == (["x"], "[1, 2")  # invalid YAML stays the string the user typed


def test_bare_no_is_precision_no(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("student: {name: mlp}\nprecision: no\n")
    assert load_recipe(p).precision == "no"


def test_bf16_on_cpu_autocasts_and_fp16_is_refused(tmp_path):
    from kdkit.engine.loop import make_accelerator
    from kdkit.errors import KdkitError

    p = tmp_path / "r.yaml"
    p.write_text("student: {name: mlp}\ndevice: cpu\n")
    lin = torch.nn.Linear(3, 3)
    for precision, dtype in (("bf16", torch.bfloat16), ("no", torch.float32), ("bf16", torch.bfloat16)):
        acc = make_accelerator(load_recipe(p, [f"precision={precision}"]))  # switching in one process works
        with acc.autocast():
            assert lin(torch.randn(2, 3)).dtype == dtype
    with pytest.raises(KdkitError, match="fp16 needs a CUDA GPU"):
        make_accelerator(load_recipe(p, ["precision=fp16"]))
