"""The ``triton`` kernel set against the ``reference`` set: forward and every gradient.

On a machine without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by
the top-level conftest) on fp32 CPU tensors; tolerances there are fp32 rounding (rtol 1e-5). Shapes
are deliberately not multiples of any block size (N=47, H=123, V=1007; rows past one backward
program; columns past one tile). The interpreter has no bf16 arithmetic, so the bf16 cases run on
a GPU only (marked ``gpu``), where each kernel must be as close to fp32 maths as the bf16 reference.
"""

from __future__ import annotations

import pytest
import torch

from videobert.models.kernels import get_ops, resolve_kernel_set
from videobert.models.kernels.triton_support import triton_available
from videobert.models.vocab import IGNORE_INDEX

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
FP32 = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def ref():
    return get_ops("reference")


@pytest.fixture(scope="module")
def tri():
    return get_ops("triton")


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _leaves(*shapes, seed: int, scale: float = 1.0, dtype=torch.float32, device=None):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*s, generator=g) * scale).to(device or _device(), dtype).requires_grad_() for s in shapes]


def _value_and_grads(fn, inputs, grad_out=None):
    out = fn(*inputs)
    first = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(first, inputs, grad_out, allow_unused=True)
    return out, grads


def _assert_same(got, want, **tol):
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, **(tol or FP32), msg=lambda m: f"output {i}: {m}")


# -- bias + GELU ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(47, 123), (300, 70), (2, 5, 300)], ids=["47x123", "300x70", "2x5x300"])
def test_bias_gelu_matches_reference(ref, tri, shape):
    x, bias = _leaves(shape, shape[-1:], seed=0, scale=2.0)
    grad_y = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(x.device)
    want_y, want = _value_and_grads(ref.bias_gelu, (x, bias), grad_y)
    got_y, got = _value_and_grads(tri.bias_gelu, (x, bias), grad_y)
    _assert_same([got_y, *got], [want_y, *want])
    assert float(got[1].abs().max()) > 1.0  # the bias gradient sums rows: a real reduction


def test_bias_gelu_without_rows(tri):
    x, bias = _leaves((0, 9), (9,), seed=0)
    y = tri.bias_gelu(x, bias)
    grads = torch.autograd.grad(y.sum(), (x, bias))
    assert y.shape == (0, 9) and float(grads[1].abs().sum()) == 0.0


# -- residual + LayerNorm ------------------------------------------------------------------------


@pytest.mark.parametrize("rows,width,eps,offset", [(47, 123, 1e-12, 0.0), (300, 64, 1e-5, 0.0), (9, 1000, 1e-12, 50.0)],
                         ids=["47x123", "300x64", "9x1000-offset"])
def test_residual_layer_norm_matches_reference(ref, tri, rows, width, eps, offset):
    x, residual, weight, bias = _leaves((rows, width), (rows, width), (width,), (width,), seed=2)
    with torch.no_grad():  # rows far from zero: the statistics must not lose the spread
        x += offset
    grad_y = torch.randn(rows, width, generator=torch.Generator().manual_seed(3)).to(x.device)
    inputs = (x, residual, weight, bias)
    want_y, want = _value_and_grads(lambda *a: ref.residual_layer_norm(*a, eps), inputs, grad_y)
    got_y, got = _value_and_grads(lambda *a: tri.residual_layer_norm(*a, eps), inputs, grad_y)
    _assert_same([got_y, *got], [want_y, *want], rtol=1e-5, atol=3e-5)


def test_residual_layer_norm_keeps_leading_dimensions(ref, tri):
    x, residual, weight, bias = _leaves((2, 7, 40), (2, 7, 40), (40,), (40,), seed=4)
    got = tri.residual_layer_norm(x, residual, weight, bias, 1e-12)
    assert got.shape == (2, 7, 40)
    torch.testing.assert_close(got, ref.residual_layer_norm(x, residual, weight, bias, 1e-12), **FP32)


# -- linear + cross-entropy ----------------------------------------------------------------------


def _ce_case(n=47, h=123, v=1007, seed=5, scale=1.0, ignore_every=5):
    hidden, weight, bias = _leaves((n, h), (v, h), (v,), seed=seed, scale=scale)
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, v, (n,), generator=g)
    with torch.no_grad():  # a third of the rows predict their label: the correct count is not 0
        logits = hidden @ weight.T + bias
        labels[::3] = logits[::3].argmax(-1).cpu()
    if ignore_every:
        labels[1::ignore_every] = IGNORE_INDEX
    return hidden, weight, bias, labels.to(hidden.device)


