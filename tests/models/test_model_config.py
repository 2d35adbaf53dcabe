"""VideoBertConfig: validation, strict JSON round trip, presets, reading a BERT config.json."""

from __future__ import annotations

import dataclasses
import json

import pytest

from videobert.models.config import PRESETS, VideoBertConfig, config_from_bert_dir, preset


def test_round_trip_through_json(small_vocab, tmp_path):
    config = preset("tiny", small_vocab, hidden_dropout_prob=0.2, video_mlm_weight=0.5, gradient_checkpointing=True)
    text = json.dumps(config.to_dict())  # JSON-safe: no dataclass or tensor left inside
    assert VideoBertConfig.from_dict(json.loads(text)) == config
    config.to_json(tmp_path / "config.json")
    assert VideoBertConfig.from_json(tmp_path / "config.json") == config


def test_kernels_are_not_config_and_old_configs_still_load(small_vocab):
    # The kernel set is a run-time choice of the model; configs saved while it was a field hold it.
    config = preset("tiny", small_vocab)
    assert "kernels" not in config.to_dict()
    assert VideoBertConfig.from_dict({**config.to_dict(), "kernels": "triton"}) == config
    with pytest.raises(TypeError):
        VideoBertConfig(vocab=small_vocab, kernels="reference")


def test_unknown_keys_are_errors(small_vocab):
    d = preset("tiny", small_vocab).to_dict()
    with pytest.raises(ValueError, match="unknown VideoBertConfig keys \\['hiden_size'\\]"):
        VideoBertConfig.from_dict({**d, "hiden_size": 64})
    with pytest.raises(ValueError, match="unknown vocab keys \\['visual_words'\\]"):
        VideoBertConfig.from_dict({**d, "vocab": {**d["vocab"], "visual_words": 3}})
    with pytest.raises(ValueError, match="needs 'vocab'"):
        VideoBertConfig.from_dict({k: v for k, v in d.items() if k != "vocab"})
    with pytest.raises(ValueError, match="unknown VideoBertConfig keys"):
        preset("tiny", small_vocab, num_layers=3)


def test_all_problems_reported_at_once_with_the_fix(small_vocab):
    with pytest.raises(ValueError) as err:
        VideoBertConfig(vocab=small_vocab, hidden_size=100, num_attention_heads=7, hidden_dropout_prob=1.0,
                        hidden_act="relu", type_vocab_size=1, alignment_weight=-1.0)
    message = str(err.value)
    for expected in ("multiple of num_attention_heads", "hidden_dropout_prob must lie in [0, 1)",
                     "set hidden_act='gelu'", "type_vocab_size must be at least 2",
                     "loss weights must be non-negative"):
        assert expected in message
    assert message.count("\n  - ") == 5


def test_types_are_checked(small_vocab):
    with pytest.raises(ValueError, match="hidden_size must be int, got '64' \\(str\\)"):
        VideoBertConfig(vocab=small_vocab, hidden_size="64")
    with pytest.raises(ValueError, match="num_hidden_layers must be int, got True"):
        VideoBertConfig(vocab=small_vocab, num_hidden_layers=True)
    with pytest.raises(ValueError, match="vocab must be JointVocab"):
        VideoBertConfig(vocab={"text_vocab_size": 3})
    assert VideoBertConfig(vocab=small_vocab, hidden_dropout_prob=0).hidden_dropout_prob == 0  # int is a float


def test_frozen_and_keyword_only(small_vocab):
    config = preset("tiny", small_vocab)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_size = 8
    with pytest.raises(TypeError):
        VideoBertConfig(small_vocab)  # positional use is refused


def test_presets_and_overrides(small_vocab):
    assert set(PRESETS) == {"tiny", "demo", "base", "large", "1.3b", "3b"}
    demo = preset("demo", small_vocab)
    shape = (demo.num_hidden_layers, demo.hidden_size, demo.num_attention_heads, demo.intermediate_size)
    assert shape == (6, 384, 12, 1536)
    assert preset("large", small_vocab, attention_probs_dropout_prob=0.0).attention_probs_dropout_prob == 0.0
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge", small_vocab)


def test_config_from_bert_dir_reads_the_packaged_bert(minilm_dir, minilm_vocab):
    config = config_from_bert_dir(minilm_dir, minilm_vocab, alignment_weight=0.5)
    hf = json.loads((minilm_dir / "config.json").read_text())
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "layer_norm_eps", "hidden_dropout_prob"):
        assert getattr(config, name) == hf[name]
    assert config.alignment_weight == 0.5 and config.vocab == minilm_vocab


def test_config_from_bert_dir_refuses_what_it_cannot_use(minilm_dir, small_vocab, tmp_path):
    with pytest.raises(ValueError, match="vocab_size is 30522, but the joint vocabulary's text part has 200"):
        config_from_bert_dir(minilm_dir, small_vocab)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta", "vocab_size": 200}))
    with pytest.raises(ValueError, match="only BERT checkpoints"):
        config_from_bert_dir(tmp_path, small_vocab)
    with pytest.raises(FileNotFoundError, match="Hugging Face BERT directory"):
        config_from_bert_dir(tmp_path / "missing", small_vocab)
