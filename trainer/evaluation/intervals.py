"""95 % intervals for the evaluation's figures, deterministic so that ``results.json`` is reproducible.

Two kinds, chosen by what the figure is:

* a share of independent hits (an accuracy from ``correct`` and ``count``): the Wilson score
  interval (``wilson``), exact in form, never outside [0, 1], sensible at 0 and at ``count`` hits;
* anything else computed from per-unit values (ROC-AUC, balanced accuracy, R@K and median rank,
  the mean of per-segment caption scores, corpus BLEU from per-segment n-gram counts): a seeded
  percentile bootstrap over the units (``bootstrap`` and the helpers below), 1000 resamples by
  default, drawn by ``numpy.random.default_rng(seed)``.

Where a figure is also averaged over members trained alike from different seeds (the captioners of
a captioning row), the bootstrap has two levels (``two_level_interval``, ``two_level_bleu_interval``):
each resample draws the members with replacement as well as the units, so the interval covers
another training of the members and not only another draw of units.

The unit of each bootstrap is the one the figure is averaged over: the scored examples for the
held-out alignment figures (one example is one segment read with its own or another segment's
video), the query segments for retrieval (the set ranked against stays fixed), the held-out
segments for captioning. Every interval takes its units as independent draws; where units share
something (masked tokens of one segment, queries ranked against the same set of videos) the true
uncertainty is somewhat wider.

Results carry an interval as ``<key>_ci: [low, high]`` beside ``<key>``; a figure that has no units
to resample has no ``_ci`` key.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

Z95 = 1.959963984540054
"""The standard normal's 97.5th percentile: a two-sided 95 % interval."""
N_RESAMPLES = 1000
SEED = 0
_CHUNK_ELEMENTS = 1 << 22
"""Most resampled unit indices held at once (resamples are drawn in chunks of this size)."""


