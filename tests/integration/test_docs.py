"""Docs that run: every shell command and Python block of README.md and docs/**/*.md, as a new user would try them.

What is extracted: fenced blocks tagged ``bash``, ``sh`` or ``console`` (in ``console`` blocks and in prose, only the
lines after a ``$ `` prompt), and every ``python`` block. Each document runs in a fresh temporary directory that holds
a symlink to ``recipes/`` (plus the files its own ``# NAME.yaml`` blocks define), in the order the document gives,
**shrunk**: ``kdkit train|distill|cache`` get ``--set epochs=1 --set data.train_limit=N`` (the way every recipe is
overridden, see ``kdkit.recipe.apply_overrides``), ``kdkit quickstart`` gets one epoch and 500 digits. Each command
must exit 0 and leave the artefacts it advertises (a run's ``checkpoints/best.safetensors``, a store's manifest, an
export, a report page).

Nothing may go unchecked: a fence without a language, a document whose commands no test runs, or a command that is
neither run nor listed in ``NOT_RUN`` (with a reason) fails ``test_every_block_is_run_or_listed``, so the docs cannot
drift from the code. Benchmark commands are measurements that take minutes to hours: the default suite checks that
every documented option exists in the script, the slow suite runs each shrunk (``BENCH_SHRINK``; ``BENCH_NOT_RUN``
says which cannot be and why). YAML blocks must parse, and recipe-shaped ones validate; the README's recipe is the
bundled ``recipes/mnist_kd.yaml``.

Cost in the default suite: under three minutes on two cores (README, report and soft-label flows on MNIST digits),
plus ~45 s for docs/tuning.md (seeds: 2 recipes x 5 seeds of one epoch; tune: 4 trials of one epoch; a report; one
tracked run); the text flow (MiniLM, ~2 min), the language-model flow (docs/lm.md, a few minutes) and the benchmarks
are ``slow``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kdkit.recipe import Recipe, load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))
BIN = Path(sys.executable).parent  # the environment running the tests: its `kdkit` and `python`

RUN_LANGS = {"bash", "sh", "console", "python"}
OTHER_LANGS = {"yaml", "text"}  # yaml: parsed (and validated when it is a recipe); text: diagrams and output

# Commands that are not run, with the reason. Keys are (document, command as written, comment stripped).
NOT_RUN: dict[tuple[str, str], str] = {
    ("README.md", "make test"): "runs this very test suite (and installs Chromium as root)",
    ("docs/faults.md", "kdkit train RECIPE --resume"): "RECIPE is a placeholder; resuming after a kill is what "
                                                       "tests/integration/test_faults.py does, with real kills",
    ("docs/faults.md", "kdkit train RECIPE"): "RECIPE is a placeholder; restarting a run that never completed a "
                                              "checkpoint is tested by tests/integration/test_faults.py",
    ("docs/teachers.md", "huggingface-cli download timm/resnet10t.c3_in1k"): "downloads (no network here)",
    ("docs/tuning.md", "kdkit tune kd_search.yaml --trials 10 --storage postgresql://kdkit@dbhost/kdkit"):
        "needs a PostgreSQL server at dbhost; tests/integration/test_tune_postgres.py (slow) starts one and runs two "
        "workers on it",
    ("docs/teachers.md", "kdkit train recipes/teachers/mnist_pretrained_timm.yaml"):
        "needs the downloaded timm weights in the HF cache; test_teachers_pretrained.py runs the same pipeline from a "
        "locally built HF cache",
}
# Benchmark commands (`.venv/bin/python benchmarks/...`) are measurements of minutes to hours: the default suite checks
# that every documented option exists; the slow suite runs each one shrunk by BENCH_SHRINK (option -> the values
# it is given; options the script has but the doc does not use are added), in a fresh directory.
BENCH_SHRINK: dict[str, dict[str, list[str]]] = {
    "quickstart_accuracy.py": {"--seeds": ["0"], "--teacher-epochs": ["1"], "--student-epochs": ["1"]},
    "step_speed.py": {"--steps": ["1"], "--warmup": ["0"], "--batch": ["16"]},
    "trained_wrn_teacher.py": {"--steps": ["2"]},  # its weights file is read by the step_speed.py command after it
    "gpu.py": {"--steps": ["1"], "--warmup": ["0"], "--batch": ["16"]},  # without a GPU it says so and exits 0
    "methods.py": {"--datasets": ["mnist_5k"], "--seeds": ["0"], "--epochs": ["1"], "--teacher-epochs": ["1"],
                   "--train-limit": ["300"], "--students": ["mlp"], "--methods": ["scratch", "kd", "dkd"]},
    "schemes.py": {"--seeds": ["0"], "--epochs": ["1"], "--teacher-epochs": ["1"], "--out": ["bench_schemes"]},
    "lm_memory.py": {"--batch": ["1"], "--block": ["16"], "--vocab": ["2000"]},
    "lm_distill.py": {"--recipes": ["lee_scratch", "lee_fkl"], "--seeds": ["0"], "--epochs": ["1"],
                      "--teacher-epochs": ["1"], "--train-limit": ["16"]},
    # reads the runs lm_distill.py just made
    "lm_store.py": {"--k": ["8"], "--steps": ["1"], "--batch": ["2"], "--samples": ["4"], "--draws": ["2"]},
    "lm_teacher_precision.py": {"--batches": ["2"], "--batch": ["2"]},  # reads the runs lm_distill.py just made
    "tune_store.py": {"--trials": ["1"], "--epochs": ["1"], "--teacher-epochs": ["1"], "--rounds": ["1"],
                      "--train-limit": ["300"]},
    "cross_resolution.py": {"--seeds": ["0"], "--epochs": ["1"], "--teacher-epochs": ["1"], "--train-limit": ["300"]},
    "softlabels.py": {"--steps": ["1"], "--warmup": ["0"], "--batch": ["16"], "--epochs": ["1"], "--seeds": ["0"],
                      "--teacher-epochs": ["1"], "--aug-views": ["2"]},
    "fashion_methods.py": {"--seeds": ["0"], "--epochs": ["1"], "--teacher-epochs": ["1"], "--train-limit": ["500"],
                           "--students": ["mlp"], "--methods": ["scratch", "kd"], "--no-tune": [],
                           "--tune-epochs": ["1"], "--fm-views": ["2"]},
    "input_pipeline.py": {"--images": ["32"], "--rounds": ["1"]},
    "consistent.py": {"--epochs": ["1"], "--seeds": ["0"], "--teacher-epochs": ["1"]},
    "profile_student_step.py": {"--steps": ["1"], "--batch": ["8"]},
    "crd_step.py": {"--steps": ["1"], "--warmup": ["0"], "--cases": ["tiny"]},
    "student_policy_stability.py": {"--trials": ["1"], "--models": ["mlp"]},
    "window_step.py": {"--steps": ["1"], "--warmup": ["0"]},
}
# What is measured, and where: set only where the doc leaves the default (an absolute output path the doc gives is
# moved into the workspace).
BENCH_ADD_ONLY = {"--datasets", "--students", "--methods", "--out", "--out-dir"}
# Benchmark commands that are not run even in the slow suite (their options are still checked).
READS_RUNS = {"lm_store.py", "lm_teacher_precision.py"}  # read the runs lm_distill.py makes
BENCH_NOT_RUN = {
    "text_distill.py": "fine-tunes MiniLM on all 10,246 snippets (~35 CPU-minutes a teacher) and has no option to "
                       "shrink the data; the text recipes it runs are run shrunk by test_text_doc",
}
# `make quickstart` = `make env` (scripts/env.sh: builds .venv from the registry; the tests already run inside it)
# followed by `.venv/bin/kdkit quickstart`, which is what is run (shrunk).
TRANSLATE = {"make quickstart": "kdkit quickstart"}

# The tests that run each document's commands and Python blocks (test_text_doc is `slow`).
# A name "file.py::test" is a test in another file of tests/integration (the check below finds it there).
SCENARIOS = {"README.md": ("test_readme_commands", "test_readme_python"), "docs/report.md": ("test_report_doc",),
             "docs/softlabels.md": ("test_softlabels_doc",), "docs/tuning.md": ("test_tuning_doc",),
             "docs/text.md": ("test_text_doc",), "docs/lm.md": ("test_lm_doc",), "docs/speed.md": ("test_speed_doc",),
             "docs/large-image-folders.md": ("test_large_image_folders_doc",),
             "docs/teachers.md": ("test_teachers_doc", "test_teachers_docs.py::test_the_onnx_python_example_runs"),
             "docs/own-models-and-data.md": (
                 "test_own_model_and_data.py::test_the_documented_walk_through_runs_outside_the_repository",
                 "test_own_models_doc_python")}

IMAGE_LIMIT, TEXT_LIMIT = 500, 64  # training samples of a shrunk image / text run

# Python blocks, in document order: (textual shrink replacements, files that must exist after, stdout must contain).
# A plan that is a string is a block not run, with the reason (a fragment, or run by another test).
PYTHON: dict[str, list[tuple[dict[str, str], list[str], list[str]] | str]] = {
    "README.md": [({'"epochs=3"': f'"epochs=1", "data.train_limit={IMAGE_LIMIT}"'},
                   ["runs/demo/mnist_teacher/checkpoints/best.safetensors",
                    "runs/demo/mnist_kd/checkpoints/best.safetensors"], ["'top1'", "'epoch'"]),
                  ({"epochs=15": "epochs=2"},
                   ["runs/objects/teacher/checkpoints/best.safetensors",
                    "runs/objects/kd/checkpoints/best.safetensors"], ["'top1'", "runs/objects/kd"])],
    "docs/report.md": [({}, ["runs/report/report.html", "runs/report/summary.md"], [])],
    "docs/teachers.md": [
        ({}, [], []),  # the ONNX module from Python: run after the commands (it needs their export)
        ({}, ["teacher_logits.npy"], []),  # the logits table: run before the commands (the import reads it)
    ],
    "docs/own-models-and-data.md": [
        "the walk-through's models module: written to mymodels.py and trained by test_own_model_and_data.py",
        "a LossTerm subclass, run as a py: term by test_own_models_doc_python",
        "plug-in registration with `...` bodies: the shape of a module, not a program",
        "the object API with the reader's own small_net/big_net: README's runnable example is run instead",
    ],
    "docs/large-image-folders.md": [({}, ["jpegs/class2/19.jpg"], ["wrote 60 images"])],
    "docs/tuning.md": [({'overrides=["epochs=50"]': f'overrides=["epochs=1", "data.train_limit={IMAGE_LIMIT}"]'},
                        ["runs/seeds/seeds.json", "runs/seeds/seeds.md"], ["0 trained, 6 read"])],
    "docs/lm.md": [({"write_token_store(teacher, train,": "write_token_store(teacher, train.subset(torch.arange(8)),"},
                    ["runs/lm/teacher_tokens/manifest.json"], ["bytes per token", "lm_forward_kl"])],
    "docs/text.md": [({'kdkit.load_recipe("recipes/text/rt_tinybert.yaml")':
                       'kdkit.load_recipe("recipes/text/rt_tinybert.yaml", TEXT_SHRINK)'},
                      ["teacher.safetensors"], [])],
}



# ----------------------------------------------------------------------------------------------------------------------
# Extraction


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str


FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)


def doc_blocks(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text()
    return [Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2))
            for m in FENCE.finditer(text)]


def prose_prompts(doc: str) -> list[str]:
    """``$ command`` lines outside fences."""
    text = FENCE.sub("", (ROOT / doc).read_text())
    return [m.group(1).strip() for m in re.finditer(r"^\s*\$ (.+)$", text, re.M)]


def _strip_comment(line: str) -> str:
    return re.sub(r"(^|\s)#.*$", "", line).strip()


def shell_commands(block: Block) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    lines, out, cur = block.text.splitlines(), [], ""
    if block.lang == "console":
        lines = [ln.strip()[2:] for ln in lines if ln.strip().startswith("$ ")]
    for ln in lines:
        ln = _strip_comment(ln) if not cur else ln.strip()
        if ln.endswith("\\"):
            cur += ln[:-1].strip() + " "
            continue
        cmd = _strip_comment(cur + ln) if cur else ln
        cur = ""
        if cmd:
            out.append(re.sub(r"\s+", " ", cmd))
    return out


def doc_commands(doc: str) -> list[str]:
    cmds = [c for b in doc_blocks(doc) if b.lang in ("bash", "sh", "console") for c in shell_commands(b)]
    return cmds + prose_prompts(doc)


def python_blocks(doc: str) -> list[Block]:
    return [b for b in doc_blocks(doc) if b.lang == "python"]


def is_bench(cmd: str) -> bool:
    return cmd.startswith(".venv/bin/python benchmarks/")


# ----------------------------------------------------------------------------------------------------------------------
# Shrinking and artefacts


def _is_text(words: list[str]) -> bool:
    return any("recipes/text/" in w or "recipes/lm/" in w for w in words)  # lm: TEXT_LIMIT blocks of 64 tokens


def shrink_one(cmd: str) -> str:
    words = shlex.split(cmd)
    if words[:1] != ["kdkit"] or len(words) < 2:
        return cmd
    if words[1] in ("train", "distill", "cache", "lm-cache", "seeds"):
        extra = ["epochs=1", f"data.train_limit={TEXT_LIMIT if _is_text(words) else IMAGE_LIMIT}"]
        if _is_text(words):
            extra.append("data.val_fraction=0.02")  # 256 validation snippets instead of 2,562
        return cmd + "".join(f" --set {e}" for e in extra)
    if words[1] == "tune":  # 2 trials of 1 epoch on 500 digits
        cmd = re.sub(r"--trials \d+", "--trials 2", cmd)
        return cmd + f" --set epochs=1 --set data.train_limit={IMAGE_LIMIT}"
    if words[1] == "quickstart":
        return cmd + f" --teacher-epochs 1 --student-epochs 1 --train-limit {IMAGE_LIMIT}"
    return cmd


def shrink(cmd: str) -> str:
    """``cmd`` as it is run: `make quickstart` translated, `.venv/bin/` made this environment's, every kdkit call
    shrunk (pieces joined by ``;`` or ``&&`` separately)."""
    cmd = TRANSLATE.get(cmd, cmd)
    pieces = re.split(r"(\s*(?:;|&&)\s*)", cmd)
    return "".join(p if i % 2 else shrink_one(p) for i, p in enumerate(pieces))


def _sets(words: list[str]) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--set", "-s")]


def _option(words: list[str], *names: str) -> str | None:
    for i, w in enumerate(words[:-1]):
        if w in names:
            return words[i + 1]
    return None


def artefacts(ran: str, cwd: Path) -> list[Path]:
    """Files the documented command promises (``ran`` is the shrunk command)."""
    out: list[Path] = []
    for piece in re.split(r"\s*(?:;|&&)\s*", ran):
        words = shlex.split(piece)
        if words[:1] != ["kdkit"] or len(words) < 2:
            continue
        sub = words[1]
        if sub in ("train", "distill", "cache"):
            recipe = load_recipe(cwd / words[2], _sets(words))
            run = Path(recipe.output_dir) / recipe.name
            if sub == "cache":
                store = _option(words, "--out", "-o") or recipe.soft_labels or f"{run}-softlabels"
                out.append(Path(store) / "manifest.json")
            else:
                out += [run / "checkpoints" / "best.safetensors", run / "metrics.jsonl", run / "summary.json"]
        elif sub == "seeds":
            table = Path(_option(words, "--out", "-o") or "runs/seeds")
            out += [table / "seeds.json", table / "seeds.md"]
            recipes = [w for w in words[2:words.index("--seeds")] if w.endswith(".yaml")]
            seeds = [w for w in words[words.index("--seeds") + 1:] if w.isdigit()]
            for r in recipes:
                name = load_recipe(cwd / r, _sets(words)).name
                out += [Path("runs") / f"{name}-seed{k}" / "summary.json" for k in seeds]
        elif sub == "tune":
            recipe = load_recipe(cwd / words[2], _sets(words))
            out += [Path(recipe.output_dir) / f"{recipe.name}-tune" / f for f in ("journal.log", "study.json")]
            if "--show" in words:
                out += [Path(recipe.output_dir) / f"{recipe.name}-tune" / f
                        for f in ("plots/history.png", "plots/show.json", "report/report.html")]
        elif sub == "quickstart":
            q = Path(_option(words, "--output-dir") or "runs/quickstart")
            out += [q / "table.md", q / "table.json", q / "report" / "report.html"]
        elif sub == "export":
            out += [Path(words[2]) / "export" / "export.json", Path(words[2]) / "export" / "model.onnx"]
            if "--int8" in words:
                out.append(Path(words[2]) / "export" / "model.int8.onnx")
        elif sub == "bench":
            out += [Path("runs/bench/bench.json"), Path("runs/bench/bench.md")]
        elif sub == "report":
            rep = Path(_option(words, "--out") or "runs/report")
            out += [rep / "report.html", rep / "summary.md"]
    return [cwd / p for p in out]


# ----------------------------------------------------------------------------------------------------------------------
# Running


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kdkit-cache")  # text tokenisation, shared by the text blocks


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["KDKIT_CACHE_DIR"] = str(cache)
    env["MPLBACKEND"] = "Agg"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def workspace(tmp: Path, doc: str) -> Path:
    """A fresh directory with ``recipes/``, ``benchmarks/`` and the files the document's ``# NAME.yaml`` blocks
    define."""
    for d in ("recipes", "benchmarks"):
        (tmp / d).symlink_to(ROOT / d, target_is_directory=True)
    for b in doc_blocks(doc):
        m = re.match(r"#\s*(\S+\.ya?ml)\b", b.text)
        if b.lang == "yaml" and m:
            (tmp / m.group(1)).write_text(b.text)
    return tmp


def run_shell(cmd: str, cwd: Path, cache: Path, doc: str, timeout: int = 900) -> subprocess.CompletedProcess:
    ran = shrink(cmd)
    ran = ran.replace(".venv/bin/", f"{BIN}/")
    p = subprocess.run(["bash", "-c", ran], cwd=cwd, env=_env(cache), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"{doc}: `{cmd}` (run as `{ran}`) exited {p.returncode}:\n{p.stdout[-2000:]}\n" \
                              f"{p.stderr[-3000:]}"
    missing = [str(a.relative_to(cwd)) for a in artefacts(ran, cwd) if not a.exists()]
    assert not missing, f"{doc}: `{cmd}` did not write {missing}"
    return p


def run_doc_commands(doc: str, cwd: Path, cache: Path) -> list[str]:
    done = []
    for cmd in doc_commands(doc):
        if (doc, cmd) in NOT_RUN or is_bench(cmd):
            continue
        run_shell(cmd, cwd, cache, doc)
        done.append(cmd)
    return done


def run_python_blocks(doc: str, cwd: Path, cache: Path) -> None:
    blocks, plans = python_blocks(doc), PYTHON[doc]
    for i, (block, plan) in enumerate(zip(blocks, plans, strict=True)):
        if isinstance(plan, str):  # not run here, for the reason given
            continue
        replace, files, says = plan
        code = block.text
        for old, new in replace.items():
            assert old in code, f"{doc}:{block.line}: the shrink replacement {old!r} no longer matches; update PYTHON"
            code = code.replace(old, new)
        prelude = f"TEXT_SHRINK = ['epochs=1', 'data.train_limit={TEXT_LIMIT}', 'data.val_fraction=0.02']\n"
        script = cwd / f"_block_{i}.py"
        script.write_text(prelude + code)
        p = subprocess.run([str(BIN / "python"), script.name], cwd=cwd, env=_env(cache), capture_output=True,
                           text=True, timeout=900)
        assert p.returncode == 0, f"{doc}:{block.line}: the python block failed:\n{p.stdout[-2000:]}\n" \
                                  f"{p.stderr[-3000:]}"
        missing = [f for f in files if not (cwd / f).exists()]
        assert not missing, f"{doc}:{block.line}: the python block did not write {missing}"
        for s in says:
            assert s in p.stdout, f"{doc}:{block.line}: expected {s!r} in its output, got {p.stdout[-1000:]!r}"


# ----------------------------------------------------------------------------------------------------------------------
# Coverage and static checks (fast)


def test_every_block_is_run_or_listed():
    problems = []
    for doc in DOCS:
        for b in doc_blocks(doc):
            if b.lang not in RUN_LANGS | OTHER_LANGS:
                problems.append(f"{doc}:{b.line}: fence language {b.lang!r}; use one of "
                                f"{sorted(RUN_LANGS | OTHER_LANGS)} (shell commands: bash)")
        cmds = doc_commands(doc)
        runnable = [c for c in cmds if (doc, c) not in NOT_RUN and not is_bench(c)]
        if (runnable or python_blocks(doc)) and doc not in SCENARIOS:
            problems.append(f"{doc}: has commands or python blocks but no test runs it; add it to SCENARIOS")
        if len(python_blocks(doc)) != len(PYTHON.get(doc, [])):
            problems.append(f"{doc}: {len(python_blocks(doc))} python blocks, PYTHON plans "
                            f"{len(PYTHON.get(doc, []))}; add what each must produce")
        for c in cmds:
            if c.startswith("make ") and (doc, c) not in NOT_RUN and c not in TRANSLATE:
                problems.append(f"{doc}: `{c}` is neither translated nor listed in NOT_RUN")
    for doc, tests in SCENARIOS.items():
        for t in tests:
            if "::" in t:
                file, name = t.split("::")
                path = Path(__file__).with_name(file)
                if not path.is_file() or not re.search(rf"^def {re.escape(name)}\(", path.read_text(), re.M):
                    problems.append(f"SCENARIOS: no test {t} for {doc}")
            elif not callable(globals().get(t)):
                problems.append(f"SCENARIOS: no test {t} for {doc}")
    for doc, cmd in NOT_RUN:
        if cmd not in doc_commands(doc):
            problems.append(f"NOT_RUN lists `{cmd}` for {doc}, which no longer has it; remove the entry")
    assert not problems, "\n".join(problems)


def test_extraction_sees_the_commands():
    """The extractor itself: continuation lines, comments, console prompts."""
    b = Block("x.md", 1, "bash", "# a comment\nkdkit train a.yaml   # why\n.venv/bin/python b.py --x 1 \\\n"
                                 "    --y 2 --z   # tail\n\n")
    assert shell_commands(b) == ["kdkit train a.yaml", ".venv/bin/python b.py --x 1 --y 2 --z"]
    c = Block("x.md", 1, "console", "$ kdkit models\nresnet8 ...\n$ kdkit eval runs/x\n")
    assert shell_commands(c) == ["kdkit models", "kdkit eval runs/x"]
    assert doc_commands("README.md")[:2] == ["make quickstart", "make test"]
    assert shrink("kdkit models; kdkit distill recipes/mnist_kd.yaml --set name=x") == \
        f"kdkit models; kdkit distill recipes/mnist_kd.yaml --set name=x --set epochs=1 " \
        f"--set data.train_limit={IMAGE_LIMIT}"
    assert len(python_blocks("README.md")) == 2  # the recipe API and the object API


def test_yaml_blocks_parse_and_recipes_validate():
    for doc in DOCS:
        for b in doc_blocks(doc):
            if b.lang != "yaml":
                continue
            data = yaml.safe_load(b.text)
            assert isinstance(data, dict), f"{doc}:{b.line}: a yaml block that is not a mapping"
            if "student" in data or "stages" in data:
                recipe_from_dict(data, source=f"{doc}:{b.line}")
    # The README's recipe is the bundled one it runs.
    readme = next(b for b in doc_blocks("README.md") if b.lang == "yaml")
    assert recipe_from_dict(yaml.safe_load(readme.text)) == load_recipe(ROOT / "recipes" / "mnist_kd.yaml")


def test_bundled_recipes_have_unique_run_names():
    """Two recipes with one run name share a run directory: the second refuses to start after the first."""
    seen: dict[str, str] = {}
    dup = []
    for p in sorted((ROOT / "recipes").rglob("*.yaml")):
        name = str(yaml.safe_load(p.read_text()).get("name", Recipe.model_fields["name"].default))
        if name in seen:
            dup.append(f"{p.relative_to(ROOT)} and {seen[name]}: run name {name!r}")
        seen[name] = str(p.relative_to(ROOT))
    assert len(seen) > 80  # recipes/** was read (91 recipes today)
    assert not dup, "; ".join(dup)


def _script_options(script: str) -> set[str]:
    """The options a benchmark script's argparse declares (read from its source: importing it costs seconds)."""
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", (ROOT / "benchmarks" / script).read_text()))


