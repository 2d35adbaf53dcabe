"""Held-out metrics: alignment ROC-AUC and accuracies, masked text and video token accuracy and perplexity.

One deterministic pass over the held-out shards, every segment read twice: once as a joint
``[CLS] text [>] video [SEP]`` row with its own video and its masked-token targets, masking as in
training (the masked-token figures); once intact, nothing masked, with its own video and beside
``max(1, K)`` rows pairing its text with other segments' videos (the alignment figures: whether the
head tells a text's own video from another's, as retrieval asks it, not a masked text's). No
concatenation and no video subsampling. Each figure stands beside its chance level, measured on the
same targets: for an accuracy the share of the most frequent target (the best a model that ignores
its input can do); for a perplexity that of always predicting the targets' own frequencies (exp of
their entropy); for ROC-AUC and balanced accuracy 0.5.

Alignment is read three ways, because the share of negatives here need not be training's: ROC-AUC
(threshold-free), balanced accuracy (the mean of the recalls of aligned and misaligned rows at the
head's decision: prior-free) and the accuracy the same recalls give at training's share of
negatives (``training_negative_share``), whose chance is that share's larger side.

Each figure has a 95 % interval beside it (``<key>_ci``, ``trainer.evaluation.intervals``): Wilson's
for the accuracies (the targets counted), a bootstrap over the scored alignment examples for ROC-AUC
and balanced accuracy (the mean of the recall on aligned and on misaligned examples, each example
decided by the alignment head's argmax). Perplexities have none: the pass adds up loss totals per
batch, not losses per target, so there is nothing finer to resample.

The work is split by whole shards (``trainer.distributed.share``): batches never cross a shard and draw their
random choices from (seed, shard index, batch index), so the totals do not depend on the number of
ranks. Two ways in:

* ``engine_heldout(engine, ...)``: through the DeepSpeed engine at the end of training. Ranks that run
  out early keep stepping with a placeholder batch whose results are discarded, because each ZeRO-3
  forward pass gathers parameters collectively and every rank must take part in every one of them.
* ``evaluate_model(model, ...)``: a plain single-device model (a consolidated checkpoint or an
  exported directory); ranks run independently and meet only to add up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from videobert.models.videobert import MODEL_INPUTS, OBJECTIVES
from videobert.models.vocab import IGNORE_INDEX, JointVocab
from videobert.shards import reader, schema
from videobert.trainer import distributed
from videobert.trainer.config import ObjectivesConfig
from videobert.trainer.data import positional_rng
from videobert.trainer.evaluation import intervals
from videobert.trainer.example_builder import ExampleBuilder, TrainingItem

_HELDOUT_BATCHES = 11
"""Purpose part of the seed of the held-out batches' random choices (masks)."""
_HELDOUT_PAIRS = 12
"""Purpose part of the seed of the intact alignment rows' random choices (the other videos)."""


def heldout_objectives(train: ObjectivesConfig) -> ObjectivesConfig:
    """The training objectives made deterministic and cross-modal for evaluation: every segment a
    joint row with its own video (its masked-token targets kept) and at least one extra row with
    another segment's video, whatever way training drew its negatives."""
    return dataclasses.replace(
        train, joint_fraction=1.0, text_fraction=0.0, video_fraction=0.0,
        negatives_per_positive=max(1, train.negatives_per_positive), video_span_mask_prob=0.0,
        concat_prob=0.0, concat_max=1, max_stride=1, mlm_on_negatives=False,
    )


def training_negative_share(train: ObjectivesConfig) -> float:
    """The share of misaligned rows among the rows with an alignment label that training sees: the
    prior at which held-out accuracy is also reported."""
    k = train.negatives_per_positive
    return k / (k + 1) if k else train.negative_rate


# ---------------------------------------------------------------------------------------------
# data


def sample_tokens(sample: schema.Sample, visual: Any = None) -> np.ndarray:
    """A sample's visual-token ids (n_clips,) int64; a clip sample's frames are tokenized by
    ``visual`` (a ``VisualTokenizer``)."""
    if sample.meta.kind != schema.CLIP_KIND:
        return np.asarray(sample.tokens, np.int64)
    if visual is None:
        raise ValueError(f"{sample.key} is a clip sample: a visual tokenizer is needed to evaluate clip shards")
    return visual.tokenize_frames(sample.frames)


