"""Causal LMs (kdkit.lm): offline tokenizer, packed blocks, hf: folders (round trip, layer-cut students, padded
vocabularies, refused tokenizers) and the lm:gpt2 configuration builder. Real text (gensim's lee corpus), tiny
GPT-2s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdkit.errors import ConfigError
from kdkit.lm.corpora import read_corpus
from kdkit.lm.data import LMBatchLoader, load_lm_split, pack, split_documents
from kdkit.lm.models import CausalLM, build_gpt2, is_causal_lm_folder, resolve_init, save_hf
from kdkit.lm.tokenizer import train_tokenizer, vocabulary_difference
from kdkit.models.factory import create_model
from kdkit.text.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    docs = read_corpus("lee_background")
    train, _ = split_documents(len(docs), 0.1, 0)
    return str(train_tokenizer([docs[i] for i in train], tmp_path_factory.mktemp("tok"), 400))


@pytest.fixture(scope="module")
def teacher_dir(tok, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_gpt2("gpt2", 400, image_size=16, layers=3, width=32, heads=2)
    return save_hf(model, tmp_path_factory.mktemp("teacher"), tok)


def test_tokenizer_round_trips_real_text(tok):
    t = load_tokenizer(tok)
    assert len(t) == 400 and t.pad_token_id == 0 and t.eos_token_id == 1
    text = "Hundreds of people have been forced to vacate their homes."
    assert t.decode(t(text)["input_ids"]) == text  # byte-level BPE: lossless


def test_documents_split_disjoint_and_blocks_predict_every_token_once(tok):
    tr, va = split_documents(300, 0.1, 0)
    assert len(va) == 30 and not set(tr) & set(va) and sorted(tr + va) == list(range(300))
    assert split_documents(300, 0.1, 0) == (tr, va) and split_documents(300, 0.1, 1) != (tr, va)
    t = load_tokenizer(tok)
    docs = read_corpus("lee_background")[:5]
    blocks = pack(docs, t, 16)
    stream: list[int] = []
    for d in docs:  # <eos> in front of every document
        stream += [1] + t(d, add_special_tokens=False)["input_ids"]
    assert blocks.shape == (len(stream[:-1]) // 16, 17)
    assert blocks[:, 0].tolist() == [stream[i * 16] for i in range(blocks.shape[0])]
    flat_targets = blocks[:, 1:].reshape(-1).tolist()
    assert flat_targets == stream[1 : 1 + len(flat_targets)]  # every token is a target exactly once


def test_batches_flatten_targets(tok):
    train, val, split = load_lm_split("lee_background", tok, block=16)
    assert train.tokens > 5 * val.tokens > 0 and len(split["val_docs"]) == 30  # 10 % of 300 documents
    batch = next(iter(LMBatchLoader(train, 4, shuffle=True, seed=0)))
    assert batch["input"].shape == (4, 16) and batch["target"].shape == (64,)
    assert torch.equal(batch["target"].view(4, 16)[:, :-1], batch["input"][:, 1:])


def test_gpt2_from_config_and_hf_round_trip(tok, teacher_dir):
    assert is_causal_lm_folder(teacher_dir)
    assert json.loads((teacher_dir / "config.json").read_text())["n_layer"] == 3
    a = create_model(f"hf:{teacher_dir}", num_classes=400, in_channels=1, image_size=16)
    b = create_model(f"hf:{teacher_dir}", num_classes=400, in_channels=1, image_size=16)
    assert isinstance(a, CausalLM)
    ids = torch.randint(2, 400, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la, lb = a.eval()(ids), b.eval()(ids)
    assert la.shape == (32, 400)
    torch.testing.assert_close(la, lb, rtol=0, atol=0)  # the same weights read twice give the same logits


def test_layer_cut_student_starts_from_the_kept_layers(teacher_dir):
    full = create_model(f"hf:{teacher_dir}", num_classes=400, in_channels=1, image_size=16)
    cut = create_model(f"hf:{teacher_dir}", num_classes=400, in_channels=1, image_size=16, layers=[0, 2])
    assert cut.config.num_hidden_layers == 2 and cut.config.kdkit_kept_layers == [0, 2]
    fs, cs = full.hf.state_dict(), cut.hf.state_dict()
    for new, old in ((0, 0), (1, 2)):
        for k, v in cs.items():
            if k.startswith(f"transformer.h.{new}."):
                torch.testing.assert_close(v, fs[k.replace(f"h.{new}.", f"h.{old}.", 1)], rtol=0, atol=0)
    torch.testing.assert_close(cs["transformer.wte.weight"], fs["transformer.wte.weight"], rtol=0, atol=0)
    assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in full.parameters())
    # a count is spread evenly: 2 of 3 keeps the first and the last
    two = create_model(f"hf:{teacher_dir}", num_classes=400, in_channels=1, image_size=16, layers=2)
    assert two.config.kdkit_kept_layers == [0, 2]
    with pytest.raises(ConfigError, match="layers"):
        create_model(f"hf:{teacher_dir}", num_classes=400, in_channels=1, image_size=16, layers=[0, 7])


def test_smaller_config_is_random_and_refuses_pretrained(teacher_dir):
    small = create_model(f"hf:{teacher_dir}", num_classes=400, in_channels=1, image_size=16,
                         config={"n_layer": 1, "n_embd": 16, "n_head": 2})
    assert small.config.n_embd == 16
    with pytest.raises(ConfigError, match="init: random"):
        create_model(f"hf:{teacher_dir}", num_classes=400, in_channels=1, image_size=16, config={"n_embd": 16},
                     init="pretrained")


def test_padded_vocabulary_is_cut_and_smaller_refused(tok, tmp_path):
    padded = save_hf(build_gpt2("gpt2", 448, image_size=16, layers=1, width=16, heads=2), tmp_path / "pad", tok)
    m = create_model(f"hf:{padded}", num_classes=400, in_channels=1, image_size=16)
    assert m.eval()(torch.ones(1, 16, dtype=torch.long)).shape == (16, 400)
    small = save_hf(build_gpt2("gpt2", 300, image_size=16, layers=1, width=16, heads=2), tmp_path / "sm", tok)
    with pytest.raises(ConfigError, match="predicts 300 tokens but the tokenizer has 400"):
        create_model(f"hf:{small}", num_classes=400, in_channels=1, image_size=16)


def test_block_longer_than_context_is_refused(teacher_dir):
    with pytest.raises(ConfigError, match="lower data.params.block"):
        create_model(f"hf:{teacher_dir}", num_classes=400, in_channels=1, image_size=64)


def test_different_tokenizers_are_refused_in_one_line(tok, tmp_path):
    other = train_tokenizer(read_corpus("hamlet"), tmp_path / "other", 400)
    diff = vocabulary_difference(load_tokenizer(tok), load_tokenizer(str(other)))
    assert diff is not None and "same size 400" in diff
    from kdkit.lm.data import check_model_tokenizers
    from kdkit.recipe import recipe_from_dict

    save_hf(build_gpt2("gpt2", 400, image_size=16, layers=1, width=16, heads=2), tmp_path / "m", str(other))
    r = recipe_from_dict({"data": {"name": "lee_background"}, "student": {"name": f"hf:{tmp_path / 'm'}"}})
    with pytest.raises(ConfigError) as err:
        check_model_tokenizers(r, tok)
    assert "\n" not in str(err.value) and "another tokenizer" in str(err.value) and "student" in str(err.value)


def test_generation_is_seeded_and_resumes_to_the_same_text(tok, teacher_dir, tmp_path):
    from kdkit.lm.generate import generate_corpus, sample

    model = create_model(f"hf:{teacher_dir}", num_classes=400, in_channels=1, image_size=16)
    t = load_tokenizer(tok)
    a = sample(model, t, 3, 8, temperature=0.8, top_p=0.9, seed=5)
    assert a == sample(model, t, 3, 8, temperature=0.8, top_p=0.9, seed=5) and len(a) == 3
    assert a != sample(model, t, 3, 8, temperature=0.8, top_p=0.9, seed=6)
    whole = generate_corpus(model, t, tmp_path / "a.txt", samples=5, length=8, seed=1, chunk=2).read_text()
    partial = tmp_path / "b.txt"
    generate_corpus(model, t, partial, samples=3, length=8, seed=1, chunk=2)  # "interrupted" after 2 chunks
    (tmp_path / "b.txt.parts" / "1.txt").unlink()  # the last chunk was lost with the crash
    assert generate_corpus(model, t, partial, samples=5, length=8, seed=1, chunk=2).read_text() == whole
    from kdkit.lm.corpora import read_corpus

    assert len(read_corpus("textfile", str(tmp_path / "a.txt"))) >= 1  # a textfile: corpus for a student


def test_resolve_init_defaults_and_refusals():
    """The one init rule both hf: builders share: a shape-changing override defaults to a random start and refuses a
    pretrained one; a shape-free override (dropout) keeps the checkpoint; the overrides come back as a copy."""
    free = {"dropout"}
    cfg = {"dropout": 0.2}
    overrides, init = resolve_init("hf:x", cfg, None, free)
    assert (overrides, init) == ({"dropout": 0.2}, "pretrained") and overrides is not cfg
    assert resolve_init("hf:x", {"n_layer": 2}, None, free) == ({"n_layer": 2}, "random")
    assert resolve_init("hf:x", None, "random", free) == ({}, "random")
    with pytest.raises(ConfigError, match=r"model 'hf:x': config overrides \['n_layer'\] change weight shapes"):
        resolve_init("hf:x", {"n_layer": 2}, "pretrained", free)
    with pytest.raises(ConfigError, match="init must be 'pretrained' or 'random', got 'warm'"):
        resolve_init("hf:x", None, "warm", free)