def bench_commands() -> list[tuple[str, str]]:
    return [(doc, c) for doc in DOCS for c in doc_commands(doc) if is_bench(c)]


def test_benchmark_commands_name_real_options():
    """Every documented benchmark option exists, and every benchmark command is run (slow) or listed."""
    checked = 0
    for doc, cmd in bench_commands():
        words = shlex.split(cmd)[1:]
        script = words[0].removeprefix("benchmarks/")
        assert (ROOT / words[0]).is_file(), f"{doc}: `{cmd}`: no file {words[0]}"
        declared = _script_options(script)
        for opt in (w for w in words if w.startswith("--")):
            assert opt in declared, f"{doc}: `{cmd}`: {script} has no option {opt} (it has {sorted(declared)})"
        assert script in BENCH_SHRINK or script in BENCH_NOT_RUN, f"{doc}: `{cmd}`: say how to shrink {script}"
        for opt in BENCH_SHRINK.get(script, {}):
            assert opt in declared, f"BENCH_SHRINK: {script} has no option {opt}"
        checked += 1
    assert checked >= 10


def shrink_bench(cmd: str) -> str:
    """A documented benchmark command with BENCH_SHRINK applied (values of given options replaced, others added)."""
    words = shlex.split(cmd)
    script = words[1].removeprefix("benchmarks/")
    declared = _script_options(script)
    out, i = words[:2], 2
    todo = {k: v for k, v in BENCH_SHRINK[script].items() if k in declared}
    while i < len(words):
        w = words[i]
        i += 1
        if w in todo and w not in BENCH_ADD_ONLY:
            out += [w, *todo.pop(w)]
            while i < len(words) and not words[i].startswith("-"):
                i += 1
        else:
            todo.pop(w, None)
            out.append(w)
            if w in ("--out", "--out-dir") and i < len(words) and words[i].startswith("/"):
                out.append(words[i].lstrip("/"))  # e.g. /tmp/b15 -> WORKSPACE/tmp/b15
                i += 1
    positional = words[2] if len(words) > 2 and not words[2].startswith("-") else None
    for k, v in todo.items():  # options the doc leaves at their default; only those of this subcommand
        if positional and not _subcommand_has(script, positional, k):
            continue
        out += [k, *v]
    return shlex.join(out)


