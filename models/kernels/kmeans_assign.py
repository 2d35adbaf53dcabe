"""Fused k-means assignment: squared distance to each candidate centroid and the argmin, in one pass.

The hot path of the visual tokenizer and of k-means fitting. It is general enough for a
hierarchical descent: each row ``x[n]`` is compared only with the ``k`` centroids of its own group
``groups[n]``::

    index[n]  = argmin_j ||x[n] - centroids[groups[n], j]||^2       (ties: the lowest j)
    sqdist[n] =    min_j ||x[n] - centroids[groups[n], j]||^2

Flat assignment is one group (``G = 1``, ``groups=None``).

Two implementations of the same maths:

- ``kmeans_assign_triton``: a Triton kernel (one program per block of rows; it streams the row's
  group's centroids and keeps a running minimum, so no (N, k) distance matrix ever exists). Used on
  CUDA tensors; with ``TRITON_INTERPRET=1`` it also runs on CPU tensors (how CI tests it).
- ``kmeans_assign_reference``: plain PyTorch, used on the CPU. Distances are expanded as
  ||x||^2 - 2 x.c + ||c||^2, measured from each group's centroid mean so that the expansion stays
  precise; rows are sorted by group and cut into pieces of about the same size, so that one batched
  matmul serves all groups at once.

``kmeans_assign`` chooses between them. Triton is optional: without it the reference runs everywhere.
"""

from __future__ import annotations

import os
import weakref

import torch

try:  # Triton is an optional dependency: the package works without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None

__all__ = ["kmeans_assign", "kmeans_assign_reference", "kmeans_assign_triton", "triton_available"]

_CHUNK_ELEMENTS = 1 << 23
"""Rows x feature-dim elements the reference handles at once (bounds its temporary memory)."""


def triton_available() -> bool:
    """Whether the Triton kernel can run here (Triton installed)."""
    return triton is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check_inputs(x: torch.Tensor, groups: torch.Tensor | None, centroids: torch.Tensor) -> torch.Tensor:
    """Validate shapes and return ``groups`` as an int64 tensor (zeros for flat assignment)."""
    if x.ndim != 2:
        raise ValueError(f"x must be (N, D), got shape {tuple(x.shape)}")
    if centroids.ndim != 3 or centroids.shape[2] != x.shape[1]:
        raise ValueError(f"centroids must be (G, k, D={x.shape[1]}), got shape {tuple(centroids.shape)}")
    if centroids.shape[1] < 1:
        raise ValueError("centroids must hold at least one centroid per group")
    if groups is None:
        if centroids.shape[0] != 1:
            raise ValueError(f"groups is required when there are {centroids.shape[0]} groups of centroids")
        return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    if groups.shape != (x.shape[0],):
        raise ValueError(f"groups must be (N={x.shape[0]},), got shape {tuple(groups.shape)}")
    if groups.dtype.is_floating_point or groups.dtype == torch.bool:
        raise ValueError(f"groups must be an integer tensor, got {groups.dtype}")
    if groups.numel():
        low, high = torch.aminmax(groups)
        if int(low) < 0 or int(high) >= centroids.shape[0]:
            raise ValueError(f"groups must lie in [0, {centroids.shape[0]}), found [{int(low)}, {int(high)}]")
    return groups.long()


