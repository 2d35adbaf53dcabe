"""How big the joint transformer is and how much work one training token costs.

``count_parameters`` counts a built model (shared weights once; meta tensors and partitioned
parameters included) or computes the same number from a config without building anything.
``flops_per_token`` is the model-FLOPs estimate the trainer's MFU divides by the hardware peak.
"""

from __future__ import annotations

from torch import nn

from videobert.models.config import VideoBertConfig


def count_parameters(model_or_config: nn.Module | VideoBertConfig) -> int:
    """Parameters of a model (each shared tensor once) or of the model a config describes."""
    if isinstance(model_or_config, VideoBertConfig):
        return _config_parameters(model_or_config)
    # A parameter partitioned across ranks (ZeRO stage 3) keeps its full size in ``ds_numel``.
    return sum(int(getattr(p, "ds_numel", p.numel())) for p in model_or_config.parameters())


def _layer_parameters(cfg: VideoBertConfig) -> int:
    h, i = cfg.hidden_size, cfg.intermediate_size
    attention = 3 * h * h + 3 * h + h * h + h  # fused q/k/v and the output projection
    feed_forward = h * i + i + i * h + h
    return attention + feed_forward + 2 * (2 * h)  # two LayerNorms


def _mlm_head_parameters(cfg: VideoBertConfig) -> int:
    """Transform (dense + LayerNorm) and the decoder's bias; its weight is the word table."""
    h = cfg.hidden_size
    return h * h + h + 2 * h + cfg.vocab.size_padded


def _config_parameters(cfg: VideoBertConfig) -> int:
    h = cfg.hidden_size
    rows = cfg.vocab.size_padded + cfg.max_position_embeddings + cfg.type_vocab_size
    embeddings = rows * h + 2 * h
    alignment = h * h + h + 2 * h + 2  # pooler dense, then the 2-way classifier
    return embeddings + cfg.num_hidden_layers * _layer_parameters(cfg) + _mlm_head_parameters(cfg) + alignment


def flops_per_token(config: VideoBertConfig, seq_len: int, masked_fraction: float) -> float:
    """Model FLOPs of one training step (forward + backward) per input token.

    The nanoGPT / llm-foundry estimate, ``6 N + 12 L H T``, with each part counted where it runs:

    - ``6 * N_layers``: every token passes through every encoder layer (2 FLOPs per weight per
      token forward, 4 backward); embedding lookups cost no multiply-adds and are not counted.
    - ``12 * L * H * seq_len``: attention scores and the weighted sum of values (4 H T forward
      per token and layer, twice that backward).
    - ``6 * N_mlm * masked_fraction``: the MLM head (transform and the tied vocabulary projection)
      runs only at masked positions.
    - ``6 * N_alignment / seq_len``: the pooler and alignment classifier run once per sequence.

    Recomputation under activation checkpointing is not counted (that would be hardware FLOPs).
    """
    if seq_len < 1 or not 0.0 <= masked_fraction <= 1.0:
        raise ValueError(f"need seq_len >= 1 and masked_fraction in [0, 1], got {seq_len}, {masked_fraction}")
    h = config.hidden_size
    encoder = config.num_hidden_layers * _layer_parameters(config)
    attention = 12 * config.num_hidden_layers * h * seq_len
    mlm = _mlm_head_parameters(config) + config.vocab.size_padded * h
    alignment = h * h + h + 2 * h + 2
    return 6.0 * encoder + attention + 6.0 * mlm * masked_fraction + 6.0 * alignment / seq_len


def step_flops(config: VideoBertConfig, attention_mask, mlm_labels) -> float:
    """Model FLOPs of one training step on a (B, T) batch: each row at its own length, so padding
    counts for nothing whether or not the attention kernel skips it."""
    lengths = [int(t) for t in attention_mask.sum(1).tolist()]
    masked = float((mlm_labels >= 0).sum()) / max(sum(lengths), 1)
    return sum(t * flops_per_token(config, t, masked) for t in lengths if t > 0)
