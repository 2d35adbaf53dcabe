"""The model's config as the trainer resolves it: each field has one owner, problems name the run key."""

from __future__ import annotations

import pytest
import torch

from videobert.models.videobert import VideoBertForPreTraining
from videobert.models.vocab import JointVocab
from videobert.trainer import build
from videobert.trainer.config import ConfigError, load_config

DATA = ["data.train=shards/train", "data.codebook=codebook.safetensors", "data.text_model=minilm"]
PAPER_VOCAB = JointVocab(text_vocab_size=30522, num_visual_tokens=20736, cls_id=101, sep_id=102, mask_id=103,
                         pad_id=0, unk_id=100)


def _resolve(*overrides: str):
    return build.build_model_config(load_config(None, [*DATA, *overrides]), PAPER_VOCAB)


def test_billion_scale_presets_keep_their_checkpointing():
    config = _resolve("model.init=", "model.preset=1.3b")
    assert config.gradient_checkpointing is True
    assert (config.hidden_size, config.num_hidden_layers) == (2048, 24)
    with torch.device("meta"):  # the real shape, without its 5 GB of weights
        model = VideoBertForPreTraining(config)
    assert model.encoder.gradient_checkpointing
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(1.32e9, rel=0.01)


def test_what_the_user_sets_wins_and_what_they_leave_comes_from_the_preset():
    assert _resolve("model.init=", "model.preset=1.3b", "model.gradient_checkpointing=false").gradient_checkpointing is False
    assert _resolve("model.init=", "model.preset=base").gradient_checkpointing is False
    assert _resolve("model.init=", "model.preset=base", "model.gradient_checkpointing=true").gradient_checkpointing is True
    config = _resolve("model.init=", "model.preset=tiny", "objectives.video_mlm_weight=0.25", "model.hidden_dropout=0")
    assert (config.text_mlm_weight, config.video_mlm_weight, config.alignment_weight) == (1.0, 0.25, 1.0)
    assert config.hidden_dropout_prob == 0.0 and config.attention_probs_dropout_prob == 0.1


def test_a_pretrained_directory_gives_the_shape_and_the_run_the_rest(minilm_dir):
    config = _resolve(f"model.init={minilm_dir}", "objectives.alignment_weight=0.5")
    assert (config.hidden_size, config.num_hidden_layers, config.gradient_checkpointing) == (384, 6, False)
    assert config.alignment_weight == 0.5


@pytest.mark.parametrize("overrides, named", [
    (["objectives.text_mlm_weight=0", "objectives.video_mlm_weight=0", "objectives.alignment_weight=0"],
     "objectives.text_mlm_weight, objectives.video_mlm_weight, objectives.alignment_weight: loss weights"),
    (["model.hidden_dropout=1.5"], "model.hidden_dropout: hidden_dropout_prob must lie in [0, 1)"),
    (["data.max_seq_len=512"], "data.max_seq_len=512 exceeds the 128 positions"),
    (["model.preset=huge"], "model.preset=huge: unknown preset 'huge'"),
])
def test_model_problems_are_config_errors_naming_the_key(overrides, named):
    with pytest.raises(ConfigError) as err:
        _resolve("model.init=", "model.preset=tiny", *overrides)
    assert named in str(err.value)


def test_all_zero_loss_weights_pass_the_loader_and_fail_at_model_resolution():
    cfg = load_config(None, [*DATA, "objectives.text_mlm_weight=0", "objectives.video_mlm_weight=0",
                             "objectives.alignment_weight=0"])
    assert cfg.objectives.text_mlm_weight == 0.0  # each weight alone is valid; together they are not
    with pytest.raises(ConfigError, match="at least one positive"):
        build.build_model_config(cfg, PAPER_VOCAB)


def test_a_negative_weight_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match="objectives.video_mlm_weight=-1.0 must be >= 0"):
        load_config(None, [*DATA, "objectives.video_mlm_weight=-1"])
