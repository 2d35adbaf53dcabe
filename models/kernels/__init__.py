"""Fused kernels and their plain PyTorch reference twins.

The joint transformer calls its fusable operations through one set of functions, chosen by name
(``VideoBertConfig.kernels``), so that a faster implementation of the same maths can be swapped in
without touching the layers::

    ops = get_ops(config.kernels)
    y = ops.bias_gelu(x @ w.T, b)

Every set implements the same ``KernelOps`` fields with the maths of ``models.kernels.reference``;
that module is what the faster sets are tested against. Sets are imported only when asked for, so a
machine without an optional backend can still use the reference.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

KERNEL_SETS: dict[str, str] = {
    "reference": "models.kernels.reference",
}
"""Name -> module defining ``OPS`` (a ``KernelOps``). Add a line here for each new set."""


@dataclass(frozen=True)
class KernelOps:
    """One implementation of the fusable operations of the transformer (see ``reference`` for the maths)."""

    name: str
    bias_gelu: Callable
    """``bias_gelu(x, bias) -> gelu(x + bias)`` with the exact (erf) GELU."""
    residual_layer_norm: Callable
    """``residual_layer_norm(x, residual, weight, bias, eps) -> layer_norm(x + residual)``."""
    linear_cross_entropy: Callable
    """``linear_cross_entropy(hidden, weight, bias, labels, *, return_correct=False)``: the mean
    cross-entropy of ``hidden @ weight.T + bias`` over the non-ignored labels."""


def available_kernel_sets() -> tuple[str, ...]:
    """Names ``get_ops`` accepts."""
    return tuple(KERNEL_SETS)


def get_ops(name: str) -> KernelOps:
    """The set of fusable operations called ``name`` (``"reference"``: plain PyTorch)."""
    if name not in KERNEL_SETS:
        raise ValueError(f"unknown kernel set {name!r}; choose one of {sorted(KERNEL_SETS)}")
    ops = importlib.import_module(KERNEL_SETS[name]).OPS
    if not isinstance(ops, KernelOps):
        raise TypeError(f"{KERNEL_SETS[name]}.OPS must be a KernelOps, got {type(ops).__name__}")
    return ops
