"""Every registered scheme honours the engine's contract (:class:`kdkit.types.TrainableScheme`), built from a bundled
recipe on real MNIST digits: one training step gives a finite loss whose gradient reaches the student, the optimiser
step changes it, and the saved "student" is the first evaluation model and answers with (B, K) logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdkit.builder import build_scheme
from kdkit.data.run import build_data
from kdkit.data.sources import resolve_dataset
from kdkit.recipe import load_recipe
from kdkit.registry import SCHEMES
from kdkit.types import StepOutput, TrainableScheme, TrainState

ROOT = Path(__file__).resolve().parents[2]


def _recipes_by_scheme() -> dict[str, Path]:
    """For each scheme, the first bundled single-stage recipe on offline data (no path to a user's files) using it."""
    found: dict[str, Path] = {}
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        r = load_recipe(path)
        if not r.stages and not resolve_dataset(r.data.name)[0].meta.get("takes_path"):
            found.setdefault(r.scheme.name, path)
    return found


RECIPES = _recipes_by_scheme()
NAMES = SCHEMES.names()


def test_every_scheme_has_a_description_and_a_bundled_recipe():
    assert {"offline", "online", "mutual", "specialists", "self_distill", "bss"} <= set(NAMES)
    for entry in SCHEMES.entries():
        assert entry.description, entry.name
    missing = sorted(set(NAMES) - set(RECIPES))
    assert not missing, f"schemes without a single-stage recipe in recipes/: {missing}"


def _lm_artefacts(tmp_path: Path) -> list[str]:
    """An LM recipe reads a tokenizer and an exported teacher (runs/lm/...): tiny, made from the real corpus."""
    from kdkit.lm.corpora import read_corpus
    from kdkit.lm.data import split_documents
    from kdkit.lm.models import build_gpt2, save_hf
    from kdkit.lm.tokenizer import train_tokenizer

    docs = read_corpus("lee_background")
    train, _ = split_documents(len(docs), 0.1, 0)
    tok = str(train_tokenizer([docs[i] for i in train], tmp_path / "tok", 300))
    teacher = save_hf(build_gpt2("gpt2", 300, image_size=16, layers=2, width=32, heads=2), tmp_path / "t", tok)
    return [f"data.params.tokenizer={tok}", "data.params.block=16", f"teachers.0.name=hf:{teacher}"]


# schemes whose only bundled recipe reads artefacts a user makes first (a tokenizer, an exported teacher)
ARTEFACTS = {"gkd": _lm_artefacts}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread avoids waiting on a busy second core
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", NAMES)
def test_scheme_contract(name: str, tmp_path: Path) -> None:
    path = RECIPES[name]
    r = load_recipe(path)
    overrides = [f"output_dir={tmp_path}", "data.train_limit=64", "data.batch_size=16", "epochs=2"]
    # No trained teacher here: teachers start from random weights (the contract does not depend on them).
    overrides += [f"teachers.{i}.checkpoint=null" for i in range(len(r.teachers))]
    overrides += ARTEFACTS[name](tmp_path) if name in ARTEFACTS else []
    r = load_recipe(path, overrides)
    torch.manual_seed(0)
    data = build_data(r)
    scheme = build_scheme(r, data)
    assert isinstance(scheme, TrainableScheme), f"{name}: {type(scheme).__name__} misses part of the protocol"

    model = scheme.trainable()
    assert isinstance(model, torch.nn.Module)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params, f"{name}: nothing to train"
    student = next(iter(scheme.eval_models().values()))
    student_params = {id(p) for p in student.parameters()}
    assert student_params <= {id(p) for p in model.parameters()}, f"{name}: the saved student is not trained"

    opt = torch.optim.SGD(params, lr=0.05)
    state = TrainState(epoch=0, step=0, steps_per_epoch=4, epochs=2)
    scheme.on_epoch_start(state)
    batch = next(iter(data.train_loader))
    k = data.num_classes
    model.train()
    out = scheme.step(model, batch, state)
    assert isinstance(out, StepOutput)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss), (name, out.loss)
    assert out.logits.shape == (len(batch["target"]), k)
    for term, v in out.terms.items():
        assert not v.requires_grad and torch.isfinite(v).all(), (name, term)

    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    opt.zero_grad()
    out.loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads), f"{name}: no gradient reaches the student"
    opt.step()
    moved = [n for n, p in student.named_parameters() if not torch.equal(before[n], p.detach())]
    assert moved, f"{name}: the optimiser step left the student unchanged"

    state.step = 1
    out2 = scheme.step(model, batch, state)
    assert torch.isfinite(out2.loss)

    student.eval()
    with torch.no_grad():
        from kdkit.types import logits_of

        logits = logits_of(student(batch["input"]))
    assert logits.shape == (len(batch["target"]), k) and torch.isfinite(logits).all()
