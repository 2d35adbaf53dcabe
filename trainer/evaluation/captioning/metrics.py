"""Captioning metrics as the YouCook2 leaderboard states them: BLEU-3/4, METEOR, ROUGE-L, CIDEr (micro).

The scorers are the COCO caption evaluation code (``pycocoevalcap``), the reference implementation
that YouCook2's and the VideoBERT paper's numbers come from. "Micro" means one score over every
evaluated segment (BLEU and METEOR from n-gram and match counts pooled over the whole set, CIDEr's
document frequencies from the whole set) rather than a mean of per-video scores.

Sentences are tokenized by the Stanford PTB tokenizer (lower case, punctuation dropped) and METEOR
1.5 runs as its jar; both need a Java runtime. Without one, BLEU, ROUGE-L and CIDEr are computed on
a plain tokenization (lower case, split at spaces and punctuation: the same tokens the PTB tokenizer
gives for plain sentences), the scores say so (``tokenizer``), and METEOR is None: the tables print
"needs Java" in its column rather than a different METEOR.

95 % intervals (``trainer.evaluation.intervals``), a seeded bootstrap over the held-out segments:
BLEU is recomputed on each resample from the segments' own n-gram counts (its pooled formula, as
the COCO code computes it); ROUGE-L and CIDEr, whose corpus scores are means of per-segment scores,
by the mean of those scores (CIDEr's document frequencies stay those of the whole set). METEOR has
none: its corpus score comes from pooled alignment statistics that its scorer does not expose per
segment.

A row of a table may be scored from several captioners trained alike from different seeds
(``combine_captioners``): its scores are the captioners' mean, and its intervals, like those of a
paired difference of two rows (``paired_difference``), resample the captioners as well as the
segments (``intervals.two_level_interval``), so they cover another training of the captioners too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from videobert.trainer.evaluation import intervals

METRICS = ("bleu3", "bleu4", "meteor", "rouge_l", "cider")
"""Score names, in table order."""
METRIC_LABELS = {"bleu3": "BLEU-3", "bleu4": "BLEU-4", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr"}
PTB = "PTB (Stanford CoreNLP)"
PLAIN = "plain (no Java: lower case, split at spaces and punctuation)"
_PLAIN_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def plain_tokens(sentence: str) -> list[str]:
    """The plain tokenization: lower case, words and numbers, punctuation dropped."""
    return _PLAIN_TOKEN.findall(sentence.lower())


def java_available() -> bool:
    """True when a ``java`` executable is on the PATH (METEOR and the PTB tokenizer need it)."""
    return shutil.which("java") is not None


@dataclass(frozen=True)
class CaptionScores:
    """One row of a captioning table. Scores are fractions (BLEU, METEOR, ROUGE-L) or CIDEr's own
    scale; ``meteor`` is None without a Java runtime."""

    bleu3: float
    bleu4: float
    meteor: float | None
    rouge_l: float
    cider: float
    segments: int
    tokenizer: str
    intervals: dict[str, list[float]] = field(default_factory=dict)
    """95 % intervals by score name (no METEOR)."""
    captioners: int = 1
    """Captioners whose mean these scores are (``combine_captioners``)."""
    by_captioner: dict[str, list[float]] = field(default_factory=dict)
    """Each captioner's own score, by score name (one value when there is one captioner)."""
    per_segment: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    """The scores whose corpus figure is the mean of per-segment scores (ROUGE-L, CIDEr), as
    (captioners, segments) arrays, segments in the order of the references' keys (sorted): what a
    paired comparison of two rows over the same segments reads (``paired_difference``). Not part of
    ``as_dict``."""
    bleu_stats: np.ndarray | None = field(default=None, repr=False, compare=False)
    """(captioners, segments, 10) per-segment BLEU statistics (``bleu_statistics``)."""

    def as_dict(self) -> dict[str, float | int | str | list[float] | None]:
        out: dict[str, float | int | str | list[float] | None] = {}
        for name in METRICS:
            out[name] = getattr(self, name)
            if name in self.intervals:
                out[f"{name}_ci"] = self.intervals[name]
        by = {f"{name}_by_captioner": values for name, values in self.by_captioner.items()}
        return out | {"segments": self.segments, "tokenizer": self.tokenizer, "captioners": self.captioners} | by


