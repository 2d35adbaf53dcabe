"""Variable-length (unpadded) self-attention over the real tokens of a batch.

The encoder keeps a batch as (N, ...) real tokens (``transformer.TokenLayout``). Attention is the
one place that needs to know which tokens share an example. The padded path (in
``transformer.SelfAttention``) scatters the tokens back into (B, T) and masks the padded keys:
it works everywhere, is the CPU path and what this module is tested against, but spends FLOPs
and memory on the padding of short examples. ``varlen_attention`` instead runs on the (N, ...)
tokens with the example boundaries as cumulative offsets, never forming (B, T), through the
fastest exact kernel the installed packages offer, in this order (``varlen_backend``):

  1. ``flash_attn.flash_attn_varlen_qkvpacked_func`` (the flash-attn package; fp16/bf16 on CUDA);
  2. ``torch.nn.attention.varlen.varlen_attn`` (PyTorch's own flash varlen kernel, in recent
     versions; fp16/bf16 on CUDA; it has no dropout, so only without attention dropout);
  3. ``scaled_dot_product_attention`` over nested jagged tensors (PyTorch >= 2.5: flash or
     memory-efficient kernels on CUDA, dropout included; a slow but exact math path on the CPU).

Both paths compute softmax(q k^T / sqrt(d)) v over the keys of each token's own example, so
outputs and gradients agree to rounding (without dropout: the paths draw their masks differently).
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
import torch.nn.functional as F

VARLEN_BACKENDS = ("flash_attn", "torch_varlen", "nested_sdpa")
"""Variable-length implementations, fastest first."""


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def varlen_backend(qkv: torch.Tensor, dropout_p: float) -> str:
    """The fastest variable-length implementation that serves these inputs (see module doc)."""
    flash_dtype = qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16)
    if flash_dtype and _has_module("flash_attn"):
        return "flash_attn"
    if flash_dtype and dropout_p == 0.0 and _has_module("torch.nn.attention.varlen"):
        return "torch_varlen"
    return "nested_sdpa"


def varlen_attention(
    qkv: torch.Tensor, offsets: torch.Tensor, max_len: int, dropout_p: float, backend: str | None = None
) -> torch.Tensor:
    """(N, 3, heads, head_dim) -> (N, heads * head_dim), each token attending to its own example.

    ``offsets`` (B + 1,): where each example's tokens start in the N rows, then N; ``max_len``: the
    longest example. ``backend`` forces one of ``VARLEN_BACKENDS`` (tests); None picks the fastest.
    """
    n, _, heads, head_dim = qkv.shape
    backend = backend or varlen_backend(qkv, dropout_p)
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_qkvpacked_func

        context = flash_attn_varlen_qkvpacked_func(qkv.contiguous(), offsets.int(), max_len, dropout_p)
    elif backend == "torch_varlen":
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = qkv.unbind(1)
        cu = offsets.int()
        context = varlen_attn(q, k, v, cu, cu, max_len, max_len)
    elif backend == "nested_sdpa":
        context = _nested_sdpa(qkv, offsets, max_len, dropout_p)
    else:
        raise ValueError(f"unknown varlen backend {backend!r}; choose one of {VARLEN_BACKENDS}")
    return context.reshape(n, heads * head_dim)


def _nested_sdpa(qkv: torch.Tensor, offsets: torch.Tensor, max_len: int, dropout_p: float) -> torch.Tensor:
    """SDPA over nested jagged tensors: (N, 3, heads, d) -> (N, heads, d)."""
    offsets = offsets.long()
    with warnings.catch_warnings():
        # The CPU's math path builds a strided nested tensor internally and warns that its API is a
        # prototype: an implementation detail of PyTorch, not something a caller can act on.
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype")
        # Nested SDPA wants each of q, k, v contiguous (N, heads, d) before the head transpose.
        q, k, v = (torch.nested.nested_tensor_from_jagged(t.contiguous(), offsets, max_seqlen=max_len).transpose(1, 2)
                   for t in qkv.unbind(1))  # each (B, heads, j, d)
        context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return context.transpose(1, 2).values()  # (N, heads, d)
