"""The optimizer's parameter groups: weight decay as BERT, and a faster start for the heads a
pretrained encoder-only checkpoint lacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from videobert.models.hf_interop import from_pretrained_bert, load_text_tokenizer
from videobert.models.vocab import JointVocab
from videobert.trainer.build import resolve_bert_dir
from videobert.trainer.config import load_config
from videobert.trainer.optim import build_optimizer, lr_multiplier

RECIPE = Path(__file__).resolve().parents[2] / "launch" / "recipes" / "debug.yaml"


@pytest.fixture(scope="module")
def minilm():
    bert_dir = resolve_bert_dir("minilm")
    vocab = JointVocab.from_tokenizer(load_text_tokenizer(bert_dir), 16)
    return from_pretrained_bert(bert_dir, vocab)


def _lr_of(optimizer: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_new_heads_learn_faster_and_norms_do_not_decay(minilm):
    cfg = load_config(RECIPE, ["data.train=x", "data.codebook=x", "optim.lr=2e-4", "optim.new_parameters_lr_multiplier=5"])
    optimizer = build_optimizer(minilm, cfg)
    lrs = _lr_of(optimizer)
    named = dict(minilm.named_parameters())
    assert len(lrs) == len(named)  # every parameter once (the tied decoder weight is the word table)
    # MiniLM is a BertModel: no masked-token head, no next-sentence classifier; its pooler exists
    # but was never trained (a sentence-transformers model pools by mean), so it counts as new too.
    assert set(minilm.new_parameter_names) == {
        "mlm_head.dense.weight", "mlm_head.dense.bias", "mlm_head.norm.weight", "mlm_head.norm.bias",
        "mlm_head.decoder.bias", "alignment_head.classifier.weight", "alignment_head.classifier.bias",
        "alignment_head.pooler.weight", "alignment_head.pooler.bias"}
    for name, param in named.items():
        lr, decay = lrs[id(param)]
        assert lr == pytest.approx(1e-3 if name in minilm.new_parameter_names else 2e-4), name
        assert decay == (0.0 if param.dim() < 2 or "norm" in name else 0.01), name
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)  # the logged learning rate is the body's


def test_the_schedule_scales_every_group_alike(minilm):
    cfg = load_config(RECIPE, ["data.train=x", "data.codebook=x", "optim.lr=1e-4", "optim.new_parameters_lr_multiplier=10",
                               "optim.warmup_steps=4", "max_steps=8"])
    optimizer = build_optimizer(minilm, cfg)
    peak = [g["lr"] for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
    for step in range(1, 6):
        optimizer.step()
        scheduler.step()
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([p * lr_multiplier(step, cfg) for p in peak])
    assert sorted(set(peak)) == pytest.approx([1e-4, 1e-3])


def test_a_model_from_a_preset_has_one_learning_rate(tmp_path):
    from videobert.models.config import preset
    from videobert.models.videobert import VideoBertForPreTraining

    vocab = JointVocab.from_tokenizer(load_text_tokenizer(resolve_bert_dir("minilm")), 16)
    model = VideoBertForPreTraining(preset("tiny", vocab))
    cfg = load_config(RECIPE, ["data.train=x", "data.codebook=x", "optim.new_parameters_lr_multiplier=5"])
    assert {g["lr"] for g in build_optimizer(model, cfg).param_groups} == {cfg.optim.lr}