def token_segment(sample: schema.Sample, visual: Any = None) -> TrainingItem:
    """A sample as the example builder takes it, always with visual-token ids."""
    return TrainingItem(key=sample.key, video_id=sample.meta.video_id, text=sample.text, clips=sample_tokens(sample, visual))


def shard_segments(url: str, visual: Any = None, on_error: Callable[[str, Exception], None] | None = None) -> list[TrainingItem]:
    """Every readable sample of one shard, as token segments."""
    return [token_segment(s, visual) for s in reader.iter_samples([url], on_error=on_error)]


def heldout_batches(urls: Sequence[str], shard_ids: Sequence[int], builder: ExampleBuilder, batch_size: int, seed: int,
                    visual: Any = None, on_error: Callable | None = None) -> Iterator[dict[str, Any]]:
    """Batches of the given shards (``segment_batches`` of each), randomness from (seed, shard, batch).
    ``builder`` holds the held-out objectives (``heldout_objectives``)."""
    builders = row_builders(builder)
    for shard in shard_ids:
        yield from segment_batches(shard_segments(urls[shard], visual, on_error), builders, batch_size, seed, shard)


def row_builders(builder: ExampleBuilder) -> tuple[ExampleBuilder, ExampleBuilder]:
    """(masked, intact) builders from the held-out one: masked rows with their own video only, and
    intact rows with the other videos."""
    masked = ExampleBuilder(builder.vocab, builder.tokenizer, dataclasses.replace(
        builder.obj, negatives_per_positive=0, negative_rate=0.0), builder.max_seq_len)
    intact = ExampleBuilder(builder.vocab, builder.tokenizer, dataclasses.replace(
        builder.obj, text_mask_prob=0.0, video_mask_prob=0.0, mlm_on_negatives=False), builder.max_seq_len)
    return masked, intact


def segment_batches(segments: Sequence[TrainingItem], builders: tuple[ExampleBuilder, ExampleBuilder], batch_size: int,
                    seed: int, shard: int = 0) -> Iterator[dict[str, Any]]:
    """For each run of ``batch_size`` segments of one shard: their masked rows (masked-token targets,
    no alignment label), then their intact rows, each text with its own video and the other videos
    (alignment labels, no targets). ``builders``: ``row_builders``."""
    masked, intact = builders
    for b, start in enumerate(range(0, len(segments), batch_size)):
        chunk = segments[start : start + batch_size]
        batch = masked.build(chunk, positional_rng(seed, _HELDOUT_BATCHES, shard, b))
        batch["alignment_labels"] = np.full_like(batch["alignment_labels"], IGNORE_INDEX)
        batch["alignment_groups"] = np.full_like(batch["alignment_groups"], -1)
        yield batch
        yield intact.build(chunk, positional_rng(seed, _HELDOUT_PAIRS, shard, b))


# ---------------------------------------------------------------------------------------------
# tally


