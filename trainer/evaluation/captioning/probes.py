"""Linear probes: how well a logistic regression reads the verb and the noun from frozen features.

A probe is scikit-learn's ``LogisticRegression`` (multinomial, L2) on standardised features, fitted on
the labelled training segments and scored on the held-out ones, one per (features, label slot). The
rows compare the clip encoder's features with VideoBERT's (``trainer.evaluation.captioning.features``) on the
same segments; beside them, the best constant guess (the held-out share of the most frequent label).
Each accuracy has its Wilson 95 % interval over the held-out segments (``<slot>_ci``).
Segments without a label (``trainer.evaluation.labels.LabelIndex.find``) are left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from videobert.trainer.evaluation import intervals
from videobert.trainer.evaluation.captioning.features import LabelledSegment
from videobert.trainer.evaluation.labels import LabelIndex, LabelVocabulary

SLOTS = ("verb", "noun")


@dataclass(frozen=True)
class ProbeLabels:
    """Class indices per slot for the labelled segments of a set, and which segments those are."""

    rows: np.ndarray
    """Indices of the labelled segments."""
    classes: dict[str, np.ndarray]
    unlabelled: int


def probe_labels(segments: Sequence[LabelledSegment], labels: LabelIndex, vocabulary: LabelVocabulary) -> ProbeLabels:
    found = [(i, labels.find(s.video, s.start, s.end)) for i, s in enumerate(segments)]
    kept = [(i, lb) for i, lb in found if lb is not None]
    return ProbeLabels(
        rows=np.array([i for i, _ in kept], dtype=np.int64),
        classes={"verb": np.array([vocabulary.verbs.index(lb.verb) for _, lb in kept], dtype=np.int64),
                 "noun": np.array([vocabulary.nouns.index(lb.noun) for _, lb in kept], dtype=np.int64)},
        unlabelled=len(found) - len(kept),
    )


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression fitted on standardised training features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        return float(np.mean(test_y == train_y[0]))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


def run_probes(features: Mapping[str, tuple[np.ndarray, np.ndarray]], train: ProbeLabels, test: ProbeLabels,
               seed: int = 0) -> dict[str, dict[str, float | list[float]]]:
    """{features name: {"verb": acc, "noun": acc, "verb_ci": [low, high], "noun_ci": ...}} plus
    {"constant": ...}; ``features``: name -> (training matrix, held-out matrix) over all segments of each set."""
    out: dict[str, dict[str, float]] = {}
    for name, (train_x, test_x) in features.items():
        out[name] = {slot: probe_accuracy(train_x[train.rows], train.classes[slot], test_x[test.rows], test.classes[slot], seed)
                     for slot in SLOTS}
    out["constant"] = {slot: float(np.bincount(test.classes[slot]).max() / max(len(test.rows), 1)) for slot in SLOTS}
    n = len(test.rows)
    for accuracy in out.values():
        accuracy |= {f"{slot}_ci": intervals.as_list(intervals.wilson(round(accuracy[slot] * n), n)) for slot in SLOTS}
    return out
