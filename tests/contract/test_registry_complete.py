"""The one registry is complete by construction: a fresh interpreter resolves every name of every bundled recipe
without anybody importing a plug-in module first, and the listings show every entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))

_RESOLVE = r"""
import json, sys
from pathlib import Path
from kdkit.data.sources import resolve_dataset
from kdkit.models.factory import create_model
from kdkit.recipe import load_recipe
from kdkit.registry import LOSSES, MODEL_SOURCES, MODELS, SCHEMES

def model(name):
    prefix, sep, rest = name.partition(":")
    if not sep:
        prefix, rest = "kdkit", name
    MODEL_SOURCES.get(prefix)
    if prefix == "kdkit":
        MODELS.get(rest)
    elif prefix in ("shrink", "qat", "exits", "prune"):
        model(rest)

out = {}
for path in sys.argv[1:]:
    r = load_recipe(path)
    recipes = [r]
    if r.stages:
        from kdkit.pipeline import expand_stages
        recipes += [s.recipe for s in expand_stages(r)]
    names = []
    for x in recipes:
        resolve_dataset(x.data.name)
        if x.data.val:
            resolve_dataset(x.data.val)
        for spec in [x.student, *x.teachers]:
            model(spec.name)
            names.append(spec.name)
        for t in x.terms:
            LOSSES.get(t.name)
            names.append(t.name)
        SCHEMES.get(x.scheme.name)
    out[path] = names
print(json.dumps(out))
"""


def test_every_bundled_recipe_resolves_in_a_fresh_interpreter():
    """No test or user imports kdkit.text (or any plug-in) first: the registry must find every name on its own."""
    assert len(RECIPES) > 60, "the bundled recipes moved?"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    res = subprocess.run([sys.executable, "-c", _RESOLVE, *map(str, RECIPES)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    resolved = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(resolved) == set(map(str, RECIPES))
    text = [p for p in resolved if "/text/" in p]
    assert text and any("tinybert_hidden" in resolved[p] for p in text)  # the text terms were found


def _listed_names(command: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), COLUMNS="200")
    res = subprocess.run([sys.executable, "-m", "kdkit.cli", command], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    names = set()
    for line in res.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) >= 2 and cells[0]:
            names.add(cells[0])
    return names


@pytest.mark.parametrize("command, registry", [("losses", "LOSSES"), ("schemes", "SCHEMES"),
                                               ("datasets", "DATASETS"), ("models", "MODELS")])
def test_listings_show_every_registered_name(command, registry):
    import kdkit.registry as reg

    listed = _listed_names(command)
    want = set(getattr(reg, registry).names())
    assert want <= listed, sorted(want - listed)
    if command == "losses":  # the text terms are there without importing kdkit.text first
        assert {"tinybert_hidden", "distilbert_cosine", "kd", "dkd"} <= listed
    if command == "models":  # the model sources are listed too
        assert set(reg.MODEL_SOURCES.names()) <= listed


def test_an_unknown_name_lists_what_exists_and_a_plugin_module_is_loaded_by_name(tmp_path):
    import kdkit.registry as reg
    from kdkit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown loss term 'kdd'. Did you mean 'kd'") as err:
        reg.LOSSES.get("kdd")
    assert "tinybert_hidden" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "my_kd_plugin.py").write_text(
        "from kdkit.terms.base import LossTerm, register_term\n"
        "@register_term('my_zero', description='a user term')\n"
        "class Zero(LossTerm):\n"
        "    needs_teacher = False\n"
        "    def compute(self, inp):\n"
        "        return inp.student.logits.sum() * 0\n")
    sys.path.insert(0, str(tmp_path))
    try:
        reg.add_plugin("my_kd_plugin")
        assert reg.LOSSES.get("my_zero").__name__ == "Zero"
        with pytest.raises(ConfigError, match="plug-in module 'no_such_plugin_mod' not found"):
            reg.add_plugin("no_such_plugin_mod")
    finally:
        sys.path.remove(str(tmp_path))
        reg.LOSSES._entries.pop("my_zero", None)
        reg.PLUGINS[:] = [p for p in reg.PLUGINS if p.module not in ("my_kd_plugin", "no_such_plugin_mod")]


def test_a_missing_extra_skips_its_module_and_says_so(monkeypatch):
    import kdkit.registry as reg

    monkeypatch.setattr(reg, "PLUGINS", reg.PLUGINS + [reg.Plugin("kdkit_test_missing_extra_mod", "gpu")])
    monkeypatch.setattr(reg, "_skipped", dict(reg._skipped))
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "kdkit_test_missing_extra_mod":
            raise ModuleNotFoundError("No module named 'cupy'", name="cupy")
        return real(name, *a, **k)

    monkeypatch.setattr(reg.importlib, "import_module", fake)
    skipped = reg.skipped_plugins()
    assert "kdkit_test_missing_extra_mod" in skipped and "'gpu' extra" in skipped["kdkit_test_missing_extra_mod"]
    assert "no module named 'cupy'" in skipped["kdkit_test_missing_extra_mod"]
