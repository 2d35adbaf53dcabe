"""The reference kernel set: the maths every fused implementation is tested against."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from videobert.models.kernels import KernelOps, available_kernel_sets, get_ops
from videobert.models.vocab import IGNORE_INDEX


@pytest.fixture(scope="module")
def ops() -> KernelOps:
    return get_ops("reference")


def test_registry(ops):
    assert "reference" in available_kernel_sets() and ops.name == "reference"
    with pytest.raises(ValueError, match="unknown kernel set 'cuda'; choose one of"):
        get_ops("cuda")


def test_bias_gelu_is_the_exact_erf_gelu(ops):
    g = torch.Generator().manual_seed(0)
    x, bias = torch.randn(4, 7, 16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    y = x + bias
    expected = 0.5 * y * (1.0 + torch.erf(y / math.sqrt(2.0)))
    torch.testing.assert_close(ops.bias_gelu(x, bias), expected, rtol=0, atol=1e-12)


def test_residual_layer_norm_matches_its_definition(ops):
    g = torch.Generator().manual_seed(1)
    x, residual, weight, bias = (torch.randn(*shape, generator=g, dtype=torch.float64)
                                 for shape in ((3, 5, 32), (3, 5, 32), (32,), (32,)))
    s = x + residual
    normed = (s - s.mean(-1, keepdim=True)) / torch.sqrt(s.var(-1, unbiased=False, keepdim=True) + 1e-12)
    torch.testing.assert_close(ops.residual_layer_norm(x, residual, weight, bias, 1e-12), normed * weight + bias)


def test_linear_cross_entropy_equals_cross_entropy_of_the_logits(ops):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(10, 8, generator=g, requires_grad=True)
    weight, bias = torch.randn(30, 8, generator=g, requires_grad=True), torch.randn(30, generator=g, requires_grad=True)
    labels = torch.randint(0, 30, (10,), generator=g)
    labels[[1, 4, 7]] = IGNORE_INDEX
    loss, correct = ops.linear_cross_entropy(hidden, weight, bias, labels, return_correct=True)
    logits = hidden @ weight.T + bias
    keep = labels != IGNORE_INDEX
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], labels[keep]))
    assert int(correct) == int((logits[keep].argmax(-1) == labels[keep]).sum())
    grads = torch.autograd.grad(loss, (hidden, weight, bias))
    expected = torch.autograd.grad(F.cross_entropy(logits[keep], labels[keep]), (hidden, weight, bias))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_linear_cross_entropy_without_targets_is_zero_and_still_reaches_the_weights(ops):
    weight = torch.randn(30, 8, requires_grad=True)
    bias = torch.zeros(30, requires_grad=True)
    loss = ops.linear_cross_entropy(torch.randn(0, 8), weight, bias, torch.zeros(0, dtype=torch.long))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert weight.grad is not None and bias.grad is not None
    assert float(weight.grad.abs().sum()) == 0.0