def _ce(ops, chunk=None):
    kw = {} if chunk is None else {"chunk": chunk}
    return lambda h, w, b, labels: ops.linear_cross_entropy(h, w, b, labels, return_correct=True, **kw)


@pytest.mark.parametrize("chunk", [None, 256, 1000], ids=["one-chunk", "chunks-of-256", "chunks-of-1000"])
def test_linear_cross_entropy_matches_reference(ref, tri, chunk):
    hidden, weight, bias, labels = _ce_case()
    (want_loss, want_correct), want = _value_and_grads(lambda *a: _ce(ref)(*a, labels), (hidden, weight, bias))
    (got_loss, got_correct), got = _value_and_grads(lambda *a: _ce(tri, chunk)(*a, labels), (hidden, weight, bias))
    _assert_same([got_loss, *got], [want_loss, *want])
    assert got_loss.dtype == torch.float32 and got_correct.dtype == torch.int64
    assert int(got_correct) == int(want_correct) >= 10


def test_linear_cross_entropy_is_stable_for_large_logits(ref, tri):
    # logits in the hundreds: exp() overflows without the running maximum of the online log-sum-exp
    hidden, weight, bias, labels = _ce_case(n=20, h=32, v=600, scale=6.0)
    (want_loss, _), want = _value_and_grads(lambda *a: _ce(ref)(*a, labels), (hidden, weight, bias))
    (got_loss, _), got = _value_and_grads(lambda *a: _ce(tri, 256)(*a, labels), (hidden, weight, bias))
    assert torch.isfinite(got_loss) and float(want_loss.detach()) > 10
    _assert_same([got_loss, *got], [want_loss, *want], rtol=1e-5, atol=1e-4)


def test_linear_cross_entropy_without_bias(ref, tri):
    hidden, weight, _, labels = _ce_case(n=19, h=16, v=300)
    want_loss, want = _value_and_grads(lambda h, w: ref.linear_cross_entropy(h, w, None, labels), (hidden, weight))
    got_loss, got = _value_and_grads(lambda h, w: tri.linear_cross_entropy(h, w, None, labels), (hidden, weight))
    _assert_same([got_loss, *got], [want_loss, *want])


def test_arg_max_ties_go_to_the_lowest_id(tri, ref):
    # Small integers make every logit exact whatever the summation order, so the ties are real:
    # row 0 between ids 7 and 520 (different chunks of 256), row 1 between 30 and 40 (one tile).
    g = torch.Generator().manual_seed(10)
    weight = torch.randint(-1, 2, (600, 16), generator=g).float()
    hidden = torch.zeros(2, 16)
    hidden[0, :8], hidden[1, 8:] = 1.0, 1.0
    weight[[7, 520], :8] = 3.0
    weight[[30, 40], 8:] = 3.0
    weight, hidden = weight.to(_device()), hidden.to(_device())
    labels = torch.tensor([7, 30], device=weight.device)
    _, expected = ref.linear_cross_entropy(hidden, weight, None, labels, return_correct=True)
    _, correct = tri.linear_cross_entropy(hidden, weight, None, labels, return_correct=True, chunk=256)
    assert int(expected) == int(correct) == 2


@pytest.mark.parametrize("rows", [0, 13], ids=["no-rows", "all-ignored"])
def test_linear_cross_entropy_without_targets_is_zero_and_in_the_graph(tri, rows):
    hidden, weight, bias, _ = _ce_case(n=rows, h=24, v=300, ignore_every=0)
    labels = torch.full((rows,), IGNORE_INDEX, device=hidden.device)
    loss, correct = tri.linear_cross_entropy(hidden, weight, bias, labels, return_correct=True)
    assert float(loss.detach()) == 0.0 and int(correct) == 0 and loss.requires_grad
    grads = torch.autograd.grad(loss, (hidden, weight, bias))
    assert [g.shape for g in grads] == [hidden.shape, weight.shape, bias.shape]
    assert all(float(g.abs().sum()) == 0.0 for g in grads)


def test_labels_past_the_vocabulary_are_refused(tri):
    hidden, weight, bias, labels = _ce_case(n=4, h=8, v=30)
    labels[2] = 30
    with pytest.raises(ValueError, match="labels must be < 30"):
        tri.linear_cross_entropy(hidden, weight, bias, labels)


