"""Fused linear + cross-entropy over a large vocabulary that never holds the (N, V) logits (twin:
``reference.linear_cross_entropy``).

The maths, for row n with logits ``z = hidden[n] @ weight.T + bias`` and label ``t``::

    lse[n]  = log sum_j exp(z_j)                       (online over vocabulary chunks, fp32)
    loss    = sum over labelled rows of (lse[n] - z_t) / (number of labelled rows, at least 1)
    correct = labelled rows whose arg-max (lowest index on ties) is t
    backward, with  G[n, j] = (softmax(z)_j - [j == t]) * grad_loss / count  (0 on ignored rows):
    grad_hidden = G @ weight,   grad_weight = G.T @ hidden,   grad_bias = sum over rows of G

How: the vocabulary is cut into chunks of ``chunk`` rows. Forward, each chunk's logits (N, chunk)
come from one matmul (cuBLAS: a hand-written GEMM would not beat it) and a Triton kernel folds them
into per-row running statistics (maximum and its index, sum of exponentials, the label's logit):
an online log-sum-exp. Backward recomputes each chunk's logits, a second kernel turns them into G
in place, and two matmuls add that chunk's share to grad_hidden (fp32 accumulator) and write its
rows of grad_weight. Peak extra memory is one (N, chunk) block instead of the reference's several
(N, V) fp32 tensors; the price is one more matmul (the recomputation).

Sharded training (ZeRO-3) must hand in the gathered weight: the op is called inside the forward of
the module that owns the tied word table, where DeepSpeed has gathered it; a partitioned parameter
reaches it as an empty tensor, which is refused with that explanation rather than read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from videobert.models.kernels.triton_support import check_runnable, tl, triton
from videobert.models.vocab import IGNORE_INDEX

CHUNK_ELEMENTS = 1 << 26
"""Logits held at once (rows x vocabulary chunk): 128 MB in bf16, a fraction of one (N, V) block."""
_MIN_CHUNK = 256
_BLOCK_ROWS = 4
_BLOCK_VOCAB = 1024
"""A (4, 1024) tile: each row reads 1024 contiguous logits, enough rows per program to amortise."""

if triton is not None:
    _IGNORE = tl.constexpr(IGNORE_INDEX)

    @triton.jit
    def _fold_chunk(
        z_ptr, labels_ptr, max_ptr, sum_ptr, target_ptr, argmax_ptr, n_rows, width, offset,
        BLOCK_ROWS: tl.constexpr, BLOCK_VOCAB: tl.constexpr,
    ):
        """Fold logits ``z`` (N, width) of vocabulary ids [offset, offset + width) into the running
        per-row statistics."""
        rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < n_rows
        running_max = tl.load(max_ptr + rows, mask=row_ok, other=0.0)
        running_sum = tl.load(sum_ptr + rows, mask=row_ok, other=0.0)
        target = tl.load(target_ptr + rows, mask=row_ok, other=0.0)
        best = tl.load(argmax_ptr + rows, mask=row_ok, other=0)
        local_label = tl.load(labels_ptr + rows, mask=row_ok, other=_IGNORE) - offset
        for c0 in range(0, width, BLOCK_VOCAB):
            cols = c0 + tl.arange(0, BLOCK_VOCAB)
            ok = row_ok[:, None] & (cols < width)[None, :]
            z = tl.load(z_ptr + rows.to(tl.int64)[:, None] * width + cols[None, :], mask=ok, other=float("-inf"))
            z = tl.where(row_ok[:, None], z.to(tl.float32), 0.0)  # rows past the end: finite filler
            block_max = tl.max(z, axis=1)
            block_arg = tl.argmax(z, axis=1, tie_break_left=True) + c0 + offset
            best = tl.where(block_max > running_max, block_arg.to(tl.int64), best)  # strict: earlier ids win ties
            new_max = tl.maximum(running_max, block_max)
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
            running_max = new_max
            hit = ok & (cols[None, :] == local_label[:, None])  # a column past the chunk is no hit
            target += tl.sum(tl.where(hit, z, 0.0), axis=1)
        tl.store(max_ptr + rows, running_max, mask=row_ok)
        tl.store(sum_ptr + rows, running_sum, mask=row_ok)
        tl.store(target_ptr + rows, target, mask=row_ok)
        tl.store(argmax_ptr + rows, best, mask=row_ok)

    @triton.jit
    def _logits_to_grad(
        z_ptr, labels_ptr, lse_ptr, scale_ptr, n_rows, width, offset,
        BLOCK_ROWS: tl.constexpr, BLOCK_VOCAB: tl.constexpr,
    ):
        """Overwrite logits ``z`` (N, width) of ids [offset, offset + width) with
        (softmax - one_hot(label)) * scale, zero on ignored rows."""
        rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < n_rows
        label = tl.load(labels_ptr + rows, mask=row_ok, other=_IGNORE)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        scale = tl.where(label != _IGNORE, tl.load(scale_ptr), 0.0)
        local_label = label - offset
        for c0 in range(0, width, BLOCK_VOCAB):
            cols = c0 + tl.arange(0, BLOCK_VOCAB)
            ok = row_ok[:, None] & (cols < width)[None, :]
            offsets = rows.to(tl.int64)[:, None] * width + cols[None, :]
            z = tl.load(z_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            g = tl.exp(z - lse[:, None]) - tl.where(cols[None, :] == local_label[:, None], 1.0, 0.0)
            tl.store(z_ptr + offsets, (g * scale[:, None]).to(z_ptr.dtype.element_ty), mask=ok)


def vocab_chunk(n_rows: int, vocab: int) -> int:
    """Vocabulary rows per chunk: as many as keep one (N, chunk) block within ``CHUNK_ELEMENTS``,
    a multiple of 256 (at least 256), never more than the vocabulary."""
    rows = max(n_rows, 1)
    return min(vocab, max(_MIN_CHUNK, CHUNK_ELEMENTS // rows // _MIN_CHUNK * _MIN_CHUNK))


def _chunk_logits(hidden, weight, bias, lo: int, hi: int) -> torch.Tensor:
    return F.linear(hidden, weight[lo:hi], None if bias is None else bias[lo:hi]).contiguous()


def _forward_stats(hidden, weight, bias, labels, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lse (N,) fp32, label logit (N,) fp32, arg-max id (N,) int64), one vocabulary chunk at a time."""
    n, vocab = hidden.shape[0], weight.shape[0]
    kw = dict(dtype=torch.float32, device=hidden.device)
    running_max, running_sum = torch.full((n,), float("-inf"), **kw), torch.zeros(n, **kw)
    target, argmax = torch.zeros(n, **kw), torch.zeros(n, dtype=torch.int64, device=hidden.device)
    for lo in range(0, vocab if n else 0, chunk):
        z = _chunk_logits(hidden, weight, bias, lo, min(vocab, lo + chunk))  # (N, chunk)
        _fold_chunk[(triton.cdiv(n, _BLOCK_ROWS),)](
            z, labels, running_max, running_sum, target, argmax, n, z.shape[1], lo,
            BLOCK_ROWS=_BLOCK_ROWS, BLOCK_VOCAB=_BLOCK_VOCAB,
        )
    return running_max + torch.log(running_sum), target, argmax


