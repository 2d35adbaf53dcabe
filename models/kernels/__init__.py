"""Fused kernels and their plain PyTorch reference twins.

The joint transformer calls its fusable operations through one set of functions, chosen by name,
so that a faster implementation of the same maths can be swapped in without touching the layers::

    ops = get_ops(resolve_kernel_set("auto"))
    y = ops.bias_gelu(x @ w.T, b)

Every set implements the same ``KernelOps`` fields with the maths of ``models.kernels.reference``;
that module is what the faster sets are tested against. Sets are imported only when asked for, so a
machine without an optional backend can still use the reference.

Which set runs is a run-time choice (``VideoBertForPreTraining.set_kernels``), not part of a model's
saved config: the sets compute the same function, so a model trained with ``triton`` on a GPU loads,
evaluates and exports on a CPU with ``reference``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

from videobert.models.kernels.triton_support import triton_available

KERNEL_SETS: dict[str, str] = {
    "reference": "videobert.models.kernels.reference",
    "triton": "videobert.models.kernels.triton_ops",
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


def resolve_kernel_set(name: str, *, cuda: bool | None = None) -> str:
    """The set a request names: ``auto`` is ``triton`` on CUDA when Triton imports, else ``reference``.

    An explicit ``triton`` without CUDA is refused unless ``TRITON_INTERPRET=1`` (interpreter mode,
    for tests): compiled kernels need a GPU. ``cuda`` defaults to ``torch.cuda.is_available()``.
    """
    if name != "auto" and name not in KERNEL_SETS:
        raise ValueError(f"unknown kernel set {name!r}; choose auto or one of {sorted(KERNEL_SETS)}")
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()

    has_triton = triton_available()
    if name == "auto":
        return "triton" if cuda and has_triton else "reference"
    if name == "triton" and not has_triton:
        raise ValueError("kernel set 'triton' needs the triton package (pip install triton); or choose 'reference'")
    if name == "triton" and not cuda and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise ValueError("kernel set 'triton' needs a CUDA GPU, and none is visible: choose 'auto' or 'reference' "
                         "(or set TRITON_INTERPRET=1 to run the kernels, slowly, in Triton's interpreter)")
    return name