def _subcommand_has(script: str, sub: str, opt: str) -> bool:
    """Whether ``opt`` is declared for subcommand ``sub`` (scripts whose subparsers are named ``sp``/``sl``/... are
    read block by block: the lines between ``add_parser("sub"`` and the next ``add_parser``)."""
    src = (ROOT / "benchmarks" / script).read_text()
    m = re.search(rf"add_parser\(\s*\"{re.escape(sub)}\"(.*?)(?=add_parser\(|\Z)", src, re.S)
    if not m:
        return True  # not a subcommand (e.g. text_distill's positional step)
    var = re.search(r"(\w+)\s*=\s*\w+\.add_parser\(\s*\"" + re.escape(sub), src)
    block = m.group(1)
    if var:  # options may be added later through the variable (e.g. a loop over several subparsers)
        block += "".join(re.findall(rf"\b{var.group(1)}\.add_argument\(\s*\"[^\"]+\"", src))
    return f'"{opt}"' in block


# ----------------------------------------------------------------------------------------------------------------------
# The documents, run


@pytest.fixture(scope="module")
def readme_flow(tmp_path_factory, token_cache) -> Path:
    """README.md's commands, in order, in one fresh directory (shared by the report doc, which reads its runs)."""
    cwd = workspace(tmp_path_factory.mktemp("readme"), "README.md")
    done = run_doc_commands("README.md", cwd, token_cache)
    assert any(c.startswith("kdkit distill") for c in done)
    return cwd


