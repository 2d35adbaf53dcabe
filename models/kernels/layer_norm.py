"""Fused residual add + LayerNorm, forward and backward, as Triton kernels (twin:
``reference.residual_layer_norm``).

The maths, per row of width H, with ``s = x + residual`` (rounded to the storage dtype, as the
reference's separate add rounds it) and statistics in fp32::

    mean = sum(s) / H,   rstd = 1 / sqrt(sum((s - mean)^2) / H + eps),   xhat = (s - mean) * rstd
    y    = xhat * weight + bias
    backward, with  wdy = weight * grad_y:
    grad_s      = rstd * (wdy - xhat * mean(xhat * wdy) - mean(wdy))   (= grad_x = grad_residual)
    grad_weight = sum over rows of grad_y * xhat,   grad_bias = sum over rows of grad_y

Why fused: the reference writes ``s`` and reads it again for the statistics and the output; here
one pass reads x and residual and writes ``y`` and ``s`` (``s`` is what the backward needs: the same
memory the reference keeps), plus the row statistics. The backward computes each row's gradient in
one pass, a tile of rows at a time, and reduces weight and bias gradients over the rows of its
program into fp32 partial sums, summed once at the end. A row must fit one block (H up to ``MAX_WIDTH``).
"""

from __future__ import annotations

import torch

from videobert.models.kernels.triton_support import check_runnable, tl, triton

MAX_WIDTH = 16384
"""Widest row the kernels take in one block (the ``3b`` preset's 2560 fits with room)."""
_TILE_ELEMENTS = 4096
"""Rows x block width per forward tile: whole rows, several at once when rows are narrow."""
_ROWS_PER_PROGRAM = 128
"""Rows one backward program reduces into its partial weight and bias gradients."""

if triton is not None:

    @triton.jit
    def _residual_layer_norm_forward(
        x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, s_ptr, mean_ptr, rstd_ptr, n_rows, width, eps,
        BLOCK_ROWS: tl.constexpr, BLOCK_WIDTH: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        cols = tl.arange(0, BLOCK_WIDTH)
        row_ok, col_ok = rows < n_rows, cols < width
        ok = row_ok[:, None] & col_ok[None, :]
        offsets = rows.to(tl.int64)[:, None] * width + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        s = (x + r).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + offsets, s, mask=ok)
        s = s.to(tl.float32)
        mean = tl.sum(s, axis=1) / width
        centred = tl.where(ok, s - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / width + eps)
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = centred * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=ok)
        tl.store(mean_ptr + rows, mean, mask=row_ok)
        tl.store(rstd_ptr + rows, rstd, mask=row_ok)

    @triton.jit
    def _residual_layer_norm_backward(
        g_ptr, s_ptr, w_ptr, mean_ptr, rstd_ptr, ds_ptr, dw_ptr, db_ptr, n_rows, width,
        ROWS_PER_PROGRAM: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_WIDTH: tl.constexpr,
    ):
        cols = tl.arange(0, BLOCK_WIDTH)
        col_ok = cols < width
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_WIDTH], tl.float32)
        db = tl.zeros([BLOCK_WIDTH], tl.float32)
        first = tl.program_id(0) * ROWS_PER_PROGRAM
        for r0 in range(0, ROWS_PER_PROGRAM, BLOCK_ROWS):
            rows = first + r0 + tl.arange(0, BLOCK_ROWS)
            row_ok = rows < n_rows
            ok = row_ok[:, None] & col_ok[None, :]
            offsets = rows.to(tl.int64)[:, None] * width + cols[None, :]
            s = tl.load(s_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
            xhat = tl.where(ok, (s - mean[:, None]) * rstd[:, None], 0.0)
            wdy = w[None, :] * g
            c1 = tl.sum(xhat * wdy, axis=1) / width
            c2 = tl.sum(wdy, axis=1) / width
            ds = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
            tl.store(ds_ptr + offsets, ds.to(ds_ptr.dtype.element_ty), mask=ok)
            dw += tl.sum(g * xhat, axis=0)
            db += tl.sum(g, axis=0)
        tl.store(dw_ptr + tl.program_id(0) * width + cols, dw, mask=col_ok)
        tl.store(db_ptr + tl.program_id(0) * width + cols, db, mask=col_ok)

def _block_width(width: int) -> int:
    if width > MAX_WIDTH:
        raise ValueError(f"residual_layer_norm's kernel takes rows up to {MAX_WIDTH} wide, got {width}; "
                         "use the 'reference' kernel set for wider models")
    return triton.next_power_of_2(width)


def _tile_rows(block: int) -> int:
    """Whole rows per tile: several when rows are narrow, so that a tile keeps ~4K elements."""
    return max(1, min(64, _TILE_ELEMENTS // block))


def _launch_forward(x, residual, weight, bias, eps):
    """(y, s, mean, rstd) for (N, H) inputs."""
    n, h = x.shape
    block = _block_width(h)
    rows = _tile_rows(block)
    y, s = torch.empty_like(x), torch.empty_like(x)
    mean = torch.empty(n, dtype=torch.float32, device=x.device)
    rstd = torch.empty(n, dtype=torch.float32, device=x.device)
    if n:
        _residual_layer_norm_forward[(triton.cdiv(n, rows),)](
            x, residual, weight, bias, y, s, mean, rstd, n, h, eps, BLOCK_ROWS=rows, BLOCK_WIDTH=block,
        )
    return y, s, mean, rstd


def _launch_backward(grad, s, weight, mean, rstd):
    """(grad_s (N, H), grad_weight (H,), grad_bias (H,))."""
    n, h = s.shape
    block = _block_width(h)
    programs = max(1, triton.cdiv(n, _ROWS_PER_PROGRAM))
    ds = torch.empty_like(s)
    dw = torch.zeros(programs, h, dtype=torch.float32, device=s.device)
    db = torch.zeros(programs, h, dtype=torch.float32, device=s.device)
    if n:
        _residual_layer_norm_backward[(programs,)](
            grad, s, weight, mean, rstd, ds, dw, db, n, h,
            ROWS_PER_PROGRAM=_ROWS_PER_PROGRAM, BLOCK_ROWS=_tile_rows(block), BLOCK_WIDTH=block,
        )
    return ds, dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype)


class ResidualLayerNorm(torch.autograd.Function):
    """Autograd wrapper: saves ``s`` and the row statistics, the kernels do the work."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps: float):
        y, s, mean, rstd = _launch_forward(x, residual, weight, bias, eps)
        ctx.save_for_backward(s, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        s, weight, mean, rstd = ctx.saved_tensors
        ds, dw, db = _launch_backward(grad.contiguous(), s, weight, mean, rstd)
        return ds, ds, dw, db, None


def residual_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """``layer_norm(x + residual)`` over the last dimension, affine ``weight`` and ``bias``."""
    check_runnable(x, residual, weight, bias)
    if x.shape != residual.shape or x.dtype != residual.dtype:
        raise ValueError(f"x and residual must match: {tuple(x.shape)} {x.dtype} vs "
                         f"{tuple(residual.shape)} {residual.dtype}")
    width = x.shape[-1]
    if weight.shape != (width,) or bias.shape != (width,):
        raise ValueError(f"weight and bias must have shape ({width},), got {tuple(weight.shape)}, {tuple(bias.shape)}")
    flat = lambda t: t.contiguous().view(-1, width)  # noqa: E731
    return ResidualLayerNorm.apply(flat(x), flat(residual), weight, bias, float(eps)).view(x.shape)