class CaptionScorer:
    """Scores sets of candidate captions against references; one METEOR process serves every set.

    Use as a context manager (the METEOR process is closed at the end)::

        with CaptionScorer() as scorer:
            scores = scorer.score(references, candidates)   # {segment: [sentences]}, {segment: sentence}
    """

    def __init__(self, use_java: bool | None = None):
        self.java = java_available() if use_java is None else use_java
        self._meteor = None

    def start(self) -> None:
        """Start METEOR now (it loads its tables for seconds) so that it is ready when scoring begins."""
        if self.java and self._meteor is None:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()

    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._meteor is not None:
            meteor, self._meteor = self._meteor, None
            meteor.meteor_p.stdin.close()
            meteor.meteor_p.kill()
            meteor.meteor_p.wait()

    def tokenize(self, sentences: Mapping[str, list[str]]) -> dict[str, list[str]]:
        """Each key's sentences as space-joined tokens (PTB with Java, else the plain split)."""
        if not self.java:
            return {k: [" ".join(plain_tokens(s)) for s in v] for k, v in sentences.items()}
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with _quiet_stderr():  # the tokenizer's Java process reports its speed on stderr
            return PTBTokenizer().tokenize({k: [{"caption": s} for s in v] for k, v in sentences.items()})

    def score(self, references: Mapping[str, list[str]], candidates: Mapping[str, str]) -> CaptionScores:
        """Micro scores of ``candidates`` (one sentence per segment) against ``references``."""
        return self.score_sets(references, {"": candidates})[""]

    def score_sets(self, references: Mapping[str, list[str]], sets: Mapping[str, Mapping[str, str]]) -> dict[str, CaptionScores]:
        """``score`` for several sets of candidates of the same segments, tokenized in one pass."""
        keys = sorted(references)
        if not keys:
            raise ValueError("no segments to score")
        for name, candidates in sets.items():
            missing = sorted(set(keys) ^ set(candidates))
            if missing:
                raise ValueError(f"references and candidates {name!r} name different segments, e.g. {missing[:3]}")
        names = list(sets)
        sentences = {f"r{k}": list(references[k]) for k in keys}
        sentences |= {f"c{n}:{k}": [sets[name][k]] for n, name in enumerate(names) for k in keys}
        tokens = self.tokenize(sentences)
        gts = {k: tokens[f"r{k}"] for k in keys}
        return {name: self.score_tokenized(gts, {k: tokens[f"c{n}:{k}"] for k in keys}) for n, name in enumerate(names)}

    def score_tokenized(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> CaptionScores:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, rouge_each = Rouge().compute_score(gts, res)
        cider, cider_each = Cider().compute_score(gts, res)
        stats = bleu_statistics(gts, res)
        per_segment = {"rouge_l": np.asarray(rouge_each, np.float64)[None], "cider": np.asarray(cider_each, np.float64)[None]}
        return _with_intervals(CaptionScores(
            bleu3=float(bleu[2]), bleu4=float(bleu[3]), meteor=self._meteor_score(gts, res), rouge_l=float(rouge),
            cider=float(cider), segments=len(gts), tokenizer=PTB if self.java else PLAIN,
            by_captioner={"cider": [float(cider)]}, per_segment=per_segment, bleu_stats=stats[None]))

    def _meteor_score(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> float | None:
        if not self.java:
            return None
        self.start()
        score, _ = self._meteor.compute_score(gts, res)
        return float(score)


def _with_intervals(scores: CaptionScores) -> CaptionScores:
    """``scores`` with the 95 % intervals of its BLEU, ROUGE-L and CIDEr over its captioners and segments."""
    found = {"bleu3": intervals.two_level_bleu_interval(scores.bleu_stats, 3),
             "bleu4": intervals.two_level_bleu_interval(scores.bleu_stats, 4),
             "rouge_l": intervals.two_level_interval(scores.per_segment["rouge_l"]),
             "cider": intervals.two_level_interval(scores.per_segment["cider"])}
    return replace(scores, intervals={k: intervals.as_list(v) for k, v in found.items() if v is not None})


def combine_captioners(members: Sequence[CaptionScores]) -> CaptionScores:
    """One row's scores from its captioners' (trained alike from different seeds, scored on the same
    segments): each score is their mean, METEOR only when every captioner has one, and the intervals
    resample the captioners as well as the segments (``intervals.two_level_interval``)."""
    if not members:
        raise ValueError("no captioners to combine")
    if len(members) == 1:
        return members[0]
    if len({m.segments for m in members}) != 1 or len({m.tokenizer for m in members}) != 1:
        raise ValueError("captioners of one row must be scored on the same segments with the same tokens")
    meteors = [m.meteor for m in members]
    return _with_intervals(CaptionScores(
        bleu3=float(np.mean([m.bleu3 for m in members])), bleu4=float(np.mean([m.bleu4 for m in members])),
        meteor=None if any(v is None for v in meteors) else float(np.mean(meteors)),
        rouge_l=float(np.mean([m.rouge_l for m in members])), cider=float(np.mean([m.cider for m in members])),
        segments=members[0].segments, tokenizer=members[0].tokenizer, captioners=sum(m.captioners for m in members),
        by_captioner={"cider": [v for m in members for v in m.by_captioner["cider"]]},
        per_segment={k: np.concatenate([m.per_segment[k] for m in members]) for k in members[0].per_segment},
        bleu_stats=np.concatenate([m.bleu_stats for m in members])))


def paired_difference(better: CaptionScores, than: CaptionScores, metric: str = "cider") -> dict[str, Any]:
    """How sure the claim "``better`` scores above ``than``" is, for two rows scored on the same
    segments: the difference of their ``metric`` (a mean of per-segment scores, so the difference is
    the mean of per-segment differences) with a 95 % interval from a bootstrap that resamples the
    segments of both rows together (paired: what varies from segment to segment for both rows
    cancels) and, where a row has several captioners, that row's captioners too, and the verdict:
    ``holds`` when the interval lies above 0, ``reversed`` when below, else ``unresolved`` (the
    interval holds 0: these segments and captioners cannot tell the rows apart). With one captioner
    per row the interval is that of the segments drawn, given the two captioners as trained: another
    training of either can move the difference by more (``captioners`` says how many there were)."""
    a, b = better.per_segment.get(metric), than.per_segment.get(metric)
    if a is None or b is None or a.shape[1] != b.shape[1]:
        raise ValueError(f"a paired {metric} difference needs both rows' per-segment scores over the same segments")
    low, high = intervals.two_level_interval(a, minus=b) or (float("nan"), float("nan"))
    verdict = "holds" if low > 0 else "reversed" if high < 0 else "unresolved"
    by_captioner = [float(x.mean() - y.mean()) for x, y in zip(a, b)]
    return {"metric": metric, "difference": float(a.mean() - b.mean()), "difference_ci": [float(low), float(high)],
            "verdict": verdict, "captioners": [int(len(a)), int(len(b))], "difference_by_captioner": by_captioner}


def bleu_statistics(gts: Mapping[str, list[str]], res: Mapping[str, list[str]], n: int = 4) -> np.ndarray:
    """(segments, 2 + 2 n) BLEU statistics of each segment, as the COCO code's ``BleuScorer`` keeps
    them: candidate length, the closest reference length, then the candidate's n-grams and its
    clipped matches for each order (``intervals.bleu_from_stats`` pools them into BLEU)."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    rows = []
    for key in gts:
        refs = cook_refs(gts[key], n=n)
        comps = cook_test(res[key][0], refs, n=n)
        test = comps["testlen"]
        closest = min((abs(length - test), length) for length in refs[0])[1]
        rows.append([test, closest, *(x for k in range(n) for x in (comps["guess"][k], comps["correct"][k]))])
    return np.array(rows, np.float64).reshape(len(rows), 2 + 2 * n)


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 sent to /dev/null (child processes included) for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def format_score(name: str, value: float | None) -> str:
    """A table cell: percent for the fractions (as YouCook2 tables print them), CIDEr as it is."""
    if value is None:
        return "needs Java"
    return f"{value:.3f}" if name == "cider" else f"{100 * value:.2f}"
