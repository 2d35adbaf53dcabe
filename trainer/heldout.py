"""Held-out accuracies after (or apart from) training: alignment, masked text and masked video tokens.

One deterministic pass over the held-out shards, every example a joint ``[CLS] text [>] video [SEP]``
sequence, half of them with the video of another segment (alignment negatives), no concatenation and
no video subsampling, masking as in training. Each accuracy is printed beside its chance level: the
share of the most frequent target (the best a model that ignores its input can do), measured on the
same targets.

Every rank evaluates its own part of the shards; ranks that run out early keep stepping with a
placeholder batch whose results are discarded, because each ZeRO-3 forward pass gathers parameters
collectively and every rank must take part in every one of them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import torch

from models.vocab import IGNORE_INDEX, JointVocab
from trainer.config import ObjectivesConfig

OBJECTIVES = ("alignment", "text_mlm", "video_mlm")


def heldout_objectives(train: ObjectivesConfig) -> ObjectivesConfig:
    """The training objectives made deterministic and cross-modal for evaluation."""
    return dataclasses.replace(
        train, joint_fraction=1.0, text_fraction=0.0, video_fraction=0.0, negative_rate=0.5,
        concat_prob=0.0, concat_max=1, max_stride=1, mlm_on_negatives=False,
    )


class Tally:
    """Correct/count per objective and histograms of targets (for the chance levels)."""

    def __init__(self, vocab: JointVocab):
        self.vocab = vocab
        self.correct = dict.fromkeys(OBJECTIVES, 0.0)
        self.count = dict.fromkeys(OBJECTIVES, 0.0)
        self.targets = np.zeros(vocab.size_padded + 2, dtype=np.float64)

    def add(self, out: Any, inputs: dict[str, torch.Tensor]) -> None:
        for name in OBJECTIVES:
            self.correct[name] += float(getattr(out, f"{name}_correct"))
            self.count[name] += float(getattr(out, f"{name}_count"))
        labels = inputs["mlm_labels"][inputs["mlm_labels"] != IGNORE_INDEX].cpu().numpy()
        np.add.at(self.targets, labels, 1)
        align = inputs["alignment_labels"][inputs["alignment_labels"] != IGNORE_INDEX].cpu().numpy()
        np.add.at(self.targets, self.vocab.size_padded + align, 1)

    def reduce(self) -> dict[str, float]:
        from trainer.engine import all_reduce_

        vec = torch.from_numpy(np.concatenate([
            [self.correct[n] for n in OBJECTIVES], [self.count[n] for n in OBJECTIVES], self.targets,
        ]))
        all_reduce_(vec)
        k = len(OBJECTIVES)
        correct, count, targets = vec[:k].numpy(), vec[k : 2 * k].numpy(), vec[2 * k :].numpy()
        v = self.vocab
        groups = {
            "alignment": targets[v.size_padded :],
            "text_mlm": targets[: v.text_vocab_size],
            "video_mlm": targets[v.visual_offset : v.size],
        }
        out: dict[str, float] = {}
        for i, name in enumerate(OBJECTIVES):
            out[f"{name}_count"] = float(count[i])
            if count[i]:
                out[f"{name}_acc"] = float(correct[i] / count[i])
                out[f"{name}_chance"] = float(groups[name].max() / max(groups[name].sum(), 1))
        return out


def evaluate_heldout(trainer, max_batches: int | None = None) -> dict[str, float]:
    """Run the held-out pass with a built ``Trainer``; rank 0 prints and saves the results."""
    from trainer import build
    from trainer.data import BatchStream, StreamPosition
    from trainer.engine import all_reduce_
    from trainer.examples import ExampleBuilder

    cfg = trainer.cfg
    source = build.inspect_source(cfg.data.heldout, "data.heldout")
    build.check_source(source, trainer.codebook, "data.heldout")
    spec = build.stream_spec(cfg, source.urls, trainer.dist, train=False)
    builder = ExampleBuilder(trainer.vocab, trainer.tokenizer, heldout_objectives(cfg.objectives), cfg.data.max_seq_len)
    batches = iter(BatchStream(spec, StreamPosition(), builder.build, cfg.optim.micro_batch_size, max_epochs=1))
    tally = Tally(trainer.vocab)
    placeholder = None
    trainer.engine.eval()
    with torch.no_grad():
        for _ in range(max_batches or 10**12):
            batch = next(batches, None)
            if all_reduce_(torch.tensor([float(batch is not None)]), "max").item() == 0:
                break
            inputs = trainer.model_inputs(batch if batch is not None else placeholder or _placeholder(trainer.vocab))
            out = trainer.engine(**inputs)
            if batch is not None:
                tally.add(out, inputs)
                placeholder = placeholder or {k: v.clone() for k, v in inputs.items()}
    trainer.engine.train()
    results = tally.reduce()
    if trainer.dist.is_main:
        (trainer.run_dir / "heldout.json").write_text(json.dumps(results, indent=1))
        print(format_table(results))
    return results


def _placeholder(vocab: JointVocab) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[vocab.cls_id, vocab.video_sep_id, vocab.visual_offset, vocab.sep_id]])
    return dict(input_ids=ids, token_type_ids=torch.tensor([[0, 1, 1, 1]]), attention_mask=torch.ones_like(ids),
                mlm_labels=torch.full_like(ids, IGNORE_INDEX), alignment_labels=torch.tensor([IGNORE_INDEX]))


def format_table(results: dict[str, float]) -> str:
    rows = [("alignment", "alignment_"), ("masked text tokens", "text_mlm_"), ("masked video tokens", "video_mlm_")]
    lines = ["held-out accuracy        model   chance   targets", "-" * 50]
    for label, prefix in rows:
        if f"{prefix}acc" in results:
            lines.append(f"{label:<22} {results[prefix + 'acc']:>7.3f} {results[prefix + 'chance']:>8.3f} "
                         f"{int(results[prefix + 'count']):>9d}")
    return "\n".join(lines)