def wilson(correct: float, count: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of the proportion ``correct / count``; (0, 1) when ``count`` is 0 (no
    information)."""
    if count <= 0:
        return 0.0, 1.0
    p = correct / count
    z2 = z * z
    centre = (p + z2 / (2 * count)) / (1 + z2 / count)
    half = z / (1 + z2 / count) * math.sqrt(p * (1 - p) / count + z2 / (4 * count * count))
    # At p = 0 or 1 the bound is exactly 0 or 1 (rounding would leave it a hair inside the value)
    low = 0.0 if correct <= 0 else max(0.0, centre - half)
    high = 1.0 if correct >= count else min(1.0, centre + half)
    return low, high


def resample_indices(n_units: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(n_resamples, n_units) indices of units drawn with replacement; the same for the same
    arguments. Drawn in chunks, so that large sets need not hold them all at once
    (``resample_chunks``): this is their concatenation."""
    return np.concatenate(list(resample_chunks(n_units, n_resamples, seed)))


def resample_chunks(n_units: int, n_resamples: int = N_RESAMPLES, seed: int = SEED):
    """The rows of ``resample_indices`` in consecutive chunks."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_ELEMENTS // max(n_units, 1))
    for start in range(0, n_resamples, per_chunk):
        yield rng.integers(0, n_units, size=(min(per_chunk, n_resamples - start), n_units))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """The central ``level`` interval of the finite bootstrap ``values``; None when there are none."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], units: Sequence | np.ndarray, n_resamples: int = N_RESAMPLES,
              seed: int = SEED, level: float = 0.95, vectorised: bool = True) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` over ``units`` (an array whose first axis
    indexes the units: segments, examples, queries). ``vectorised``: ``statistic`` takes a batch of
    resamples, (resamples, units, ...), and returns one value per resample; otherwise it takes one
    resample, (units, ...), and returns a number. Resamples where the statistic is not finite (e.g.
    an AUC without one of the classes) are left out. None when there are no units."""
    units = np.asarray(units)
    if not len(units):
        return None
    values = []
    for idx in resample_chunks(len(units), n_resamples, seed):
        if vectorised:
            values.append(np.asarray(statistic(units[idx]), np.float64).reshape(len(idx)))
        else:
            values.append(np.array([statistic(units[row]) for row in idx], np.float64))
    return percentile_interval(np.concatenate(values), level)


def resample_counts(n_units: int, n_resamples: int = N_RESAMPLES, seed: int = SEED):
    """The resamples of ``resample_chunks`` as counts: chunks of (resamples, n_units), how many times
    each unit was drawn (the weights with which a resample counts each unit)."""
    for idx in resample_chunks(n_units, n_resamples, seed):
        yield _draw_counts(idx, n_units)


def _draw_counts(idx: np.ndarray, n_units: int) -> np.ndarray:
    """(resamples, n_units) counts of each unit in each row of drawn indices ``idx`` (resamples, draws)."""
    rows = np.arange(len(idx))[:, None] * n_units
    return np.bincount((idx + rows).ravel(), minlength=len(idx) * n_units).reshape(len(idx), n_units)


def bootstrap_mean(values: Sequence[float] | np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                   level: float = 0.95) -> tuple[float, float] | None:
    """Interval of the mean of per-unit ``values`` (e.g. per-segment CIDEr or ROUGE-L scores: the
    corpus figure is their mean)."""
    values = np.asarray(values, np.float64)
    return bootstrap(lambda batch: batch.mean(axis=1), values, n_resamples, seed, level)


def auc_interval(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray, n_resamples: int = N_RESAMPLES,
                 seed: int = SEED, level: float = 0.95) -> tuple[float, float] | None:
    """Interval of the ROC-AUC (ties count half) of ``scores`` for labels ``positive``, resampling
    the scored examples themselves (positives and negatives together, so that a resample's class
    balance varies as a new draw of examples would). Each resample is the Mann-Whitney statistic of
    the drawn examples, computed from the draw counts over the score-sorted examples, so no resample
    is sorted again. None when one class is absent."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive).astype(bool)
    if not positive.any() or positive.all():
        return None
    order = np.argsort(scores, kind="stable")
    ranked, is_pos = scores[order], positive[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # tie groups in increasing score order
    values = []
    for counts in resample_counts(len(scores), n_resamples, seed):
        counts = counts[:, order].astype(np.float64)
        pos = np.add.reduceat(counts * is_pos, starts, axis=1)  # (resamples, groups): drawn positives per tie group
        neg = np.add.reduceat(counts * ~is_pos, starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
        pairs = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            values.append((pos * (below + 0.5 * neg)).sum(axis=1) / pairs)
    return percentile_interval(np.concatenate(values), level)


def balanced_accuracy(predicted: np.ndarray, positive: np.ndarray, positive_weight: float = 0.5) -> float | None:
    """Mean of the recall on positives and on negatives; None when one class is absent. With
    ``positive_weight`` w: w x recall on positives + (1 - w) x recall on negatives, the accuracy the
    same decisions would have where a share w of the examples is positive."""
    predicted, positive = np.asarray(predicted).astype(bool), np.asarray(positive).astype(bool)
    if not positive.any() or positive.all():
        return None
    return float(positive_weight * predicted[positive].mean() + (1 - positive_weight) * (~predicted[~positive]).mean())


def balanced_accuracy_interval(predicted: Sequence[bool] | np.ndarray, positive: Sequence[bool] | np.ndarray,
                               n_resamples: int = N_RESAMPLES, seed: int = SEED,
                               level: float = 0.95, positive_weight: float = 0.5) -> tuple[float, float] | None:
    """Interval of ``balanced_accuracy``, resampling the examples (as ``auc_interval``)."""
    predicted, positive = np.asarray(predicted).astype(bool), np.asarray(positive).astype(bool)
    if not positive.any() or positive.all():
        return None
    values = []
    columns = np.stack([positive, ~positive, predicted & positive, ~predicted & ~positive], axis=1).astype(np.float64)
    for counts in resample_counts(len(positive), n_resamples, seed):
        pos, neg, hit_pos, hit_neg = (counts @ columns).T
        with np.errstate(invalid="ignore", divide="ignore"):
            values.append(positive_weight * hit_pos / pos + (1 - positive_weight) * hit_neg / neg)
    return percentile_interval(np.concatenate(values), level)


def recall_interval(ranks: Sequence[int] | np.ndarray, k: int, **kwargs) -> tuple[float, float] | None:
    """Interval of R@K, the share of queries whose first correct item ranks within ``k``, resampling
    the queries (``ranks``: one per query)."""
    return bootstrap_mean(np.asarray(ranks) <= k, **kwargs)


def median_interval(values: Sequence[float] | np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                    level: float = 0.95) -> tuple[float, float] | None:
    """Interval of the median of per-unit ``values`` (e.g. the median rank over queries)."""
    return bootstrap(lambda batch: np.median(batch, axis=1), np.asarray(values, np.float64), n_resamples, seed, level)


def corpus_bleu_interval(stats: np.ndarray, n: int, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                         level: float = 0.95) -> tuple[float, float] | None:
    """Interval of corpus BLEU-``n`` recomputed on every resample of the segments from their own
    n-gram counts. ``stats``: (segments, 2 + 2 * max n) per segment: candidate length, the
    reference length BLEU compares it with, then for each order 1..max n the candidate's n-grams and
    how many of them match (``bleu_from_stats`` has the formula). The one-captioner case of
    ``two_level_bleu_interval``."""
    return two_level_bleu_interval(np.asarray(stats)[None], n, n_resamples, seed, level)


def bleu_from_stats(totals: np.ndarray, n: int) -> np.ndarray:
    """Corpus BLEU-``n`` of summed segment statistics (..., 2 + 2 * max n), as the COCO caption code
    computes it: the geometric mean of the clipped n-gram precisions (with its tiny smoothing
    constants) times the brevity penalty exp(1 - reference length / candidate length) when the
    candidates are shorter."""
    tiny, small = 1e-15, 1e-9
    totals = np.asarray(totals, np.float64)
    test, ref = totals[..., 0], totals[..., 1]
    log_precision = sum(np.log((totals[..., 3 + 2 * k] + tiny) / (totals[..., 2 + 2 * k] + small)) for k in range(n))
    bleu = np.exp(log_precision / n)
    ratio = (test + tiny) / (ref + small)
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(ratio < 1, bleu * np.exp(1 - 1 / np.maximum(ratio, 1e-300)), bleu)


def member_shares(n_members: int, n_resamples: int = N_RESAMPLES, seed: int = SEED, stream: int = 0) -> np.ndarray:
    """(n_resamples, n_members): the share of each member (e.g. each of a row's captioners) in a
    resample of the members drawn with replacement (draws / n_members, so a row sums to 1). Drawn
    from their own generator (``stream`` keeps two sets of members apart), so that the draws of the
    units stay those of ``resample_chunks``; one member always has the share 1."""
    if n_members == 1:
        return np.ones((n_resamples, 1))
    idx = np.random.default_rng([seed, 0x3C3, stream]).integers(0, n_members, size=(n_resamples, n_members))
    return _draw_counts(idx, n_members) / n_members


def two_level_interval(values: np.ndarray, minus: np.ndarray | None = None, n_resamples: int = N_RESAMPLES,
                       seed: int = SEED, level: float = 0.95) -> tuple[float, float] | None:
    """Interval of the mean of ``values`` (members, units), less the mean of ``minus`` (members',
    same units) when given, resampling at two levels: the members of each array on their own (e.g.
    the captioners of a row, each trained from its own seed) and the units of both together (the
    held-out segments, paired). It covers another draw of units and another training of the
    members; with one member per array it is ``bootstrap_mean`` of the per-unit values (the same
    resamples). None when there are no units."""
    values = np.atleast_2d(np.asarray(values, np.float64))
    arrays = [values] if minus is None else [values, np.atleast_2d(np.asarray(minus, np.float64))]
    n_units = values.shape[1]
    if not n_units or any(a.shape[1] != n_units for a in arrays):
        return None
    shares = [member_shares(len(a), n_resamples, seed, stream) for stream, a in enumerate(arrays)]
    found, start = [], 0
    for idx in resample_chunks(n_units, n_resamples, seed):
        rows = slice(start, start + len(idx))
        start += len(idx)
        per_unit = shares[0][rows] @ arrays[0]  # (resamples, units): each unit's mean over the drawn members
        if minus is not None:
            per_unit = per_unit - shares[1][rows] @ arrays[1]
        found.append(np.take_along_axis(per_unit, idx, axis=1).mean(axis=1))
    return percentile_interval(np.concatenate(found), level)


def two_level_bleu_interval(stats: np.ndarray, n: int, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                            level: float = 0.95) -> tuple[float, float] | None:
    """Interval of the members' mean corpus BLEU-``n``: ``stats`` (members, segments, 2 + 2 * max n),
    each member's as ``corpus_bleu_interval`` (this with one member) reads them; each resample draws the
    members and the segments (as ``two_level_interval``) and recomputes every drawn member's BLEU
    from its own counts over the drawn segments."""
    stats = np.asarray(stats, np.float64)
    if not stats.shape[1]:
        return None
    shares = member_shares(len(stats), n_resamples, seed)
    found, start = [], 0
    for counts in resample_counts(stats.shape[1], n_resamples, seed):
        rows = slice(start, start + len(counts))
        start += len(counts)
        totals = np.einsum("rs,msk->rmk", counts.astype(np.float64), stats)  # (resamples, members, stats)
        found.append((shares[rows] * bleu_from_stats(totals, n)).sum(axis=1))
    return percentile_interval(np.concatenate(found), level)


def as_list(interval: tuple[float, float] | None) -> list[float] | None:
    """An interval as results.json stores it."""
    return None if interval is None else [float(interval[0]), float(interval[1])]