def test_readme_commands(readme_flow):
    cwd = readme_flow
    # docs/architecture.md's run-directory map matches a real run directory.
    arch = next(b for b in doc_blocks("docs/architecture.md") if "run dir:" in b.text).text
    listing = arch[arch.index("run dir:"):]
    top = re.findall(r"[\w.]+\.(?:yaml|jsonl|json|safetensors)\b", listing[:listing.index("checkpoints/")])
    inner = re.search(r"checkpoints/ \(([^)]*)\)", listing).group(1)
    run = cwd / "runs" / "mnist_kd"
    assert top and all((run / f).is_file() for f in top), (top, sorted(p.name for p in run.iterdir()))
    for f in (s.strip() for s in inner.split(",")):
        assert list((run / "checkpoints").glob(f.rstrip("/"))), f"docs/architecture.md: no checkpoints/{f} in {run}"
    assert not (run / "best.safetensors").exists()  # it lives in checkpoints/, as the README and the map say


def test_readme_python(tmp_path, token_cache):
    run_python_blocks("README.md", workspace(tmp_path, "README.md"), token_cache)


def test_report_doc(readme_flow, tmp_path, token_cache):
    import shutil

    cwd = workspace(tmp_path, "docs/report.md")
    shutil.copytree(readme_flow / "runs", cwd / "runs", symlinks=True)  # the README's runs, as a reader would have
    shutil.rmtree(cwd / "runs" / "report", ignore_errors=True)
    run_doc_commands("docs/report.md", cwd, token_cache)
    run_python_blocks("docs/report.md", cwd, token_cache)


