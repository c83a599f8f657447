"""Two-process data-parallel training on CPU through Accelerate (gloo): ranks stay in sync and the run completes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent


def _torchrun(worker: str, port: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``worker`` in two processes on the CPU (gloo); fail with its stderr if it fails."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(port), str(HERE / worker),
                           *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    proc = _torchrun("ddp_worker.py", 29561, str(tmp_path))
    assert "world 2" in proc.stdout
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    # Each rank saw a different half of every batch; identical weights prove gradients were all-reduced.
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    hist = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and hist[-1]["val_top1"] > 50.0
    # training metrics are summed over both processes' shards, not rank 0's half alone
    m = len(json.loads((tmp_path / "ddp" / "split.json").read_text())["train_limit_positions"])
    assert m <= hist[0]["samples"] <= m + 1 and 0.0 < hist[0]["train_top1"] < 100.0  # (+1: shard padding)
    assert (tmp_path / "ddp" / "checkpoints" / "best.safetensors").is_file()


def test_ddp_with_a_term_window_leaves_its_connector_unused_without_error(tmp_path):
    _torchrun("ddp_worker.py", 29563, str(tmp_path), "window")
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    # parameters agree; BatchNorm running statistics are each rank's own since the last forward (DDP broadcasts
    # rank 0's buffers at the start of a forward, and only rank 0 writes checkpoints)
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    assert len(params) > 10 and all(torch.allclose(a[k], b[k], atol=1e-6) for k in params)
    hist = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert "train_fitnet" in hist[0] and "train_fitnet" not in hist[1]  # the window really closed


def test_crd_memory_bank_gathers_every_shard_under_ddp(tmp_path):
    """Each process's bank receives both processes' rows, so the banks stay identical and no shard is left stale."""
    from kdkit.losses.contrastive import MemoryBank

    _torchrun("crd_ddp_worker.py", 29562, str(tmp_path), timeout=300)
    a, b = load_file(str(tmp_path / "bank0.safetensors")), load_file(str(tmp_path / "bank1.safetensors"))
    before = MemoryBank(16, feat_dim=4, generator=torch.Generator().manual_seed(0)).memory_s
    assert torch.equal(a["memory_s"], b["memory_s"]) and torch.equal(a["memory_t"], b["memory_t"])
    changed = (a["memory_s"] != before).any(1).nonzero().flatten().tolist()
    assert changed == [0, 1, 2, 8, 9, 10, 11, 12]  # both shards' rows, and nothing else


def test_ddp_with_precision_auto_trains_every_rank_in_rank0s_mode(tmp_path):
    _torchrun("ddp_worker.py", 29564, str(tmp_path), "auto")
    saved = json.loads((tmp_path / "ddp" / "student_policy.json").read_text())
    assert len(saved["measurements"]) == 4 and saved["chosen"]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    # one mode, gradients all-reduced: identical weights. (BatchNorm running statistics are broadcast from rank 0 at
    # the start of each forward, so after the last one each rank holds its own batch's update: not compared.)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if "running_" not in k)


def test_ddp_with_channels_last_trains_in_sync_without_the_stride_warning(tmp_path):
    """The memory format is applied after DDP wrapped the student; DDP rebuilds its buckets after the first backward,
    so its one-time "grad strides" warning is an artefact the engine silences (not an error, no copy after step 1)."""
    proc = _torchrun("ddp_worker.py", 29565, str(tmp_path), "channels_last")
    assert "Grad strides do not match" not in proc.stderr
    saved = json.loads((tmp_path / "ddp" / "student_policy.json").read_text())
    assert saved["chosen"] == "fp32+channels_last"
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if "running_" not in k)


@pytest.mark.slow  # two processes each import transformers and train a tiny GPT-2 (~40 s)
def test_two_process_lm_distillation_keeps_the_teacher_out_of_ddp(tmp_path):
    """A causal-LM recipe (on-policy GKD, JSD) on two CPU processes: ranks agree, the loss falls, the teacher is
    never wrapped nor trained, and only rank 0 writes weights and checkpoints."""
    from kdkit.lm.corpora import read_corpus
    from kdkit.lm.data import split_documents
    from kdkit.lm.models import build_gpt2, save_hf
    from kdkit.lm.tokenizer import train_tokenizer

    docs = read_corpus("lee_background")
    train, _ = split_documents(len(docs), 0.05, 0)
    tok = str(train_tokenizer([docs[i] for i in train], tmp_path / "tok", 300))
    torch.manual_seed(0)
    teacher = save_hf(build_gpt2("gpt2", 300, image_size=32, layers=2, width=32, heads=2), tmp_path / "t", tok)
    _torchrun("lm_ddp_worker.py", 29567, str(tmp_path), tok, str(teacher))
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2]
    for i in info:
        assert i["teacher_types"] == ["CausalLM"] and not i["teacher_in_trainable"]
        assert not i["teacher_requires_grad"] and not i["teacher_training"]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    # each rank generated its own continuations of its own shard; identical weights: gradients were all-reduced
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # DDP wraps exactly what the scheme says is trainable (the student), never the teacher
    assert [i["stepped"] for i in info] == ["DistributedDataParallel"] * 2
    assert info[0]["writes"] and not info[1]["writes"]  # weights and checkpoints: written once, by rank 0
    assert any(w.endswith("last.safetensors") for w in info[0]["writes"])
    hist = [json.loads(x) for x in (tmp_path / "lm_ddp" / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["train_lm_jsd"] < hist[0]["train_lm_jsd"] and 0 < hist[0]["train_on_policy"] <= 1