def _backward_grads(hidden, weight, bias, labels, lse, scale, chunk: int, needs: tuple[bool, bool, bool]):
    """(grad_hidden, grad_weight, grad_bias), each None when not needed."""
    n, vocab = hidden.shape[0], weight.shape[0]
    grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if needs[0] else None
    grad_weight = torch.zeros_like(weight) if needs[1] else None
    grad_bias = torch.zeros_like(bias) if needs[2] else None
    for lo in range(0, vocab if n else 0, chunk):
        hi = min(vocab, lo + chunk)
        g = _chunk_logits(hidden, weight, bias, lo, hi)  # (N, chunk), becomes the gradient in place
        _logits_to_grad[(triton.cdiv(n, _BLOCK_ROWS),)](
            g, labels, lse, scale, n, hi - lo, lo, BLOCK_ROWS=_BLOCK_ROWS, BLOCK_VOCAB=_BLOCK_VOCAB,
        )
        if grad_hidden is not None:
            grad_hidden += g @ weight[lo:hi]
        if grad_weight is not None:
            torch.mm(g.t(), hidden, out=grad_weight[lo:hi])
        if grad_bias is not None:
            grad_bias[lo:hi] = g.sum(0, dtype=torch.float32)
    if grad_hidden is not None:
        grad_hidden = grad_hidden.to(hidden.dtype)
    return grad_hidden, grad_weight, grad_bias


class LinearCrossEntropy(torch.autograd.Function):
    """Autograd wrapper: the forward keeps only the row statistics; the backward recomputes logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk: int):
        lse, target, argmax = _forward_stats(hidden, weight, bias, labels, chunk)
        valid = labels != IGNORE_INDEX
        count = valid.sum()
        loss = torch.where(valid, lse - target, 0.0).sum() / count.clamp(min=1)
        correct = (valid & (argmax == labels)).sum()
        ctx.save_for_backward(hidden, weight, bias, labels, lse, count)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        hidden, weight, bias, labels, lse, count = ctx.saved_tensors
        scale = (grad_loss.float() / count.clamp(min=1)).reshape(1)
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        grads = _backward_grads(hidden, weight, bias, labels, lse, scale, ctx.chunk, needs)
        return (*grads, None, None)


def _check_weight(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if weight.numel() == 0:
        raise RuntimeError(
            "linear_cross_entropy got an empty weight: under ZeRO-3 a partitioned parameter is empty "
            "outside the forward of the module that owns it; call the op inside that module's forward "
            "(or gather the weight with deepspeed.zero.GatheredParameters)"
        )
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be (V, {hidden.shape[-1]}), got {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    return_correct: bool = False,
    chunk: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` over the labels that are not ignored.

    hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) with ``IGNORE_INDEX`` for rows that
    carry no loss; the loss is fp32. With no target the loss is 0 and every gradient is zero, still
    in the graph. ``return_correct`` adds the arg-max count (0-dim int64). ``chunk``: vocabulary rows
    per block (default ``vocab_chunk``).
    """
    check_runnable(hidden, weight)
    _check_weight(hidden, weight, bias)
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must be ({hidden.shape[0]},), got {tuple(labels.shape)}")
    # A label past the vocabulary would match no logit and pass silently as a loss of lse - 0;
    # the reference refuses it, so this does too (one host sync: the loss head syncs anyway).
    if labels.numel() and int(labels.max()) >= weight.shape[0]:
        raise ValueError(f"labels must be < {weight.shape[0]} (the vocabulary) or {IGNORE_INDEX}, "
                         f"got {int(labels.max())}")
    chunk = chunk or vocab_chunk(hidden.shape[0], weight.shape[0])
    loss, correct = LinearCrossEntropy.apply(hidden.contiguous(), weight, bias, labels.contiguous().long(), chunk)
    return (loss, correct) if return_correct else loss