def test_softlabels_doc(tmp_path, token_cache):
    cwd = workspace(tmp_path, "docs/softlabels.md")
    assert (cwd / "my_kd.yaml").is_file()
    done = run_doc_commands("docs/softlabels.md", cwd, token_cache)
    assert [c.split()[1] for c in done] == ["train", "cache", "distill", "train", "train", "cache", "distill"]
    saved = yaml.safe_load((cwd / "runs" / "my_kd" / "config.yaml").read_text())
    assert saved["soft_labels"] == "runs/my_kd_store"
    oof = json.loads((cwd / "runs" / "my_oof_store" / "manifest.json").read_text())  # the cross-fitted store
    assert oof["source"]["kind"] == "cross-fit" and len(oof["source"]["teachers"]) == 2


def test_speed_doc(tmp_path, token_cache):
    cwd = workspace(tmp_path, "docs/speed.md")
    done = run_doc_commands("docs/speed.md", cwd, token_cache)
    assert [c.split()[1] for c in done][:2] == ["train", "distill"]
    run = cwd / "runs" / "mnist_kd"
    teacher = json.loads((run / "teacher_policy.json").read_text())["teachers"][0]
    student = json.loads((run / "student_policy.json").read_text())
    assert teacher["request"]["precision"] == "auto" and len(teacher["measurements"]) == 4
    assert student["request"] == {"precision": "auto", "channels_last": "auto"} and len(student["measurements"]) == 4
    assert any(c.startswith("kdkit eval runs/mnist_kd --precision auto") for c in done)


