"""Attention without padding (variable-length sequences) equals the padded path.

On the CPU the nested-tensor SDPA path runs (exactly, slowly), so the equality of outputs and of
every gradient is checked here in fp32; the flash kernels (flash-attn, PyTorch's varlen) need a GPU
and are checked there, in bf16, against the padded path (marked ``gpu``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from videobert.models.attention import varlen_attention, varlen_backend
from videobert.models.config import preset
from videobert.models.transformer import SelfAttention, TokenLayout
from videobert.models.videobert import VideoBertForPreTraining
from videobert.models.vocab import IGNORE_INDEX

LENGTHS = (5, 9, 3, 9)


def _mask(lengths=LENGTHS, length=None):
    length = length or max(lengths)
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def _padded_reference(qkv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The padded path, spelled out: scatter to (B, T), mask the keys, SDPA, gather back."""
    layout = TokenLayout.of(mask, *mask.shape)
    b, t = mask.shape
    padded = layout.unpack(qkv).permute(2, 0, 3, 1, 4)  # (3, B, heads, T, d)
    out = F.scaled_dot_product_attention(padded[0], padded[1], padded[2], attn_mask=layout.key_mask)
    return layout.pack(out.transpose(1, 2).reshape(b, t, -1))


def test_layout_offsets_mark_each_examples_tokens():
    layout = TokenLayout.of(_mask(), len(LENGTHS), max(LENGTHS), varlen=True)
    assert layout.offsets.tolist() == [0, 5, 14, 17, 26] and layout.max_len == 9
    assert layout.key_mask is None and layout.index.numel() == sum(LENGTHS)
    assert TokenLayout.of(torch.ones(2, 4), 2, 4, varlen=True).offsets is None  # nothing padded: dense


def test_nested_sdpa_equals_the_padded_path_with_gradients():
    g = torch.Generator().manual_seed(0)
    mask = _mask()
    qkv = torch.randn(int(mask.sum()), 3, 2, 8, generator=g, requires_grad=True)
    layout = TokenLayout.of(mask, *mask.shape, varlen=True)
    got = varlen_attention(qkv, layout.offsets, layout.max_len, 0.0, backend="nested_sdpa")
    want = _padded_reference(qkv, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    grad = torch.randn(got.shape, generator=g)
    torch.testing.assert_close(torch.autograd.grad(got, qkv, grad)[0], torch.autograd.grad(want, qkv, grad)[0],
                               rtol=1e-5, atol=1e-6)


def test_cpu_picks_the_nested_path_and_unknown_backends_are_refused():
    qkv = torch.randn(4, 3, 2, 8)
    assert varlen_backend(qkv, 0.0) == "nested_sdpa"
    with pytest.raises(ValueError, match="unknown varlen backend 'fast'"):
        varlen_attention(qkv, torch.tensor([0, 4]), 4, 0.0, backend="fast")


def _model(vocab, device="cpu", dtype=torch.float32):
    torch.manual_seed(0)
    config = preset("tiny", vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return VideoBertForPreTraining(config).to(device, dtype).train()


def _padded_batch(vocab, make_joint_batch, device="cpu"):
    ids, types, mask = make_joint_batch(vocab, batch=4, n_text=9, n_video=12)
    for row, keep in enumerate((24, 10, 17, 24)):
        mask[row, keep:] = 0
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.3, ids,
                         torch.full_like(ids, IGNORE_INDEX)) * mask + IGNORE_INDEX * (1 - mask)
    alignment = torch.tensor([0, 1, IGNORE_INDEX, 0])
    return [t.to(device) for t in (ids, types, mask, labels, alignment)]


def _unpadded_calls(model) -> list[bool]:
    """Records, per attention call, whether it ran on variable-length sequences."""
    seen: list[bool] = []
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.register_forward_pre_hook(lambda m, args: seen.append(args[1].offsets is not None))
    return seen


def _loss_and_grads(model, batch, mode):
    model.set_attention(mode)
    model.zero_grad(set_to_none=True)
    out = model(*batch)
    out.loss.backward()
    hidden = model.encode(*batch[:3])
    return out.loss.detach(), hidden.detach(), {n: p.grad.float().clone() for n, p in model.named_parameters()}


def test_model_with_varlen_attention_equals_padded_on_cpu(small_vocab, make_joint_batch):
    model = _model(small_vocab)
    batch = _padded_batch(small_vocab, make_joint_batch)
    seen = _unpadded_calls(model)
    loss_p, hidden_p, grads_p = _loss_and_grads(model, batch, "auto")  # auto on the CPU: padded
    assert seen and not any(seen)
    seen.clear()
    loss_v, hidden_v, grads_v = _loss_and_grads(model, batch, "varlen")
    assert seen and all(seen)
    torch.testing.assert_close(loss_v, loss_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden_v, hidden_p, rtol=1e-5, atol=1e-5)  # zeros at padding in both
    for name in grads_p:
        torch.testing.assert_close(grads_v[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)


def test_unknown_attention_mode_is_refused(small_vocab):
    with pytest.raises(ValueError, match="unknown attention mode 'flash'; choose one of"):
        _model(small_vocab).set_attention("flash")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["flash_attn", "torch_varlen", "nested_sdpa"])
def test_each_varlen_backend_on_cuda_equals_the_padded_path_in_bf16(backend):
    if backend == "flash_attn":
        pytest.importorskip("flash_attn")
    if backend == "torch_varlen":
        pytest.importorskip("torch.nn.attention.varlen")
    mask = _mask((100, 37, 512, 1), 512).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(int(mask.sum()), 3, 16, 64, generator=g, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    layout = TokenLayout.of(mask, *mask.shape, varlen=True)
    got = varlen_attention(qkv, layout.offsets, layout.max_len, 0.0, backend=backend)
    want = _padded_reference(qkv, mask)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    grad = torch.randn(got.shape, generator=g, device="cuda", dtype=torch.bfloat16)
    got_grad, want_grad = torch.autograd.grad(got, qkv, grad)[0], torch.autograd.grad(want, qkv, grad)[0]
    torch.testing.assert_close(got_grad.float(), want_grad.float(), rtol=3e-2, atol=3e-2)


@pytest.mark.gpu
def test_model_on_cuda_runs_attention_unpadded_by_default_and_equals_padded(small_vocab, make_joint_batch):
    model = _model(small_vocab, "cuda")
    batch = _padded_batch(small_vocab, make_joint_batch, "cuda")
    seen = _unpadded_calls(model)
    loss_p, hidden_p, grads_p = _loss_and_grads(model, batch, "padded")
    assert seen and not any(seen)
    seen.clear()
    loss_v, hidden_v, grads_v = _loss_and_grads(model, batch, "auto")
    assert seen and all(seen)
    torch.testing.assert_close(loss_v, loss_p, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hidden_v, hidden_p, rtol=1e-4, atol=1e-4)
    for name in grads_p:
        torch.testing.assert_close(grads_v[name], grads_p[name], rtol=1e-3, atol=1e-5, msg=name)