class Tally:
    """Correct/count/loss per objective, histograms of targets (for chance levels), alignment scores
    and decisions (for ROC-AUC, balanced accuracy and their intervals)."""

    def __init__(self, vocab: JointVocab, negative_share: float | None = None):
        """``negative_share``: training's share of misaligned rows, at which accuracy is also read."""
        self.vocab = vocab
        self.negative_share = negative_share
        self.sums = {name: np.zeros(3) for name in OBJECTIVES}  # correct, count, loss sum
        self.targets = np.zeros(vocab.size_padded + 2, dtype=np.float64)
        self.aligned_prob: list[float] = []
        self.aligned: list[int] = []
        self.decided_aligned: list[int] = []
        self.unreadable = 0

    def add(self, out: Any, inputs: dict[str, torch.Tensor]) -> None:
        for name in OBJECTIVES[:2]:
            count = float(out[f"{name}_count"])
            self.sums[name] += (float(out[f"{name}_correct"]), count, float(out[f"{name}_loss"]) * count)
        labels = inputs["mlm_labels"][inputs["mlm_labels"] != IGNORE_INDEX].cpu().numpy()
        np.add.at(self.targets, labels, 1)
        has_label = inputs["alignment_labels"] != IGNORE_INDEX
        align = inputs["alignment_labels"][has_label].cpu().numpy()
        np.add.at(self.targets, self.vocab.size_padded + align, 1)
        logits = out["alignment_logits"].detach().float()[has_label]
        self.aligned_prob += torch.softmax(logits, dim=-1)[:, 0].cpu().tolist()
        self.aligned += (align == 0).astype(int).tolist()
        decided = (logits.argmax(dim=-1) == 0).int().cpu().numpy()
        self.decided_aligned += decided.tolist()
        # the head's own decisions, whatever form its loss takes (a listwise loss counts ranked groups)
        count = float(has_label.sum())
        self.sums["alignment"] += (float((decided == (align == 0)).sum()), count, float(out["alignment_loss"]) * count)

    def on_error(self, url: str, error: Exception) -> None:
        self.unreadable += 1

    def reduce(self) -> dict[str, Any]:
        """Totals over all ranks (collective), each figure with its interval (``<key>_ci``)."""
        flat = np.concatenate([*(self.sums[n] for n in OBJECTIVES), [self.unreadable], self.targets])
        total = distributed.sum_across_ranks(flat)
        k = 3 * len(OBJECTIVES)
        sums = {n: total[3 * i : 3 * i + 3] for i, n in enumerate(OBJECTIVES)}
        targets = total[k + 1 :]
        scored = distributed.gather_lists(list(zip(self.aligned_prob, self.aligned, self.decided_aligned)))
        v = self.vocab
        groups = {"alignment": targets[v.size_padded :], "text_mlm": targets[: v.text_vocab_size],
                  "video_mlm": targets[v.visual_offset : v.size]}
        out: dict[str, Any] = {"unreadable_samples": float(total[k])}
        for name in OBJECTIVES:
            correct, count, loss = sums[name]
            out[f"{name}_count"] = float(count)
            if count:
                out[f"{name}_acc"] = float(correct / count)
                out[f"{name}_acc_ci"] = intervals.as_list(intervals.wilson(correct, count))
                out[f"{name}_chance"] = float(groups[name].max() / max(groups[name].sum(), 1))
                if name != "alignment":
                    out[f"{name}_perplexity"] = float(np.exp(loss / count))
                    out[f"{name}_perplexity_chance"] = float(np.exp(_entropy(groups[name])))
        scored = sorted(map(tuple, scored))  # one order whatever the ranks: the bootstrap draws the same examples
        scores, aligned, decided = (np.array(column, np.float64) for column in zip(*scored)) if scored else (np.zeros(0),) * 3
        auc = roc_auc(scores, aligned)
        if auc is not None:
            out["alignment_auc"], out["alignment_auc_chance"] = auc, 0.5
            out["alignment_auc_ci"] = intervals.as_list(intervals.auc_interval(scores, aligned))
        balanced = intervals.balanced_accuracy(decided, aligned)
        if balanced is not None:
            out["alignment_balanced_acc"], out["alignment_balanced_acc_chance"] = balanced, 0.5
            out["alignment_balanced_acc_ci"] = intervals.as_list(intervals.balanced_accuracy_interval(decided, aligned))
        if balanced is not None and self.negative_share is not None:
            w = 1.0 - self.negative_share
            out["alignment_prior_acc"] = intervals.balanced_accuracy(decided, aligned, positive_weight=w)
            out["alignment_prior_acc_chance"] = max(w, 1.0 - w)
            out["alignment_prior_acc_ci"] = intervals.as_list(
                intervals.balanced_accuracy_interval(decided, aligned, positive_weight=w))
            out["alignment_negative_share"] = self.negative_share
        return out


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for the binary labels ``positive`` (ties count half):
    the Mann-Whitney statistic from average ranks. None when one class is absent."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # 1-based, ties share their average rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ---------------------------------------------------------------------------------------------
# the pass


