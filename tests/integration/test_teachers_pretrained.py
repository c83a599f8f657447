"""Pretrained teachers from local files only: a timm model's weights in a temporary Hugging Face cache and a
torchvision model's in a temporary torch hub cache (each saved in the layout the real files have: a plain state dict
of the 1000-class RGB ImageNet model), loaded with a new head and a grey stem; a teacher fine-tuned from pretrained
weights beats the same teacher from scratch; the bundled recipe fine-tunes and distils."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")

import kdkit  # noqa: E402
from kdkit.builder import make_model_factory  # noqa: E402
from kdkit.errors import KdkitError  # noqa: E402
from kdkit.models.factory import create_model, load_model  # noqa: E402
from kdkit.recipe import ModelSpec  # noqa: E402

REV = "0123456789abcdef0123456789abcdef01234567"


def hf_cache_put(cache: Path, repo_id: str, state: dict[str, torch.Tensor]) -> Path:
    """Write ``state`` as ``model.safetensors`` of ``repo_id`` in the hub cache layout huggingface_hub reads:
    ``models--ORG--NAME/refs/main`` (the revision) and ``snapshots/REV/model.safetensors``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _imagenet_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=1000).state_dict()


def test_timm_weights_from_the_hf_cache_get_a_new_head_and_a_grey_stem(hf_cache, capfd):
    state = _imagenet_state("test_resnet")
    hf_cache_put(hf_cache, "timm/test_resnet.r160_in1k", state)
    make = make_model_factory(num_classes=10, in_channels=1, image_size=28)
    for source in ("default", "hf-hub:timm/test_resnet.r160_in1k"):
        model = make(ModelSpec(name="timm:test_resnet", pretrained=source), "teachers.0")
        own = model.state_dict()
        assert own["fc.weight"].shape == (10, state["fc.weight"].shape[1])  # a fresh 10-class head
        stem = next(k for k, v in state.items() if v.dim() == 4 and v.shape[1] == 3)
        torch.testing.assert_close(own[stem], state[stem].sum(1, keepdim=True), rtol=0, atol=0)
        same = [k for k in own if k in state and not k.startswith("fc.") and k != stem]
        assert len(same) > 20 and all(torch.equal(own[k], state[k]) for k in same)
        line = capfd.readouterr().err
        assert "pretrained teachers.0 (timm:test_resnet)" in line and "new head (fresh): fc.weight" in line
        assert f"adapted: {stem}" in line
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)


