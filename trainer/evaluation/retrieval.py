"""Zero-shot text-video retrieval over held-out segments, ranked by the alignment head.

VideoBERT is a single stream: a caption and a video are only compared inside one joint sequence.
For S segments the model reads every pair ``[CLS] caption_i [>] video_j [SEP]`` (S x S passes,
batched) and scores it by the alignment head's probability of "aligned". Text -> video ranks the S
videos for each caption, video -> text the S captions for each video. A retrieval counts as correct
when the retrieved segment is the query's own or carries an identical caption (sets of short
captions repeat some); the rank of a query is that of its first correct item, ties counted against
it. Reported: R@1, R@5, R@10 and the median rank, each beside a uniformly random ranking's
(for a query with c correct items among S, P(rank <= K) = 1 - C(S - c, K) / C(S, K), expected
rank (S + 1) / (c + 1)), and the number of distinct captions. R@K and the median rank have 95 %
intervals (``r{k}_ci``, ``median_rank_ci``): a bootstrap over the query segments, the set ranked
against held fixed (``trainer.evaluation.intervals``).

Cost: S^2 sequences of (caption + video + 3) tokens, S times the work of reading each segment
once; ``max_segments`` caps S (the first S readable segments). Under a launcher the ranks share the
captions (rows of the score matrix) and meet to assemble it.

A second ranking needs no alignment head and only S passes (``masked_word_scores``): each video is
read once after the zero-shot template (``trainer.evaluation.zeroshot``), and a caption scores the
log-probability of its own verb and noun (read from it with the label vocabulary,
``trainer.evaluation.labels.words_of_sentence``) at the template's masks. A caption that names
neither scores nothing and ranks last.
"""

from __future__ import annotations

from math import comb
from typing import Any, Sequence

import numpy as np
import torch

from videobert.models.vocab import JOINT_SPECIAL_COUNT, JointVocab, fit_lengths
from videobert.trainer import distributed
from videobert.trainer.evaluation import intervals
from videobert.trainer.evaluation.labels import words_of_sentence

RECALL_AT = (1, 5, 10)
DIRECTIONS = ("text_to_video", "video_to_text")


def pair_rows(vocab: JointVocab, text_ids: Sequence[int], video: np.ndarray, max_seq_len: int) -> tuple[list[int], list[int]]:
    n_text, n_video = fit_lengths(len(text_ids), len(video), max_seq_len - JOINT_SPECIAL_COUNT)
    return vocab.joint_sequence(list(text_ids[:n_text]), [int(v) for v in video[:n_video]])


@torch.no_grad()
def aligned_probabilities(model: torch.nn.Module, vocab: JointVocab, rows: list[tuple[list[int], list[int]]],
                          device: torch.device) -> np.ndarray:
    """P(aligned) of each joint sequence (ids, token types), in one padded batch."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    types, attention = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
    for i, (ids, tt) in enumerate(rows):
        input_ids[i, : len(ids)], types[i, : len(ids)], attention[i, : len(ids)] = torch.tensor(ids), torch.tensor(tt), 1
    input_ids, types, attention = input_ids.to(device), types.to(device), attention.to(device)
    hidden = model.encode(input_ids, types, attention)
    return torch.softmax(model.alignment_logits(hidden, types, attention).float(), dim=-1)[:, 0].cpu().numpy()


def score_matrix(model: torch.nn.Module, tokenizer: Any, vocab: JointVocab, captions: Sequence[str],
                 videos: Sequence[np.ndarray], *, max_seq_len: int, device: torch.device | str = "cpu",
                 batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """(S, S) P(aligned) of caption i with video j; this rank's share of the rows, assembled on all."""
    from tqdm import tqdm

    texts = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    rank, world_size = distributed.world()
    mine = distributed.share(list(captions), rank, world_size)
    pairs = [(i, j) for i in mine for j in range(len(videos))]
    scores = np.zeros(len(pairs), np.float32)
    for start in tqdm(range(0, len(pairs), batch_size), desc="retrieval", unit="batch", disable=not progress):
        chunk = pairs[start : start + batch_size]
        rows = [pair_rows(vocab, texts[i], videos[j], max_seq_len) for i, j in chunk]
        scores[start : start + len(chunk)] = aligned_probabilities(model, vocab, rows, torch.device(device))
    matrix = np.zeros((len(captions), len(videos)), np.float32)
    for i, j, p in distributed.gather_lists([(i, j, float(p)) for (i, j), p in zip(pairs, scores)]):
        matrix[i, j] = p
    return matrix


