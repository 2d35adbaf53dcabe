"""BERT's encoder, numerically identical to transformers' ``BertModel`` (post-LN), built for scale.

- Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` with a boolean key
  mask, so flash / memory-efficient kernels serve it on accelerators.
- The fusable operations (bias + GELU, residual + LayerNorm) are called through the kernel set the
  config names (``models.kernels``), so a fused implementation can be swapped in without edits here.
- Every weight is initialised inside the constructor of the module that owns it (BERT's scheme:
  normal(0, initializer_range) weights, zero biases, unit LayerNorms). Nothing initialises weights
  after construction, so ``deepspeed.zero.Init`` (which partitions each module's parameters as soon
  as its ``__init__`` returns) partitions initialised weights, and building under
  ``with torch.device("meta"):`` allocates nothing.
- Each layer can be recomputed in the backward pass (activation checkpointing), switched by
  ``VideoBertConfig.gradient_checkpointing``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.config import VideoBertConfig
from models.kernels import KernelOps, get_ops


class NormalLinear(nn.Linear):
    """``nn.Linear`` initialised as BERT's: weight ~ normal(0, std), bias zero."""

    def __init__(self, in_features: int, out_features: int, *, std: float, bias: bool = True) -> None:
        self.std = std  # read by reset_parameters, which nn.Linear's constructor calls
        super().__init__(in_features, out_features, bias=bias)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class NormalEmbedding(nn.Embedding):
    """``nn.Embedding`` initialised as BERT's: normal(0, std), the padding row (if any) zero."""

    def __init__(self, num_embeddings: int, dim: int, *, std: float, padding_idx: int | None = None) -> None:
        self.std = std
        super().__init__(num_embeddings, dim, padding_idx=padding_idx)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.std)
        self._fill_padding_idx_with_zero()


class BiasGeluLinear(NormalLinear):
    """A linear layer followed by GELU, its bias added inside the fused ``bias_gelu`` op."""

    def __init__(self, in_features: int, out_features: int, *, std: float, ops: KernelOps) -> None:
        super().__init__(in_features, out_features, std=std)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.bias_gelu(F.linear(x, self.weight), self.bias)


class ResidualLayerNorm(nn.LayerNorm):
    """Post-LN sub-layer output: ``layer_norm(x + residual)`` through the fused op."""

    def __init__(self, hidden_size: int, *, eps: float, ops: KernelOps) -> None:
        super().__init__(hidden_size, eps=eps)
        self.ops = ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.ops.residual_layer_norm(x, residual, self.weight, self.bias, self.eps)


def key_padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) with 1/True at real tokens -> boolean (B, 1, 1, T) that SDPA broadcasts over heads and queries."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


class Embeddings(nn.Module):
    """Word + token-type + position embeddings, then LayerNorm and dropout (BERT's order of sums)."""

    def __init__(self, config: VideoBertConfig) -> None:
        super().__init__()
        std, h = config.initializer_range, config.hidden_size
        self.word = NormalEmbedding(config.vocab.size_padded, h, std=std, padding_idx=config.vocab.pad_id)
        self.position = NormalEmbedding(config.max_position_embeddings, h, std=std)
        self.token_type = NormalEmbedding(config.type_vocab_size, h, std=std)
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.token_type(token_type_ids)  # (B, T, H)
        x = x + self.position(positions)
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (rows: query, key, value)."""

    def __init__(self, config: VideoBertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_probs_dropout_prob
        self.qkv = NormalLinear(config.hidden_size, 3 * config.hidden_size, std=config.initializer_range)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, h = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hd)
        context = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], attn_mask=key_mask, dropout_p=self.dropout_p if self.training else 0.0
        )  # (B, nh, T, hd)
        return context.transpose(1, 2).reshape(b, t, h)


class EncoderLayer(nn.Module):
    """One post-LN BERT layer: attention, dropout, add & norm; feed-forward, dropout, add & norm."""

    def __init__(self, config: VideoBertConfig) -> None:
        super().__init__()
        ops = get_ops(config.kernels)
        std, h, eps = config.initializer_range, config.hidden_size, config.layer_norm_eps
        self.attention = SelfAttention(config)
        self.attention_out = NormalLinear(h, h, std=std)
        self.attention_norm = ResidualLayerNorm(h, eps=eps, ops=ops)
        self.ffn_in = BiasGeluLinear(h, config.intermediate_size, std=std, ops=ops)
        self.ffn_out = NormalLinear(config.intermediate_size, h, std=std)
        self.ffn_norm = ResidualLayerNorm(h, eps=eps, ops=ops)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.dropout(self.attention_out(self.attention(x, key_mask)))
        x = self.attention_norm(attended, x)
        inner = self.ffn_in(x)  # (B, T, intermediate)
        return self.ffn_norm(self.dropout(self.ffn_out(inner)), x)


class Encoder(nn.Module):
    """The stack of layers, each optionally recomputed in the backward pass."""

    def __init__(self, config: VideoBertConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = config.gradient_checkpointing

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                # Non-reentrant checkpointing: the recomputation calls every submodule again, so
                # ZeRO-3's pre-forward hooks fire again and re-gather the partitioned weights;
                # trainable parameters are saved detached, so ZeRO-3 freeing their storage after
                # the forward does not trip the recomputation's shape check; and unlike the
                # reentrant variant it needs no input that requires grad and works with
                # torch.autograd.grad. early_stop=False runs each recomputation to the end, so
                # every module's post-forward hook fires after its pre-forward hook (ZeRO-3 keeps
                # a stack of the modules in forward that an interrupted recomputation would leave
                # unbalanced). The default preserve_rng_state replays the dropout masks.
                x = checkpoint(layer, x, key_mask, use_reentrant=False, early_stop=False)
            else:
                x = layer(x, key_mask)
        return x
