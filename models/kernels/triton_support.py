"""What every Triton kernel of the ``triton`` set needs to know about where it may run.

Triton is optional: the package imports without it and the reference set runs everywhere. A kernel
runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` puts Triton in interpreter mode
(how CI tests the kernels; the interpreter reads the flag when a kernel is defined, so it must be set
before this module is imported).
"""

from __future__ import annotations

import os

import torch

try:  # optional dependency
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None

__all__ = ["triton", "tl", "triton_available", "interpreting", "check_runnable"]


def triton_available() -> bool:
    """Whether the ``triton`` package imports here."""
    return triton is not None


def interpreting() -> bool:
    """Whether Triton kernels run in interpreter mode (``TRITON_INTERPRET`` set and not 0)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_runnable(*tensors: torch.Tensor) -> None:
    """Refuse, with the fix, inputs a Triton kernel cannot read: no Triton, or CPU tensors without
    the interpreter (a compiled kernel would read host memory as device memory)."""
    if triton is None:
        raise RuntimeError("the 'triton' kernel set needs the triton package; use the 'reference' set")
    if not interpreting() and not all(t.is_cuda for t in tensors):
        raise RuntimeError(
            "the 'triton' kernel set runs on CUDA tensors (or on the CPU with TRITON_INTERPRET=1); "
            "use the 'reference' set here"
        )
