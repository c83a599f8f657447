"""hf: and textnn: text models on the real MiniLM-L6 checkpoint: padding, attention taps, layer cuts, configs,
checkpoints, and the teacher feature cache."""

from __future__ import annotations

import pytest
import torch

from kdkit.errors import CheckpointError, ConfigError
from kdkit.models import count_params, create_model, save_weights
from kdkit.taps import FeatureTap
from kdkit.text.models import load_tokenizer, pick_layers, resolve_hf_path


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return create_model("hf:minilm", num_classes=2, image_size=32).eval()


@pytest.fixture(scope="module")
def ids():
    tok = load_tokenizer("hf:minilm")
    enc = tok(["a gripping, beautifully shot film.", "dull.", "not bad at all, but too long"], padding=True,
              return_tensors="pt")
    return enc["input_ids"]


def test_minilm_is_the_packaged_22_7m_model(minilm):
    assert (resolve_hf_path("hf:minilm") / "model.safetensors").is_file()
    assert count_params(minilm) == 22_713_986  # 22,713,216 encoder + 384·2 + 2 head
    lay = minilm.text_layout()
    assert lay.hidden == [f"hf.bert.encoder.layer.{i}" for i in range(6)] == minilm.kd_stages
    assert lay.embedding == "hf.bert.embeddings" and lay.hidden_size == 384 and lay.num_heads == 12
    assert lay.pad_token_id == 0


def test_padding_does_not_change_the_logits(minilm, ids):
    with torch.no_grad():
        batch = minilm(ids)
        for i in range(ids.shape[0]):
            n = int((ids[i] != 0).sum())
            alone = minilm(ids[i : i + 1, :n])
            assert torch.allclose(batch[i], alone[0], atol=1e-5)


def test_attention_taps_equal_transformers_own_attentions(minilm, ids):
    lay = minilm.text_layout()
    with torch.no_grad(), FeatureTap(minilm, lay.attention_probs + lay.attention_scores) as tap:
        minilm(ids)
        feats = tap.pop()
        # Reference: transformers' eager path with output_attentions (eval mode: no dropout on probabilities).
        minilm.hf.config._attn_implementation = "eager"
        try:
            ref = minilm.hf(input_ids=ids, attention_mask=(ids != 0).long(), output_attentions=True).attentions
        finally:
            minilm.hf.config._attn_implementation = "kdkit_eager"
    mask = torch.where(ids != 0, 0.0, float("-inf"))[:, None, None, :]
    for i in range(6):
        assert torch.allclose(feats[f"attention_probs.{i}"], ref[i], atol=1e-6)
        assert torch.allclose(torch.softmax(feats[f"attention_scores.{i}"] + mask, -1), ref[i], atol=1e-6)
    # Without a tap nothing is captured (no memory held between forwards).
    assert not any(m._forward_hooks for m in minilm.attention_probs)


def test_layer_cut_copies_the_chosen_teacher_layers(minilm):
    cut = create_model("hf:minilm", num_classes=2, layers=[1, 4])
    assert cut.config.num_hidden_layers == 2 and len(cut.kd_stages) == 2
    for new, old in ((0, 1), (1, 4)):
        a = cut.hf.bert.encoder.layer[new].output.dense.weight
        b = minilm.hf.bert.encoder.layer[old].output.dense.weight
        assert torch.equal(a, b)
    assert torch.equal(cut.hf.bert.embeddings.word_embeddings.weight, minilm.hf.bert.embeddings.word_embeddings.weight)
    assert pick_layers(2, 6, "x") == [0, 5] and pick_layers(3, 6, "x") == [0, 2, 5] and pick_layers(1, 6, "x") == [5]
    with pytest.raises(ConfigError, match="indices in 0..5"):
        create_model("hf:minilm", num_classes=2, layers=[0, 6])


def test_smaller_config_is_random_and_validated(ids):
    cfg = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    small = create_model("hf:minilm", num_classes=3, config=cfg)
    lay = small.text_layout()
    assert lay.hidden_size == 64 and lay.num_heads == 4 and len(lay.hidden) == 2
    assert small(ids).shape == (3, 3)
    with pytest.raises(ConfigError, match="init: random"):
        create_model("hf:minilm", num_classes=2, config=cfg, init="pretrained")
    with pytest.raises(ConfigError, match="not a multiple"):
        create_model("hf:minilm", num_classes=2, config={"hidden_size": 65})
    with pytest.raises(ConfigError, match="no field"):
        create_model("hf:minilm", num_classes=2, config={"hiden_size": 64})
    # Dropout overrides keep the pretrained weights.
    drop = create_model("hf:minilm", num_classes=2, layers=1, config={"hidden_dropout_prob": 0.2})
    assert drop.config.hidden_dropout_prob == 0.2