def kmeans_assign(
    x: torch.Tensor, groups: torch.Tensor | None, centroids: torch.Tensor, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid within each row's group.

    Args:
        x: (N, D) float features.
        groups: (N,) integer group of each row in [0, G), or None when G = 1.
        centroids: (G, k, D) float centroids, k per group.
        backend: ``"auto"`` (Triton on CUDA when installed, else the reference), ``"triton"`` or
            ``"reference"``.

    Returns:
        ``(index, sqdist)``: (N,) int64 in [0, k) and (N,) float32 squared distances.
    """
    groups = _check_inputs(x, groups, centroids)
    if backend == "auto":
        backend = "triton" if (x.is_cuda and triton_available()) else "reference"
    if backend == "triton":
        return kmeans_assign_triton(x, groups, centroids)
    if backend == "reference":
        return kmeans_assign_reference(x, groups, centroids)
    raise ValueError(f"unknown backend {backend!r}; choose 'auto', 'triton' or 'reference'")


# ---------------------------------------------------------------------------------------------
# PyTorch reference


def kmeans_assign_reference(
    x: torch.Tensor, groups: torch.Tensor | None, centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain-PyTorch twin of the kernel (same arguments and results as ``kmeans_assign``)."""
    groups = _check_inputs(x, groups, centroids)
    n, d = x.shape
    index = torch.empty(n, dtype=torch.long, device=x.device)
    sqdist = torch.empty(n, dtype=torch.float32, device=x.device)
    shift, centroids, c_norm = _centred(centroids)
    step = max(256, _CHUNK_ELEMENTS // max(d, 1))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        if centroids.shape[0] == 1:
            xs = x[lo:hi].float() - shift[0]
            scores = torch.addmm(c_norm[0], xs, centroids[0].T, alpha=-2.0)  # (n, k)
        else:
            xs = x[lo:hi].float() - shift.index_select(0, groups[lo:hi])
            scores = _grouped_scores(xs, groups[lo:hi], centroids, c_norm)
        best, arg = scores.min(dim=1)  # first minimum on ties, like the kernel
        index[lo:hi] = arg
        sqdist[lo:hi] = (best + (xs * xs).sum(1)).clamp_min_(0.0)
    return index, sqdist


_CENTRED: dict[int, tuple[weakref.ref, int, tuple[torch.Tensor, ...]]] = {}
_CENTRED_SIZE = 8


def _centred(centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shift (G, D), centroids - shift (G, k, D), their squared norms (G, k)).

    ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 loses all precision when the points sit far from the
    origin compared with their spread (deep tree levels). Measuring from each group's centroid
    mean keeps every term at the scale of the distances themselves.

    Callers stream many chunks against the same centroids, so the result is remembered while the
    centroid tensor lives (a weak reference: the entry goes when the tensor does) and unchanged
    (its version counter: an in-place update invalidates the entry).
    """
    key = id(centroids)
    cached = _CENTRED.get(key)
    if cached is not None and cached[0]() is centroids and cached[1] == centroids._version:
        return cached[2]
    shift = centroids.float().mean(dim=1)
    centred = centroids.float() - shift[:, None, :]
    result = (shift, centred, (centred * centred).sum(-1))
    if len(_CENTRED) >= _CENTRED_SIZE:
        _CENTRED.pop(next(iter(_CENTRED)))
    _CENTRED[key] = (weakref.ref(centroids), centroids._version, result)
    weakref.finalize(centroids, _CENTRED.pop, key, None)
    return result


def _grouped_scores(
    x: torch.Tensor, groups: torch.Tensor, centroids: torch.Tensor, c_norm: torch.Tensor
) -> torch.Tensor:
    """||c||^2 - 2 x.c for each row against its group's k centroids: (n, k).

    Rows are sorted by group and cut into pieces of at most ``cap`` rows, each piece inside one
    group, so a single ``bmm`` over (pieces, cap, D) x (pieces, D, k) serves every group. With
    ``cap`` near the mean group size the padding at most doubles the rows.
    """
    n, d = x.shape
    k = centroids.shape[1]
    order = torch.argsort(groups, stable=True)
    present, counts = torch.unique_consecutive(groups[order], return_counts=True)
    cap = max(k, -(-n // len(present)))
    pieces_per_group = (counts + cap - 1) // cap
    first_slot = (torch.cumsum(pieces_per_group, 0) - pieces_per_group) * cap  # of each group's first piece
    first_row = torch.cumsum(counts, 0) - counts
    which = torch.repeat_interleave(torch.arange(len(present), device=x.device), counts)  # (n,) sorted
    slot = torch.empty_like(order)
    slot[order] = first_slot[which] + torch.arange(n, device=x.device) - first_row[which]  # row -> padded slot
    piece_group = torch.repeat_interleave(present, pieces_per_group)  # (P,)
    # Unused slots stay uninitialised: their scores are computed but never read.
    padded = x.new_empty(len(piece_group) * cap, d).index_copy_(0, slot, x)
    dots = torch.baddbmm(
        c_norm[piece_group][:, None, :], padded.view(-1, cap, d), centroids[piece_group].transpose(1, 2), alpha=-2.0
    )  # (P, cap, k)
    return dots.view(-1, k).index_select(0, slot)


# ---------------------------------------------------------------------------------------------
# Triton kernel

if triton is not None:

    @triton.jit
    def _assign_kernel(
        x_ptr, groups_ptr, c_ptr, index_ptr, sqdist_ptr,
        n_rows, dim, k, stride_x,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < n_rows
        group = tl.load(groups_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_j = tl.zeros([BLOCK_N], tl.int32)
        for j in range(0, k):
            # Each row reads its own group's j-th centroid; direct differences (no ||x||^2 - 2x.c
            # expansion) keep the distance exact to fp32 rounding.
            c_rows = c_ptr + ((group * k + j) * dim)[:, None]
            acc = tl.zeros([BLOCK_N], tl.float32)
            for d0 in range(0, dim, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                ok = row_ok[:, None] & (cols < dim)[None, :]
                xv = tl.load(x_rows + cols[None, :], mask=ok, other=0.0).to(tl.float32)
                cv = tl.load(c_rows + cols[None, :], mask=ok, other=0.0).to(tl.float32)
                diff = xv - cv
                acc += tl.sum(diff * diff, axis=1)
            better = acc < best  # strict: the lowest j wins ties, as torch.min does
            best = tl.where(better, acc, best)
            best_j = tl.where(better, j, best_j)
        tl.store(index_ptr + rows, best_j, mask=row_ok)
        tl.store(sqdist_ptr + rows, best, mask=row_ok)


def kmeans_assign_triton(
    x: torch.Tensor, groups: torch.Tensor | None, centroids: torch.Tensor, *, block_n: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel (same arguments and results as ``kmeans_assign``).

    Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` (interpreter mode).
    """
    if triton is None:
        raise RuntimeError("the Triton kernel needs the 'triton' package; use backend='reference'")
    if not x.is_cuda and not _interpreting():
        raise RuntimeError("the Triton kernel runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1)")
    groups = _check_inputs(x, groups, centroids)
    if x.stride(1) != 1:
        x = x.contiguous()
    centroids = centroids.contiguous()
    n, d = x.shape
    index = torch.empty(n, dtype=torch.int32, device=x.device)
    sqdist = torch.empty(n, dtype=torch.float32, device=x.device)
    if n:
        block_d = min(128, triton.next_power_of_2(max(d, 16)))
        grid = (triton.cdiv(n, block_n),)
        _assign_kernel[grid](
            x, groups.contiguous(), centroids, index, sqdist,
            n, d, centroids.shape[1], x.stride(0),
            BLOCK_N=block_n, BLOCK_D=block_d,
        )
    return index.long(), sqdist