def test_torchvision_default_weights_from_the_torch_hub_cache(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's own file name
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(0)
    state = tvm.resnet18(weights=None).state_dict()
    torch.save(state, ckpt)
    model = make_model_factory(10, 1, 28)(ModelSpec(name="torchvision:resnet18", pretrained="default"))
    own = model.state_dict()
    assert own["fc.weight"].shape == (10, 512) and own["conv1.weight"].shape == (64, 1, 7, 7)
    torch.testing.assert_close(own["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True), rtol=0, atol=0)
    assert torch.equal(own["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert "new head (fresh): fc.weight (1000, 512) -> (10, 512), fc.bias" in capfd.readouterr().err
    # the same file given by path, into a 1000-class RGB model: everything loads, nothing is replaced
    full = make_model_factory(1000, 3, 32)(ModelSpec(name="torchvision:resnet18", pretrained=str(ckpt)))
    assert all(torch.equal(full.state_dict()[k], v) for k, v in state.items())
    assert "new head" not in capfd.readouterr().err


def test_pretrained_refusals_are_one_line(hf_cache, tmp_path):
    make = make_model_factory(10, 1, 28)
    hf_cache_put(hf_cache, "timm/other", _imagenet_state("test_vit"))
    cases = [
        (ModelSpec(name="timm:test_resnet", pretrained="hf-hub:timm/not_cached"),
         "'hf-hub:timm/not_cached' is not in the local Hugging Face cache.*never downloads"),
        (ModelSpec(name="timm:test_resnet", pretrained="hf-hub:timm/other"),
         "does not fit timm:test_resnet beyond its classifier head.*another architecture"),
        (ModelSpec(name="mlp", pretrained="default"), "'default' weights are known for torchvision: and timm:"),
        (ModelSpec(name="timm:test_resnet", pretrained=str(tmp_path / "nope.safetensors")), "not found"),
        (ModelSpec(name="timm:test_resnet", params={"pretrained": True}), "never downloads.*`pretrained: FILE"),
    ]
    for spec, match in cases:
        with pytest.raises(KdkitError, match=match) as err:
            make(spec, "student")
        assert "\n" not in str(err.value) and "student" in str(err.value) or "model 'timm" in str(err.value)


def test_a_teacher_fine_tuned_from_pretrained_weights_beats_one_from_scratch(hf_cache, tmp_path):
    """Real transfer on real digits: 'pretrain' test_resnet on the 3,744 training digits that the fine-tuning subset
    leaves out, save it as an ImageNet-layout file (its head swapped for a 1000-class one), then fine-tune it with a
    new 10-class head on 256 other digits. After 2 epochs it is far ahead of the same network from scratch
    (measured: 88.1 % vs 11.5 % top-1; the pretraining run reaches 92.1 %)."""
    data = {"name": "mnist_5k", "val_fraction": 0.2, "batch_size": 64, "train_limit": 256}
    base = {"seed": 0, "output_dir": str(tmp_path), "terms": [{"name": "ce"}], "optim": {"name": "adamw", "lr": 0.003},
            "schedule": {"name": "onecycle"}}
    pre = kdkit.train(dict(base, name="pretrain", data=dict(data, held_out=True), epochs=1,
                           student={"name": "timm:test_resnet"}), quiet=True)
    model, _ = load_model(pre.run_dir)
    state = dict(model.state_dict())
    torch.manual_seed(1)
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, state["fc.weight"].shape[1]) * 0.01, torch.zeros(1000)
    hf_cache_put(hf_cache, "timm/test_resnet.r160_in1k", state)
    runs = {}
    for tag, spec in (("scratch", {"name": "timm:test_resnet"}),
                      ("finetuned", {"name": "timm:test_resnet", "pretrained": "default"})):
        runs[tag] = kdkit.train(dict(base, name=tag, data=data, epochs=2, student=spec), quiet=True)
    assert pre.best["top1"] > 60.0
    assert runs["finetuned"].best["top1"] > runs["scratch"].best["top1"] + 15.0
    # the fine-tuned teacher is a checkpoint like any other: distil from it
    kd = kdkit.distill(dict(base, name="kd", data=data, epochs=2, student={"name": "mlp", "params": {"hidden": [32]}},
                            teachers=[{"name": "timm:test_resnet", "checkpoint": str(runs["finetuned"].run_dir)}],
                            terms=[{"name": "ce", "weight": 0.5},
                                   {"name": "kd", "weight": 0.5, "params": {"temperature": 4}}]), quiet=True)
    assert kd.best["top1"] > 25.0


def test_the_bundled_pretrained_recipe_fine_tunes_then_distils(hf_cache, tmp_path):
    """recipes/teachers/mnist_pretrained_timm.yaml as shipped, with a resnet10t file of the real layout (random
    weights, 1000 classes, RGB) in the temporary HF cache; one short epoch per stage."""
    hf_cache_put(hf_cache, "timm/resnet10t.c3_in1k", _imagenet_state("resnet10t"))
    res = kdkit.train("recipes/teachers/mnist_pretrained_timm.yaml", quiet=True, overrides=[
        f"output_dir={tmp_path}", "epochs=1", "data.train_limit=128"])
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["teacher", "student"]
    teacher_meta = load_model(res.run_dir / "stages" / "teacher")[1]
    assert teacher_meta["model"]["name"] == "timm:resnet10t" and teacher_meta["num_classes"] == 10
    assert create_model("timm:resnet10t", 10, 1, 28).fc.weight.shape == (10, 512)


def test_an_hf_classifier_from_the_hf_cache_by_hub_id(hf_cache, capfd):
    """A Hugging Face sequence classifier saved into the temporary HF cache (with MiniLM's tokenizer) is found by its
    Hub id, offline; trained with another number of labels, it gets a fresh head of the data's class count."""
    transformers = pytest.importorskip("transformers")
    from kdkit.text.tokenizers import load_tokenizer

    tok = load_tokenizer("hf:minilm")
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, num_labels=5, max_position_embeddings=128)
    torch.manual_seed(0)
    saved = transformers.BertForSequenceClassification(cfg)
    snap = hf_cache_put(hf_cache, "kdkit-test/tiny-bert-5way", {}).parent
    (snap / "model.safetensors").unlink()
    saved.save_pretrained(snap)
    tok.save_pretrained(snap)
    model = create_model("hf:kdkit-test/tiny-bert-5way", num_classes=2, in_channels=1, image_size=64)
    own = model.hf.state_dict()
    ref = saved.state_dict()
    assert own["classifier.weight"].shape == (2, 32)
    assert all(torch.equal(own[k], v) for k, v in ref.items() if not k.startswith("classifier."))
    assert "new head (fresh) for 2 classes: classifier.bias (5,) -> (2,), classifier.weight" in capfd.readouterr().err
    same = create_model("hf:kdkit-test/tiny-bert-5way", num_classes=5, in_channels=1, image_size=64)
    assert torch.equal(same.hf.classifier.weight, saved.classifier.weight)
    with pytest.raises(KdkitError, match="Hub id 'kdkit-test/absent' is not in the local Hugging Face cache"):
        create_model("hf:kdkit-test/absent", num_classes=2, in_channels=1, image_size=64)
