"""The encoder's behaviour: initialisation, padding, dropout, activation checkpointing, meta builds.

Numerical parity with transformers' BERT is in test_hf_interop.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from videobert.models.config import preset
from videobert.models.transformer import NormalEmbedding, NormalLinear, SelfAttention
from videobert.models.videobert import VideoBertForPreTraining
from videobert.models.vocab import IGNORE_INDEX


def _model(vocab, **overrides) -> VideoBertForPreTraining:
    torch.manual_seed(0)
    return VideoBertForPreTraining(preset("tiny", vocab, **overrides))


@torch.no_grad()
def _assert_bert_init(model: VideoBertForPreTraining, std: float) -> None:
    initialised = [m for m in model.modules() if isinstance(m, (NormalLinear, NormalEmbedding))]
    big = [m.weight for m in initialised if m.weight.numel() > 4000]
    assert big and all(abs(float(w.std()) - std) < 0.1 * std and abs(float(w.mean())) < 0.1 * std for w in big)
    assert all(float(m.bias.abs().max()) == 0 for m in model.modules() if isinstance(m, NormalLinear))
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert all(bool((m.weight == 1).all()) and float(m.bias.abs().max()) == 0 for m in norms)
    assert float(model.embeddings.word.weight[model.vocab.pad_id].abs().max()) == 0
    assert float(model.mlm_head.decoder.bias.abs().max()) == 0


def test_constructors_initialise_as_bert(small_vocab):
    model = _model(small_vocab, initializer_range=0.05)
    _assert_bert_init(model, 0.05)
    assert model.mlm_head.decoder.weight is model.embeddings.word.weight


def test_meta_build_then_materialise(small_vocab):
    config = preset("tiny", small_vocab)
    with torch.device("meta"):
        model = VideoBertForPreTraining(config)
    assert all(p.is_meta for p in model.parameters()) and not list(model.buffers())
    model.to_empty(device="cpu")
    model.reset_parameters()
    _assert_bert_init(model, config.initializer_range)
    assert model.mlm_head.decoder.weight is model.embeddings.word.weight


def test_padding_does_not_reach_real_positions(small_vocab, make_joint_batch):
    model = _model(small_vocab).eval()
    ids, types, mask = make_joint_batch(small_vocab)
    mask[:, 12:] = 0
    other = ids.clone()
    other[:, 12:] = torch.randint(5, small_vocab.size, other[:, 12:].shape)
    with torch.no_grad():
        a, b = model.encode(ids, types, mask), model.encode(other, types, mask)
        unmasked = model.encode(ids, types, torch.ones_like(mask))
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert float((a[:, :12] - unmasked[:, :12]).abs().max()) > 1e-3  # the mask does change attention


def test_configured_dropouts_are_used(small_vocab, make_joint_batch):
    model = _model(small_vocab, hidden_dropout_prob=0.25, attention_probs_dropout_prob=0.0)
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.25}
    attention = [m for m in model.modules() if isinstance(m, SelfAttention)]
    assert {m.dropout_p for m in attention} == {0.0}
    ids, types, mask = make_joint_batch(small_vocab)
    # Only attention dropout on: training mode must differ from eval mode, and only because of it.
    only_attention = _model(small_vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.3)
    none = _model(small_vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with torch.no_grad():
        for m, should_differ in ((only_attention, True), (none, False)):
            train_out = m.train().encode(ids, types, mask)
            eval_out = m.eval().encode(ids, types, mask)
            assert bool((train_out - eval_out).abs().max() > 1e-4) == should_differ


def _grads(model, batch, labels, alignment) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # same dropout masks in both runs
    model(*batch, labels, alignment).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_checkpointed_and_plain_gradients_match(small_vocab, make_joint_batch):
    model = _model(small_vocab, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).train()
    batch = make_joint_batch(small_vocab, batch=4)
    ids = batch[0]
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, torch.full_like(ids, IGNORE_INDEX))
    alignment = torch.tensor([0, 1, IGNORE_INDEX, 0])
    plain = _grads(model, batch, labels, alignment)
    model.set_gradient_checkpointing(True)
    checkpointed = _grads(model, batch, labels, alignment)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    assert float(plain["encoder.layers.0.attention.qkv.weight"].abs().sum()) > 0


def test_checkpointing_recomputes_each_layer(small_vocab, make_joint_batch):
    model = _model(small_vocab, gradient_checkpointing=True).train()
    calls = []
    for module in model.encoder.layers[0].modules():  # pre- and post-forward hooks, in pairs
        module.register_forward_pre_hook(lambda m, *_: calls.append(("pre", m)))
        module.register_forward_hook(lambda m, *_: calls.append(("post", m)))
    model(*make_joint_batch(small_vocab), None, torch.tensor([0, 1, 0])).loss.backward()
    layer = model.encoder.layers[0]
    # the forward, then the recomputation in backward, run to its end: the hooks stay paired
    assert calls.count(("post", layer)) == 2
    assert [kind for kind, _ in calls].count("pre") == [kind for kind, _ in calls].count("post")


def test_too_long_sequence_is_refused(small_vocab):
    model = _model(small_vocab)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings \\(128\\)"):
        model.encode(torch.zeros(1, 129, dtype=torch.long))


@pytest.mark.gpu
def test_cuda_matches_cpu_with_padding(small_vocab, make_joint_batch):
    """On a GPU, SDPA picks a fused kernel for the padded batch; the result is the CPU's."""
    model = _model(small_vocab).eval()
    ids, types, mask = make_joint_batch(small_vocab, batch=4)
    mask[1, -5:] = 0
    with torch.no_grad():
        expected = model.encode(ids, types, mask)
        got = model.to("cuda").encode(ids.cuda(), types.cuda(), mask.cuda()).cpu()
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-4)
