"""Held-out video tokens masked one at a time: accuracy and perplexity beside their baselines.

The held-out pass of ``trainer.evaluation.heldout`` masks tokens at random as training does, which
leaves a handful of video targets on a small held-out set. Here every visual token of every held-out
segment is a target once: the segment is read as ``[CLS] its text [>] its video [SEP]`` with only
that position replaced by ``[MASK]``, and the model predicts it from everything else.

Scores, each over the same targets:

* over the visual words: the position is a video position, so the prediction is read among the
  visual words only (what generation and the paper's video-to-video use);
* over the whole vocabulary, as training scores it (its perplexity is never lower);
* baselines: the unigram of the training tokens (``train_counts``, add-one smoothed: the best
  prediction that ignores the segment), the held-out targets' own frequencies (an oracle unigram,
  exp of their entropy), and copying a neighbouring clip's visual word (the previous one, else the
  next: the cheapest way to use the context, since neighbouring clips often share a word).

Copying the neighbour is right wherever a clip repeats its neighbour's word, so the figures are also
given on the targets where it is wrong (``neighbour_differs_*``): the neighbour's word differs from
the target, or the segment has a single clip and no neighbour. There copying scores 0 by
construction, and the model's accuracy shows what it predicts beyond repeating a word.

Every accuracy has its Wilson 95 % interval (``<key>_ci``, ``trainer.evaluation.intervals``), the
targets counted as independent (tokens of one segment are not quite: the intervals are on the narrow
side). Perplexities have none.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from videobert.models.vocab import JOINT_SPECIAL_COUNT, JointVocab, fit_lengths
from videobert.shards import reader
from videobert.trainer import distributed
from videobert.trainer.evaluation import intervals
from videobert.trainer.evaluation.heldout import shard_segments

_SUMS = ("targets", "correct_visual", "nll_visual", "correct_all", "nll_all", "nll_train_unigram", "correct_neighbour",
         "correct_train_unigram", "neighbour_differs", "correct_visual_neighbour_differs",
         "correct_train_unigram_neighbour_differs")


def train_counts(urls: Sequence[str], num_visual: int, max_samples: int = 50_000) -> np.ndarray:
    """(num_visual,) visual-word counts of the first ``max_samples`` samples of token shards ``urls``."""
    counts = np.zeros(num_visual, np.float64)
    for i, sample in enumerate(reader.iter_samples(urls, on_error=lambda url, e: None)):
        if i >= max_samples or sample.tokens is None:
            break
        np.add.at(counts, np.asarray(sample.tokens, np.int64), 1)
    return counts


def masked_rows(vocab: JointVocab, text_ids: Sequence[int], video: np.ndarray, max_seq_len: int) -> list[tuple[list[int], list[int], int, int, int]]:
    """One row per kept video position: (ids with that position masked, token types, position,
    target leaf, neighbour's leaf or -1)."""
    n_text, n_video = fit_lengths(len(text_ids), len(video), max_seq_len - JOINT_SPECIAL_COUNT)
    kept = [int(v) for v in video[:n_video]]
    ids, types = vocab.joint_sequence(list(text_ids[:n_text]), kept)
    first = n_text + 2
    rows = []
    for k, leaf in enumerate(kept):
        masked = list(ids)
        masked[first + k] = vocab.mask_id
        neighbour = kept[k - 1] if k > 0 else (kept[k + 1] if k + 1 < len(kept) else -1)
        rows.append((masked, types, first + k, leaf, neighbour))
    return rows


class InTurnTally:
    """Sums over targets, and the held-out targets' histogram."""

    def __init__(self, vocab: JointVocab, unigram: np.ndarray):
        self.vocab = vocab
        self.log_unigram = np.log(unigram / unigram.sum())
        self.unigram_best = int(np.argmax(unigram))
        self.sums = dict.fromkeys(_SUMS, 0.0)
        self.histogram = np.zeros(vocab.num_visual_tokens)

    def add(self, logits: torch.Tensor, targets: np.ndarray, neighbours: np.ndarray) -> None:
        """``logits`` (N, vocab rows) at the masked positions; ``targets`` leaf ids (N,)."""
        v = self.vocab
        joint = torch.as_tensor(targets + v.visual_offset)
        visual = torch.log_softmax(logits[:, v.visual_offset : v.size].float(), dim=-1)
        every = torch.log_softmax(logits[:, : v.size].float(), dim=-1)
        t = torch.as_tensor(targets)
        s = self.sums
        s["targets"] += len(targets)
        s["correct_visual"] += float((visual.argmax(dim=-1) == t).sum())
        s["nll_visual"] -= float(visual.gather(1, t[:, None]).sum())
        s["correct_all"] += float((every.argmax(dim=-1) == joint).sum())
        s["nll_all"] -= float(every.gather(1, joint[:, None]).sum())
        s["nll_train_unigram"] -= float(self.log_unigram[targets].sum())
        s["correct_train_unigram"] += float((targets == self.unigram_best).sum())
        s["correct_neighbour"] += float((neighbours == targets).sum())
        differs = neighbours != targets
        s["neighbour_differs"] += float(differs.sum())
        s["correct_visual_neighbour_differs"] += float(((visual.argmax(dim=-1) == t).numpy() & differs).sum())
        s["correct_train_unigram_neighbour_differs"] += float(((targets == self.unigram_best) & differs).sum())
        np.add.at(self.histogram, targets, 1)

    def reduce(self) -> dict[str, float | list[float]]:
        """Figures over all ranks (collective), each accuracy with its interval (``<key>_ci``)."""
        total = distributed.sum_across_ranks(np.concatenate([[self.sums[k] for k in _SUMS], self.histogram]))
        s = dict(zip(_SUMS, total[: len(_SUMS)]))
        histogram = total[len(_SUMS) :]
        n = max(s["targets"], 1.0)
        p = histogram[histogram > 0] / n
        m = max(s["neighbour_differs"], 1.0)
        out: dict[str, float | list[float]] = {
            "targets": float(s["targets"]),
            "accuracy": s["correct_visual"] / n, "perplexity": float(np.exp(s["nll_visual"] / n)),
            "accuracy_all_words": s["correct_all"] / n, "perplexity_all_words": float(np.exp(s["nll_all"] / n)),
            "train_unigram_accuracy": s["correct_train_unigram"] / n,
            "train_unigram_perplexity": float(np.exp(s["nll_train_unigram"] / n)),
            "oracle_unigram_accuracy": float(histogram.max() / n), "oracle_unigram_perplexity": float(np.exp(-(p * np.log(p)).sum())),
            "neighbour_accuracy": s["correct_neighbour"] / n,
            "neighbour_differs_targets": float(s["neighbour_differs"]),
            "neighbour_differs_accuracy": s["correct_visual_neighbour_differs"] / m,
            "neighbour_differs_train_unigram_accuracy": s["correct_train_unigram_neighbour_differs"] / m,
            "neighbour_differs_neighbour_accuracy": 0.0,
        }
        hits = {"accuracy": s["correct_visual"], "accuracy_all_words": s["correct_all"],
                "train_unigram_accuracy": s["correct_train_unigram"], "oracle_unigram_accuracy": histogram.max(initial=0.0),
                "neighbour_accuracy": s["correct_neighbour"]}
        for key, correct in hits.items():
            out[f"{key}_ci"] = intervals.as_list(intervals.wilson(float(correct), s["targets"]))
        differs = {"neighbour_differs_accuracy": s["correct_visual_neighbour_differs"],
                   "neighbour_differs_train_unigram_accuracy": s["correct_train_unigram_neighbour_differs"],
                   "neighbour_differs_neighbour_accuracy": 0.0}
        for key, correct in differs.items():
            out[f"{key}_ci"] = intervals.as_list(intervals.wilson(float(correct), s["neighbour_differs"]))
        return out


@torch.no_grad()
def evaluate_in_turn(model: torch.nn.Module, tokenizer: Any, urls: Sequence[str], unigram: np.ndarray, *,
                     max_seq_len: int, batch_size: int = 64, visual: Any = None) -> dict[str, float]:
    """Every visual token of this rank's share of the held-out shards masked once; totals over all ranks."""
    vocab = model.config.vocab
    device = next(model.parameters()).device
    tally = InTurnTally(vocab, np.asarray(unigram, np.float64) + 1.0)
    rank, world_size = distributed.world()
    pending: list[tuple] = []
    for shard in distributed.share(urls, rank, world_size):
        for item in shard_segments(urls[shard], visual, on_error=lambda url, e: None):
            text = tokenizer(item.text, add_special_tokens=False)["input_ids"]
            pending += masked_rows(vocab, text, np.asarray(item.clips), max_seq_len)
            while len(pending) >= batch_size:
                _forward(model, vocab, pending[:batch_size], tally, device)
                pending = pending[batch_size:]
    if pending:
        _forward(model, vocab, pending, tally, device)
    return tally.reduce()


def _forward(model: torch.nn.Module, vocab: JointVocab, rows: list[tuple], tally: InTurnTally, device) -> None:
    width = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    types, attention = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
    for i, (ids, tt, *_rest) in enumerate(rows):
        input_ids[i, : len(ids)], types[i, : len(ids)], attention[i, : len(ids)] = torch.tensor(ids), torch.tensor(tt), 1
    hidden = model.encode(input_ids.to(device), types.to(device), attention.to(device))
    at = hidden[torch.arange(len(rows)), torch.tensor([r[2] for r in rows])]  # (N, H)
    tally.add(model.mlm_logits(at).cpu(), np.array([r[3] for r in rows]), np.array([r[4] for r in rows]))


TABLE_ROWS = (
    ("model, over the visual words", "accuracy", "perplexity"),
    ("model, over the whole vocabulary", "accuracy_all_words", "perplexity_all_words"),
    ("unigram of the training tokens", "train_unigram_accuracy", "train_unigram_perplexity"),
    ("unigram of these targets (oracle)", "oracle_unigram_accuracy", "oracle_unigram_perplexity"),
    ("copy a neighbouring clip's word", "neighbour_accuracy", None),
    ("model, where the neighbour's word differs", "neighbour_differs_accuracy", None),
    ("training unigram, there", "neighbour_differs_train_unigram_accuracy", None),
    ("copy a neighbouring clip's word, there", "neighbour_differs_neighbour_accuracy", None),
)
"""(label, accuracy key, perplexity key) of each row, in table order; an accuracy's interval is under
``<accuracy key>_ci``."""