def masked_word_scores(classifier: Any, captions: Sequence[str], videos: Sequence[np.ndarray],
                       batch_size: int = 32) -> np.ndarray:
    """(S, S) log P(caption i's verb) + log P(its noun) at the template's masks given video j;
    ``classifier``: a ``ZeroShotClassifier``. -inf for a caption without a vocabulary verb or noun."""

    labels = classifier.labels
    columns = {"verb": [], "noun": []}
    for start in range(0, len(videos), batch_size):
        scored = classifier.score(list(videos[start : start + batch_size]))
        for slot in columns:
            columns[slot].append(scored[slot].numpy())
    per_video = {slot: np.concatenate(parts) for slot, parts in columns.items()}  # (S, classes)
    matrix = np.full((len(captions), len(videos)), -np.inf)
    for i, caption in enumerate(captions):
        verb, noun = words_of_sentence(caption, labels)
        found = [per_video[slot][:, getattr(labels, slot + "s").index(word)]
                 for slot, word in (("verb", verb), ("noun", noun)) if word is not None]
        if found:
            matrix[i] = np.sum(found, axis=0)
    return matrix


def first_correct_ranks(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """1-based rank of each query's best-scored correct item; ties with wrong items count against it.
    ``scores``, ``correct``: (queries, items)."""
    best = np.where(correct, scores, -np.inf).max(axis=1)
    return 1 + ((scores >= best[:, None]) & ~correct).sum(axis=1)


def chance_recall(items: int, correct: np.ndarray, k: int) -> float:
    """Mean over queries of P(first correct item within the top k) under a random ranking."""
    k = min(k, items)
    return float(np.mean([1.0 - comb(items - int(c), k) / comb(items, k) for c in correct]))


def retrieval_metrics(scores: np.ndarray, captions: Sequence[str]) -> dict[str, Any]:
    """R@K, median rank, their intervals and their chance levels for both directions of the (S, S) ``scores``."""
    normal = [" ".join(c.lower().split()) for c in captions]
    same = np.array([[a == b for b in normal] for a in normal])  # (S, S): identical captions
    counts = same.sum(axis=1)
    out: dict[str, Any] = {"segments": len(captions), "distinct_captions": len(set(normal))}
    for direction, matrix in (("text_to_video", scores), ("video_to_text", scores.T)):
        ranks = first_correct_ranks(matrix, same)
        row: dict[str, Any] = {}
        for k in RECALL_AT:
            row[f"r{k}"] = float(np.mean(ranks <= k))
            row[f"r{k}_ci"] = intervals.as_list(intervals.recall_interval(ranks, k))
        row |= {f"r{k}_chance": chance_recall(len(captions), counts, k) for k in RECALL_AT}
        row["median_rank"] = float(np.median(ranks))
        row["median_rank_ci"] = intervals.as_list(intervals.median_interval(ranks))
        row["median_rank_chance"] = float(np.median((len(captions) + 1) / (counts + 1)))
        out[direction] = row
    return out


def examples(scores: np.ndarray, captions: Sequence[str], keys: Sequence[str], count: int = 4, top: int = 4) -> list[dict[str, Any]]:
    """Text -> video for ``count`` queries spread over the set: the ``top`` videos retrieved, whether
    each is correct, and the rank of the first correct one."""
    normal = [" ".join(c.lower().split()) for c in captions]
    picks = np.unique(np.linspace(0, len(captions) - 1, min(count, len(captions))).round().astype(int))
    out = []
    for i in picks:
        order = np.argsort(-scores[i], kind="stable")[:top]
        correct = np.array([normal[j] == normal[i] for j in range(len(captions))])
        out.append({"caption": captions[i], "key": keys[i], "retrieved": [keys[j] for j in order],
                    "correct": [bool(correct[j]) for j in order], "probabilities": [float(scores[i, j]) for j in order],
                    "rank": int(first_correct_ranks(scores[i : i + 1], correct[None])[0])})
    return out


RANKINGS = (("alignment head", None), ("masked words", "masked_words"))
"""(label, key of its metrics in the results; None: the top level) of each ranking."""
