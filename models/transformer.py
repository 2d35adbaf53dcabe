"""BERT's encoder, numerically identical to transformers' ``BertModel`` (post-LN), built for scale.

- Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` with a boolean key
  mask, so flash / memory-efficient kernels serve it on accelerators.
- The fusable operations (bias + GELU, residual + LayerNorm) are called through a kernel set
  (``models.kernels``), the plain PyTorch ``reference`` until ``use_kernels`` swaps in another
  (``triton``): a run-time choice, not part of the config, since every set computes the same maths.
- Every weight is initialised inside the constructor of the module that owns it (BERT's scheme:
  normal(0, initializer_range) weights, zero biases, unit LayerNorms). Nothing initialises weights
  after construction, so ``deepspeed.zero.Init`` (which partitions each module's parameters as soon
  as its ``__init__`` returns) partitions initialised weights, and building under
  ``with torch.device("meta"):`` allocates nothing.
- Each layer can be recomputed in the backward pass (activation checkpointing), switched by
  ``VideoBertConfig.gradient_checkpointing``.
- Padding costs nothing outside attention: the encoder gathers the real tokens of a padded batch
  once (``TokenLayout``) and runs every projection, feed-forward, LayerNorm and dropout on them
  alone, (N, H) with N = real tokens. Attention on the CPU scatters them back into the (B, T)
  layout with a key mask; on CUDA it runs unpadded too, on variable-length sequences
  (``models.attention``), unless ``Encoder.attention`` says ``padded``. VideoBERT batches mix short
  text-only and long joint sequences, so most padded positions would otherwise be computed for
  nothing. Outputs at real positions are unchanged; padded positions of the encoder's output are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from videobert.models.attention import varlen_attention
from videobert.models.config import VideoBertConfig
from videobert.models.kernels import KernelOps, get_ops

ATTENTION_MODES = ("auto", "padded", "varlen")
"""How attention sees a padded batch: ``varlen`` on unpadded sequences, ``padded`` in (B, T) with a
key mask, ``auto`` = varlen on CUDA, padded elsewhere (the CPU's variable-length path is slow)."""


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


@dataclass(frozen=True)
class TokenLayout:
    """Where the real tokens of a padded (B, T) batch are, to move between (B, T, ...) and (N, ...)."""

    batch: int
    length: int
    index: torch.Tensor | None
    """(N,) flat positions of the real tokens; None when nothing is padded (N = B x T)."""
    key_mask: torch.Tensor | None
    """(B, 1, 1, T) boolean key mask for attention; None when nothing is padded."""
    offsets: torch.Tensor | None = None
    """(B + 1,) where each example starts among the N real tokens, then N: set when attention runs
    on variable-length sequences (and something is padded), else None."""
    max_len: int = 0
    """The longest example, in tokens, when ``offsets`` is set."""

    @classmethod
    def of(cls, attention_mask: torch.Tensor | None, batch: int, length: int, *, varlen: bool = False) -> "TokenLayout":
        if attention_mask is None or bool(attention_mask.bool().all()):
            return cls(batch, length, None, None)
        mask = attention_mask.bool()
        index = mask.reshape(-1).nonzero().squeeze(1)
        if not varlen:
            return cls(batch, length, index, key_padding_mask(mask))
        lengths = mask.sum(1)
        offsets = F.pad(lengths.cumsum(0), (1, 0))
        return cls(batch, length, index, None, offsets, int(lengths.max()))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...)."""
        flat = x.reshape(self.batch * self.length, *x.shape[2:])
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...), zeros at padded positions."""
        if self.index is not None:
            x = x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy(0, self.index, x)
        return x.view(self.batch, self.length, *x.shape[1:])


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

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        # x: (N, H) real tokens -> (N, H)
        dropout_p = self.dropout_p if self.training else 0.0
        qkv = self.qkv(x).view(x.shape[0], 3, self.num_heads, self.head_dim)  # (N, 3, nh, hd)
        if layout.offsets is not None:
            return varlen_attention(qkv, layout.offsets, layout.max_len, dropout_p)
        b, t, h = layout.batch, layout.length, x.shape[-1]
        qkv = layout.unpack(qkv).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hd)
        context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=layout.key_mask, dropout_p=dropout_p)
        return layout.pack(context.transpose(1, 2).reshape(b, t, h))  # (B, nh, T, hd) -> (N, H)


class EncoderLayer(nn.Module):
    """One post-LN BERT layer: attention, dropout, add & norm; feed-forward, dropout, add & norm."""

    def __init__(self, config: VideoBertConfig) -> None:
        super().__init__()
        ops = get_ops("reference")  # until use_kernels swaps in another set
        std, h, eps = config.initializer_range, config.hidden_size, config.layer_norm_eps
        self.attention = SelfAttention(config)
        self.attention_out = NormalLinear(h, h, std=std)
        self.attention_norm = ResidualLayerNorm(h, eps=eps, ops=ops)
        self.ffn_in = BiasGeluLinear(h, config.intermediate_size, std=std, ops=ops)
        self.ffn_out = NormalLinear(config.intermediate_size, h, std=std)
        self.ffn_norm = ResidualLayerNorm(h, eps=eps, ops=ops)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        # x: (N, H) real tokens -> (N, H)
        attended = self.dropout(self.attention_out(self.attention(x, layout)))
        x = self.attention_norm(attended, x)
        inner = self.ffn_in(x)  # (N, intermediate)
        return self.ffn_norm(self.dropout(self.ffn_out(inner)), x)


class Encoder(nn.Module):
    """The stack of layers, each optionally recomputed in the backward pass."""

    def __init__(self, config: VideoBertConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = config.gradient_checkpointing
        self.attention = "auto"
        """One of ``ATTENTION_MODES``: how attention sees padded batches (a run-time choice)."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, H) embeddings and the (B, T) mask of real tokens -> (B, T, H), zeros at padding."""
        varlen = self.attention == "varlen" or (self.attention == "auto" and hidden.is_cuda)
        layout = TokenLayout.of(attention_mask, hidden.shape[0], hidden.shape[1], varlen=varlen)
        x = layout.pack(hidden)  # (N, H)
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
                x = checkpoint(layer, x, layout, use_reentrant=False, early_stop=False)
            else:
                x = layer(x, layout)
        return layout.unpack(x)


def use_kernels(module: nn.Module, ops: KernelOps) -> None:
    """Point every layer of ``module`` that calls fusable operations at the kernel set ``ops``."""
    for sub in module.modules():
        if isinstance(getattr(sub, "ops", None), KernelOps):
            sub.ops = ops