def test_a_partitioned_weight_is_refused_with_the_reason(tri):
    hidden, _, _, labels = _ce_case(n=4, h=8, v=30)
    empty = torch.empty(0, device=hidden.device)  # what ZeRO-3 leaves outside the owner's forward
    with pytest.raises(RuntimeError, match="under ZeRO-3 a partitioned parameter is empty"):
        tri.linear_cross_entropy(hidden, empty, None, labels)


# -- choosing a set ------------------------------------------------------------------------------


def test_auto_resolves_by_device_and_triton_needs_a_gpu_or_the_interpreter(monkeypatch):
    assert resolve_kernel_set("auto", cuda=False) == "reference"
    assert resolve_kernel_set("auto", cuda=True) == "triton"
    assert resolve_kernel_set("reference", cuda=False) == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_kernel_set("triton", cuda=False) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs a CUDA GPU, and none is visible: choose 'auto' or 'reference'"):
        resolve_kernel_set("triton", cuda=False)
    with pytest.raises(ValueError, match="unknown kernel set 'cuda'"):
        resolve_kernel_set("cuda")


# -- bf16 on a GPU -------------------------------------------------------------------------------


def _bf16_errors(fn_ref, fn_tri, inputs):
    """Max error of the triton and the reference op in bf16, each against fp32 maths on the same
    (bf16-representable) inputs: the kernel must be as accurate as the reference it replaces."""
    exact_inputs = [t.detach().float().requires_grad_() for t in inputs]
    exact = _value_and_grads(fn_ref, exact_inputs)
    errors = []
    for fn in (fn_ref, fn_tri):
        out = _value_and_grads(fn, inputs)
        flat = lambda r: [r[0][0] if isinstance(r[0], tuple) else r[0], *r[1]]  # noqa: E731
        errors.append(max(float((a.float() - b).abs().max() / (b.abs().max() + 1e-6))
                          for a, b in zip(flat(out), flat(exact))))
    return errors


@pytest.mark.gpu
def test_bf16_kernels_are_as_accurate_as_the_bf16_reference(ref, tri):
    """Relative max errors against fp32 maths: the kernel's at most 1.5x the reference's + 2e-3."""
    bf = dict(dtype=torch.bfloat16, device="cuda")
    cases = {
        "bias_gelu": (ref.bias_gelu, tri.bias_gelu, _leaves((4096, 4096), (4096,), seed=6, **bf)),
        "residual_layer_norm": (lambda *a: ref.residual_layer_norm(*a, 1e-12),
                                lambda *a: tri.residual_layer_norm(*a, 1e-12),
                                _leaves((8192, 1024), (8192, 1024), (1024,), (1024,), seed=7, **bf)),
    }
    h, w, b = _leaves((2048, 1024), (51264, 1024), (51264,), seed=8, scale=0.5, **bf)
    labels = torch.randint(0, 51264, (2048,), device="cuda")
    labels[::7] = IGNORE_INDEX
    cases["linear_cross_entropy"] = (lambda *a: ref.linear_cross_entropy(*a, labels),
                                     lambda *a: tri.linear_cross_entropy(*a, labels), [h, w, b])
    for name, (fn_ref, fn_tri, inputs) in cases.items():
        ref_error, tri_error = _bf16_errors(fn_ref, fn_tri, inputs)
        assert tri_error <= 1.5 * ref_error + 2e-3, (name, tri_error, ref_error)


@pytest.mark.gpu
def test_fp32_kernels_on_cuda_at_bert_large_shapes(ref, tri):
    h, w, b = _leaves((4096, 1024), (51264, 1024), (51264,), seed=9, scale=0.5, device="cuda")
    labels = torch.randint(0, 51264, (4096,), device="cuda")
    labels[::4] = IGNORE_INDEX
    (want_loss, want_correct), want = _value_and_grads(lambda *a: _ce(ref)(*a, labels), (h, w, b))
    (got_loss, got_correct), got = _value_and_grads(lambda *a: _ce(tri)(*a, labels), (h, w, b))
    # chunked and whole-vocabulary fp32 GEMMs sum in different orders: 1e-4 relative
    _assert_same([got_loss, *got], [want_loss, *want], rtol=1e-4, atol=1e-5)
    assert int(got_correct) == int(want_correct)
