"""The fusable operations of the joint transformer in plain PyTorch: the maths a fused kernel must match.

Each function is the exact computation BERT performs at that point (fp32 on CPU matches
transformers' ``BertForPreTraining`` to rounding), written as one function so that a fused kernel
can replace it whole:

- ``bias_gelu``: the feed-forward activation, ``gelu(x + bias)`` (the bias of the preceding linear
  layer is added here so that a kernel reads ``x`` once).
- ``residual_layer_norm``: BERT's post-LN sub-layer output, ``layer_norm(x + residual)``.
- ``linear_cross_entropy``: the masked-token loss straight from hidden states, ``cross_entropy(hidden
  @ weight.T + bias, labels)``; a fused kernel never holds the (N, vocab) logits. It can also count
  the rows whose arg-max is the label, which such a kernel gets for free from the running row maximum
  it keeps for the log-sum-exp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from videobert.models.kernels import KernelOps
from videobert.models.vocab import IGNORE_INDEX


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x + bias)`` with the exact GELU, ``0.5 * y * (1 + erf(y / sqrt(2)))`` (BERT's "gelu")."""
    return F.gelu(x + bias)


def residual_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """``layer_norm(x + residual)`` over the last dimension, with an affine ``weight`` and ``bias``."""
    return F.layer_norm(x + residual, (x.shape[-1],), weight, bias, eps)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    return_correct: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of the logits ``hidden @ weight.T + bias`` over labels that are not ignored.

    hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) with ``IGNORE_INDEX`` for rows that
    carry no loss. The loss is accumulated in fp32. With no target at all the loss is 0 and still
    depends on every input (with zero gradient), so the parameters take part in the graph either way.

    With ``return_correct`` it also returns how many non-ignored rows have their label as arg-max
    (a 0-dim int64 tensor).
    """
    logits = F.linear(hidden, weight, bias).float()  # (N, V)
    valid = labels != IGNORE_INDEX
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    loss = total / valid.sum().clamp(min=1)
    if not return_correct:
        return loss
    with torch.no_grad():
        correct = ((logits.argmax(dim=-1) == labels) & valid).sum()
    return loss, correct


OPS = KernelOps(
    name="reference",
    bias_gelu=bias_gelu,
    residual_layer_norm=residual_layer_norm,
    linear_cross_entropy=linear_cross_entropy,
)