def test_tuning_doc(tmp_path, token_cache):
    cwd = workspace(tmp_path, "docs/tuning.md")
    done = run_doc_commands("docs/tuning.md", cwd, token_cache)
    assert [c.split()[1] for c in done] == ["train", "seeds", "seeds", "tune", "tune", "tune", "report", "distill"]
    assert "Seeds study" in (cwd / "runs" / "seeds" / "report" / "report.html").read_text()
    assert list((cwd / "runs" / "mnist_kd_tracked" / "track").rglob("events.out.tfevents.*"))  # the tracker wrote
    table = json.loads((cwd / "runs" / "seeds" / "seeds.json").read_text())
    assert table["seeds"] == [0, 1, 2, 3, 4] and table["baseline"] == "mnist_scratch"
    assert len(table["recipes"]["mnist_kd"]["gain_best_top1"]["values"]) == 5
    run_python_blocks("docs/tuning.md", cwd, token_cache)  # seeds 0-2 of both recipes exist: read, not retrained
    from kdkit.study.tune import load_study

    study = load_study(str(cwd / "kd_search.yaml"), [f"output_dir={cwd / 'runs'}"])
    assert len(study.trials) == 4  # two calls of 2 trials (shrunk from 20 and 10), one study


@pytest.mark.slow
def test_large_image_folders_doc(tmp_path, token_cache):
    """The folder is written by the doc's Python block, then trained from (streamed, 2 workers), cached over 8 mixed
    views and distilled from the store: three CLI processes, ~110 s on the shared 2 cores (load 13), hence slow; the
    same flow runs in the default suite in-process (tests/integration/test_stream_e2e.py, ~20 s)."""
    cwd = workspace(tmp_path, "docs/large-image-folders.md")
    run_python_blocks("docs/large-image-folders.md", cwd, token_cache)
    done = run_doc_commands("docs/large-image-folders.md", cwd, token_cache)
    assert [c.split()[1] for c in done] == ["train", "cache", "distill"]
    manifest = json.loads((cwd / "runs" / "folder_kd_store" / "manifest.json").read_text())
    assert manifest["views"] == 8 and manifest["identity"]["augment"]["mixup"] == 1.0


