"""The ``triton`` kernel set: the fusable operations of the transformer as Triton kernels.

Each op lives in its own module with its maths written out beside the kernels (``bias_gelu``,
``layer_norm``, ``cross_entropy``) and is tested against the ``reference`` set with the same
arguments. The kernels run on CUDA tensors, or on the CPU under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from videobert.models.kernels import KernelOps
from videobert.models.kernels.bias_gelu import bias_gelu
from videobert.models.kernels.cross_entropy import linear_cross_entropy
from videobert.models.kernels.layer_norm import residual_layer_norm
from videobert.models.kernels.triton_support import triton_available

if not triton_available():  # get_ops("triton") then fails with the fix instead of at the first call
    raise ImportError("the 'triton' kernel set needs the triton package (pip install triton); use 'reference'")

OPS = KernelOps(
    name="triton",
    bias_gelu=bias_gelu,
    residual_layer_norm=residual_layer_norm,
    linear_cross_entropy=linear_cross_entropy,
)