def test_errors_are_one_line_and_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="never downloads"):
        create_model(f"hf:{tmp_path}/nothing", num_classes=2)
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        create_model("hf:minilm", num_classes=2, image_size=1024)
    with pytest.raises(ConfigError, match="no parameter 'hidden'"):
        create_model("hf:minilm", num_classes=2, hidden=3)
    with pytest.raises(ConfigError, match="never downloads"):
        create_model("hf:minilm", num_classes=2, pretrained=True)


def test_checkpoint_round_trip(tmp_path, ids):
    cut = create_model("hf:minilm", num_classes=2, layers=2).eval()
    torch.nn.init.normal_(cut.hf.classifier.weight)
    save_weights(cut, tmp_path / "cut.safetensors")
    again = create_model("hf:minilm", num_classes=2, layers=2, checkpoint=tmp_path / "cut.safetensors").eval()
    with torch.no_grad():
        assert torch.equal(cut(ids), again(ids))
    with pytest.raises(CheckpointError):
        create_model("hf:minilm", num_classes=2, layers=3, checkpoint=tmp_path / "cut.safetensors")


@pytest.mark.parametrize("kind", ["bilstm", "cnn"])
def test_textnn_ignores_padding(kind, ids):
    torch.manual_seed(0)
    m = create_model(f"textnn:{kind}", num_classes=2, embed_dim=16, hidden=8, num_layers=2).eval()
    lay = m.text_layout()
    assert lay.attention_scores is None and lay.hidden == ["layers.0", "layers.1"]
    with torch.no_grad():
        batch = m(ids)
        for i in range(ids.shape[0]):
            n = int((ids[i] != 0).sum())
            assert torch.allclose(batch[i], m(ids[i : i + 1, :n])[0], atol=1e-5)
    with pytest.raises(ConfigError, match="no parameter"):
        create_model(f"textnn:{kind}", num_classes=2, width=3)


def test_feature_cache_serves_the_teacher_exactly(tmp_path):
    from kdkit.text.cache import build_feature_cache
    from kdkit.text.data import TextBatchLoader, load_text

    data = load_text("rotten_tomatoes", tokenizer="hf:minilm", max_length=20, cache_dir=str(tmp_path)).subset(
        torch.arange(24))
    teacher = create_model("hf:minilm", num_classes=2, layers=2).eval()
    lay = teacher.text_layout()
    paths = [lay.embedding, lay.hidden[1], lay.attention_scores[1]]
    build_feature_cache(teacher, data, paths, tmp_path / "c.safetensors", batch_size=10)
    cached = create_model("hf:minilm", num_classes=2, layers=2, feature_cache=str(tmp_path / "c.safetensors")).eval()
    cached.load_state_dict(teacher.state_dict())
    loader = TextBatchLoader(data, None, 8, shuffle=True, seed=3)
    with torch.no_grad(), FeatureTap(cached, paths) as tc, FeatureTap(teacher, paths) as tt:
        for batch in loader:
            x = batch["input"]
            mask = x != 0
            assert torch.allclose(cached(x), teacher(x), atol=1e-5)
            got, ref = tc.pop(), tt.pop()
            for p in paths[:2]:
                assert torch.allclose(got[p][mask], ref[p][mask], atol=1e-2, rtol=1e-2)  # float16 storage
                assert got[p][~mask].abs().sum() == 0
            pm = mask[:, None, :, None] & mask[:, None, None, :]
            assert torch.allclose(got[paths[2]] * pm, ref[paths[2]] * pm, atol=5e-2, rtol=1e-2)
    assert cached.feature_cache.hits == len(loader) and cached.feature_cache.misses == 0
    # Unknown sentences and untracked paths fall back to the real network.
    with torch.no_grad(), FeatureTap(cached, [lay.hidden[0]]) as tap:
        cached(x)
        assert tap.pop()[lay.hidden[0]].shape[-1] == 384
    # A cache from other weights is refused on first use.
    other = create_model("hf:minilm", num_classes=2, layers=2, feature_cache=str(tmp_path / "c.safetensors")).eval()
    with torch.no_grad(), pytest.raises(CheckpointError, match="does not match"):
        other(x)