@pytest.mark.slow
def test_text_doc(tmp_path, token_cache):
    cwd = workspace(tmp_path, "docs/text.md")
    done = run_doc_commands("docs/text.md", cwd, token_cache)
    assert len(done) == 7
    run_python_blocks("docs/text.md", cwd, token_cache)


@pytest.mark.slow
@pytest.mark.parametrize("doc", sorted({d for d, _ in bench_commands()}))
def test_benchmark_commands_run_shrunk(doc, tmp_path, token_cache):
    """Each documented benchmark command, shrunk, in a fresh directory: it exits 0 and prints its JSON result."""
    cwd = workspace(tmp_path, doc)
    ran = 0
    # A benchmark that reads another's runs goes after every other command of its document, whatever the prose order
    # (docs/benchmarks.md describes the token store before the table whose runs it reads).
    ordered = sorted(bench_commands(), key=lambda dc: shlex.split(dc[1])[1].removeprefix("benchmarks/") in READS_RUNS)
    for d, cmd in ordered:
        script = shlex.split(cmd)[1].removeprefix("benchmarks/")
        if d != doc or script in BENCH_NOT_RUN:
            continue
        small = shrink_bench(cmd).replace(".venv/bin/python", str(BIN / "python"), 1)
        p = subprocess.run(["bash", "-c", small], cwd=cwd, env=_env(token_cache), capture_output=True, text=True,
                           timeout=1800)
        assert p.returncode == 0, f"{doc}: `{cmd}` (run as `{small}`) exited {p.returncode}:\n" \
                                  f"{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        assert "{" in p.stdout, f"{doc}: `{small}` printed no JSON: {p.stdout[-500:]!r}"
        ran += 1
    assert ran or all(shlex.split(c)[1].removeprefix("benchmarks/") in BENCH_NOT_RUN
                      for d, c in bench_commands() if d == doc)


@pytest.mark.slow
def test_lm_doc(tmp_path, token_cache):
    """docs/lm.md: tokenizer, teacher, export, scratch and distilled students, eval (shrunk), then the store block."""
    cwd = workspace(tmp_path, "docs/lm.md")
    done = run_doc_commands("docs/lm.md", cwd, token_cache)
    # + lm-cache, distil from a top-k and a sampled store; ULD tokenizer and distil; lee_hidden; lee_gkd
    assert len(done) == 19
    run_python_blocks("docs/lm.md", cwd, token_cache)


def test_own_models_doc_python(tmp_path, token_cache):
    """docs/own-models-and-data.md's loss-term block, as written, as a ``py:`` term of a real run beside the recipe."""
    block = python_blocks("docs/own-models-and-data.md")[1].text
    assert "class LogitNorm(LossTerm)" in block
    (tmp_path / "myterms.py").write_text(block)
    (tmp_path / "r.yaml").write_text(
        "name: own_term\ndata: {name: digits, batch_size: 64}\nstudent: {name: mlp, params: {hidden: [32]}}\n"
        "terms: [{name: ce}, {name: 'py:myterms:LogitNorm', weight: 0.01, params: {scale: 2.0}}]\nepochs: 2\n")
    p = run_shell("kdkit train r.yaml", tmp_path, token_cache, "docs/own-models-and-data.md")
    assert p.returncode == 0, p.stderr[-2000:]
    hist = [json.loads(x) for x in (tmp_path / "runs" / "own_term" / "metrics.jsonl").read_text().splitlines()]
    assert hist and "train_LogitNorm" in hist[0] and hist[0]["train_LogitNorm"] > 0


@pytest.mark.slow
def test_teachers_doc(tmp_path, token_cache):
    """docs/teachers.md in a fresh directory: the logits-table block first (the import command reads its file), the
    commands in order, then the ONNX block (it reads the export the commands made)."""
    doc = "docs/teachers.md"
    cwd = workspace(tmp_path, doc)
    blocks, plans = python_blocks(doc), PYTHON[doc]
    order = [1, None, 0]  # python block 1, the commands, python block 0
    for step in order:
        if step is None:
            done = run_doc_commands(doc, cwd, token_cache)
            assert "kdkit export runs/mnist_teacher" in done and any("--from-logits" in c for c in done)
            assert (cwd / "runs" / "mnist_kd_onnx" / "checkpoints" / "best.safetensors").is_file()
            continue
        script = cwd / f"_block_{step}.py"
        script.write_text(blocks[step].text)
        p = subprocess.run([str(BIN / "python"), script.name], cwd=cwd, env=_env(token_cache), capture_output=True,
                           text=True, timeout=900)
        assert p.returncode == 0, f"{doc}:{blocks[step].line}: {p.stderr[-3000:]}"
        assert all((cwd / f).exists() for f in plans[step][1]), plans[step][1]
