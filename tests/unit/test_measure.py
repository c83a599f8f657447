"""kdkit.deploy.measure: parameter counts, safetensors size and CPU latency on tiny real modules."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdkit.deploy.measure import LatencyStats, count_params, cpu_latency, model_card, size_on_disk_mb
from kdkit.errors import KdkitError


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def test_count_params_matches_layer_formula():
    # 784·64 + 64 + 64·10 + 10, computed by hand from the layer shapes.
    assert count_params(_mlp()) == 784 * 64 + 64 + 64 * 10 + 10 == 50_890
    # conv 1·8·3·3 (no bias) + BN affine 2·8 + linear 8·10 + 10; BN running stats are buffers, not parameters.
    assert count_params(_cnn()) == 72 + 16 + 90


def test_count_params_trainable_only_and_tied_weights():
    m = _mlp()
    for p in m[1].parameters():
        p.requires_grad_(False)
    assert count_params(m, trainable_only=True) == 64 * 10 + 10
    assert count_params(m) == 50_890

    tied = nn.Sequential(nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False))
    tied[1].weight = tied[0].weight
    assert count_params(tied) == 256  # the shared matrix counts once


def test_size_on_disk_is_fp32_bytes_plus_small_header():
    m = _mlp()
    size = size_on_disk_mb(m)
    payload = count_params(m) * 4 / 1e6  # float32, MB = 1e6 bytes
    assert payload <= size <= payload + 0.01  # safetensors' JSON header is a few hundred bytes

    # Buffers are saved too: BN running_mean/var (8+8 floats) + num_batches_tracked (one int64).
    cnn = _cnn()
    buffers = (8 + 8) * 4 + 8
    assert size_on_disk_mb(cnn) * 1e6 >= count_params(cnn) * 4 + buffers

    # Half precision halves the payload.
    half = size_on_disk_mb(_mlp().half())
    assert payload / 2 <= half <= payload / 2 + 0.01


def test_size_on_disk_stores_tied_weights_once():
    tied = nn.Sequential(nn.Linear(256, 256, bias=False), nn.Linear(256, 256, bias=False))
    tied[1].weight = tied[0].weight
    assert size_on_disk_mb(tied) < 1.5 * 256 * 256 * 4 / 1e6


def test_cpu_latency_stats_are_sane_and_restore_state():
    m = _cnn().train()
    x = torch.randn(4, 1, 28, 28)
    threads = torch.get_num_threads()
    stats = cpu_latency(m, x, warmup=2, repeats=5, min_time_s=0.0, threads=1)
    assert isinstance(stats, LatencyStats)
    assert stats.p50_ms > 0 and stats.p90_ms >= stats.p50_ms and stats.mean_ms > 0
    assert stats.n == 5 and stats.batch_size == 4
    assert stats.per_sample_ms == pytest.approx(stats.p50_ms / 4)
    assert m.training, "the training flag must be restored"
    assert torch.get_num_threads() == threads, "the thread count must be restored"


def test_cpu_latency_runs_until_min_time_and_times_plain_callables():
    calls = []

    def fn(x):
        calls.append(1)
        return x * 2

    stats = cpu_latency(fn, torch.ones(3), warmup=3, repeats=2, min_time_s=0.02)
    assert stats.n >= 2 and len(calls) == 3 + stats.n
    assert stats.n <= 20 * 2  # capped

    # A module runs in eval mode under inference_mode while timed.
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen["training"] = self.training
            seen["inference"] = torch.is_inference_mode_enabled()
            return x

    cpu_latency(Probe().train(), torch.ones(1, 2), warmup=0, repeats=1, min_time_s=0.0)
    assert seen == {"training": False, "inference": True}


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"threads": 0}])
def test_cpu_latency_rejects_bad_arguments(kwargs):
    with pytest.raises(KdkitError):
        cpu_latency(lambda x: x, torch.ones(1), **kwargs)


def test_model_card_is_json_ready():
    card = model_card(_mlp(), (1, 28, 28), batch_sizes=(1, 8), warmup=1, repeats=3, min_time_s=0.0)
    assert card["params"] == card["trainable_params"] == 50_890
    assert card["size_mb"] == pytest.approx(size_on_disk_mb(_mlp()))
    assert set(card["latency"]) == {1, 8}
    assert card["latency"][8]["batch_size"] == 8
    json.dumps(card)
