"""Fused bias + exact GELU, forward and backward, as Triton kernels (twin: ``reference.bias_gelu``).

The maths, with ``s = x + bias`` (bias broadcast over the rows) and Phi the standard normal CDF::

    y      = s * Phi(s) = 0.5 * s * (1 + erf(s / sqrt(2)))                     (BERT's "gelu")
    dy/ds  = Phi(s) + s * phi(s),   phi(s) = exp(-s^2 / 2) / sqrt(2 pi)
    grad_x = grad_y * dy/ds
    grad_b = sum over rows of grad_x

Why fused: the reference writes ``s`` and then reads it back for GELU (two passes over the (N, 4H)
activation forward, plus the bias sum backward). Here the forward reads ``x`` once and writes ``y``
once; the backward recomputes ``s`` from the saved ``x`` (which the reference saves as ``s``: the
same memory) and reduces each block of rows into a partial bias gradient as it goes, so the
(N, 4H) gradient is not read again for the bias. Arithmetic is fp32 whatever the storage dtype.
"""

from __future__ import annotations

import torch

from videobert.models.kernels.triton_support import check_runnable, tl, triton

_BLOCK_ROWS = 16
"""Rows per tile (forward) and per inner step (backward)."""
_BLOCK_COLS = 256
"""Columns per tile: with 16 rows, 4096 elements, a good size for an elementwise kernel."""
_ROWS_PER_PROGRAM = 256
"""Rows one backward program reduces into its partial bias gradient: the partial buffer then holds
one fp32 row per 256 activation rows (a small fraction of the gradient itself)."""

if triton is not None:

    @triton.jit
    def _gelu_parts(s):
        """(y, dy/ds) of the exact GELU at ``s`` (fp32)."""
        cdf = 0.5 * (1.0 + tl.erf(s * 0.7071067811865476))
        pdf = tl.exp(-0.5 * s * s) * 0.3989422804014327
        return s * cdf, cdf + s * pdf

    @triton.jit
    def _bias_gelu_forward(x_ptr, b_ptr, y_ptr, n_rows, n_cols, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
        ok = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
        offsets = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        y, _ = _gelu_parts(x + b[None, :])
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _bias_gelu_backward(
        g_ptr, x_ptr, b_ptr, dx_ptr, partial_ptr, n_rows, n_cols,
        ROWS_PER_PROGRAM: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
    ):
        cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
        col_ok = cols < n_cols
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        bias_grad = tl.zeros([BLOCK_COLS], tl.float32)
        first = tl.program_id(0) * ROWS_PER_PROGRAM
        for r0 in range(0, ROWS_PER_PROGRAM, BLOCK_ROWS):
            rows = first + r0 + tl.arange(0, BLOCK_ROWS)
            ok = (rows < n_rows)[:, None] & col_ok[None, :]
            offsets = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
            x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            _, slope = _gelu_parts(x + b[None, :])
            dx = tl.where(ok, g * slope, 0.0)
            tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=ok)
            bias_grad += tl.sum(dx, axis=0)
        tl.store(partial_ptr + tl.program_id(0) * n_cols + cols, bias_grad, mask=col_ok)


def _launch_forward(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(N, C) x and (C,) bias -> (N, C) gelu(x + bias)."""
    n, c = x.shape
    y = torch.empty_like(x)
    if x.numel():
        grid = (triton.cdiv(n, _BLOCK_ROWS), triton.cdiv(c, _BLOCK_COLS))
        _bias_gelu_forward[grid](x, bias, y, n, c, BLOCK_ROWS=_BLOCK_ROWS, BLOCK_COLS=_BLOCK_COLS)
    return y


def _launch_backward(grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x (N, C), grad_bias (C,)) from the output gradient and the saved inputs."""
    n, c = x.shape
    dx = torch.empty_like(x)
    programs = triton.cdiv(n, _ROWS_PER_PROGRAM)
    partial = torch.zeros(max(programs, 1), c, dtype=torch.float32, device=x.device)
    if x.numel():
        grid = (programs, triton.cdiv(c, _BLOCK_COLS))
        _bias_gelu_backward[grid](grad, x, bias, dx, partial, n, c, ROWS_PER_PROGRAM=_ROWS_PER_PROGRAM,
                                  BLOCK_ROWS=_BLOCK_ROWS, BLOCK_COLS=_BLOCK_COLS)
    return dx, partial.sum(0).to(bias.dtype)


class BiasGelu(torch.autograd.Function):
    """Autograd wrapper: saves the inputs, the kernels do the work."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, bias)
        return _launch_forward(x, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, bias = ctx.saved_tensors
        return _launch_backward(grad.contiguous(), x, bias)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(x + bias)`` (exact GELU) over the last dimension of ``x`` of any shape."""
    check_runnable(x, bias)
    if bias.shape != x.shape[-1:]:
        raise ValueError(f"bias must have shape ({x.shape[-1]},), got {tuple(bias.shape)}")
    flat = x.contiguous().view(-1, x.shape[-1])
    return BiasGelu.apply(flat, bias.contiguous()).view(x.shape)