def run_pass(forward: Callable[[dict[str, torch.Tensor]], Any], to_inputs: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
             batches: Iterator[dict[str, Any]], tally: Tally, *, lockstep: bool, max_batches: int | None = None) -> Tally:
    """Forward every batch and tally it. ``lockstep``: all ranks step together (ZeRO-3 engines)."""
    placeholder = None
    with torch.no_grad():
        for _ in range(max_batches or 10**12):
            batch = next(batches, None)
            more = distributed.any_rank(batch is not None) if lockstep else batch is not None
            if not more:
                break
            inputs = to_inputs(batch) if batch is not None else placeholder or _placeholder(tally.vocab)
            out = forward(inputs)
            if batch is not None:
                tally.add(out, inputs)
                placeholder = placeholder or {k: v.clone() for k, v in inputs.items()}
    return tally


def engine_heldout(engine, to_inputs: Callable[[dict[str, Any]], dict[str, torch.Tensor]], urls: Sequence[str],
                   builder: ExampleBuilder, *, batch_size: int, seed: int, visual: Any = None,
                   max_batches: int | None = None, negative_share: float | None = None) -> dict[str, float]:
    """The held-out pass through a ZeRO-3 engine (all ranks in lockstep); totals over all ranks.
    ``negative_share``: training's (``training_negative_share``), for the accuracy at that prior."""
    tally = Tally(builder.vocab, negative_share)
    rank, world_size = distributed.world()
    batches = heldout_batches(urls, distributed.share(urls, rank, world_size), builder, batch_size, seed, visual,
                              tally.on_error)
    engine.eval()
    run_pass(lambda inputs: engine(**inputs), to_inputs, batches, tally, lockstep=True, max_batches=max_batches)
    engine.train()
    return tally.reduce()


def evaluate_model(model: torch.nn.Module, tokenizer: Any, urls: Sequence[str], *, objectives: ObjectivesConfig,
                   max_seq_len: int, batch_size: int = 32, seed: int = 0, visual: Any = None,
                   max_batches: int | None = None) -> dict[str, float]:
    """The held-out pass with a plain model on this rank's shards; totals over all ranks (collective)."""
    vocab = model.config.vocab
    device = next(model.parameters()).device
    builder = ExampleBuilder(vocab, tokenizer, heldout_objectives(objectives), max_seq_len)
    tally = Tally(vocab, training_negative_share(objectives))
    rank, world_size = distributed.world()
    batches = heldout_batches(urls, distributed.share(urls, rank, world_size), builder, batch_size, seed, visual,
                              tally.on_error)
    model.eval()
    run_pass(lambda inputs: model(**inputs), lambda batch: _model_inputs(batch, device), batches, tally,
             lockstep=False, max_batches=max_batches)
    return tally.reduce()


def _model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(batch[k]).to(device) for k in MODEL_INPUTS}


def _placeholder(vocab: JointVocab) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[vocab.cls_id, vocab.video_sep_id, vocab.visual_offset, vocab.sep_id]])
    return dict(input_ids=ids, token_type_ids=torch.tensor([[0, 1, 1, 1]]), attention_mask=torch.ones_like(ids),
                mlm_labels=torch.full_like(ids, IGNORE_INDEX), alignment_labels=torch.tensor([IGNORE_INDEX]),
                alignment_groups=torch.tensor([-1]))


TABLE_ROWS = (("alignment accuracy", "alignment_acc", "alignment_chance", "alignment_count"),
              ("alignment accuracy at training's prior", "alignment_prior_acc", "alignment_prior_acc_chance", "alignment_count"),
              ("alignment balanced accuracy", "alignment_balanced_acc", "alignment_balanced_acc_chance", "alignment_count"),
              ("alignment ROC-AUC", "alignment_auc", "alignment_auc_chance", "alignment_count"),
              ("masked text accuracy", "text_mlm_acc", "text_mlm_chance", "text_mlm_count"),
              ("masked text perplexity", "text_mlm_perplexity", "text_mlm_perplexity_chance", "text_mlm_count"),
              ("masked video accuracy", "video_mlm_acc", "video_mlm_chance", "video_mlm_count"),
              ("masked video perplexity", "video_mlm_perplexity", "video_mlm_perplexity_chance", "video_mlm_count"))
"""(label, value key, chance key, count key) of each held-out figure, in the order tables show them;
a figure's interval, when it has one, is under ``<value key>_ci``."""
