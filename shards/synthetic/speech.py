"""Speech-like transcripts for the synthetic corpus, as an ASR system would deliver them.

Most segments get one sentence that names the verb and the noun in one of many phrasings; one of
them is exactly the zero-shot evaluation template ``now let me show you how to {verb} the {noun}``.
Some name only the verb ("see how i stir it") or only the noun ("now the lemon"), some segments get
no sentence, some sentences are split in two, some announce the next step early, and filler
sentences unrelated to the picture ("welcome back to my kitchen") come at the start, the end and in
between. Timestamps are jittered away from the true segment boundaries (never exactly on one), sorted
and never overlapping, like ASR output. Text is lower case without punctuation, as in HowTo100M.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEMPLATE = "now let me show you how to {verb} the {noun}"

BOTH = (
    "next we {verb} the {noun}",
    "{verb} the {noun} like this",
    "now i am going to {verb} the {noun}",
    "let's {verb} the {noun}",
    "you want to {verb} the {noun} nice and slowly",
    "then you just {verb} the {noun}",
    "okay so we {verb} the {noun} now",
    "here i {verb} the {noun}",
    "it is time to {verb} the {noun}",
    "go ahead and {verb} the {noun}",
    "i always {verb} the {noun} at this point",
    "and now we {verb} the {noun} again",
)
VERB_ONLY = (
    "see how i {verb} it",
    "{verb} it a little more",
    "you can {verb} it like that",
    "just {verb} it",
)
NOUN_ONLY = (
    "now the {noun}",
    "take your {noun}",
    "this {noun} looks really good",
)
FOLLOW_UP = (
    "just like that",
    "see how i {verb} it",
    "keep going",
    "{verb} it until it looks right",
    "nice and easy",
)
LOOKAHEAD = (
    "after that we {verb} the {noun}",
    "in a minute we will {verb} the {noun}",
)
INTRO = (
    "hi everyone welcome back to my kitchen",
    "welcome back to my kitchen",
    "hey guys today we are making something simple",
    "hello and welcome",
)
OUTRO = (
    "thanks for watching",
    "don't forget to subscribe",
    "let me know in the comments how it went",
    "so that's it for today",
)
FILLER = (
    "okay",
    "alright",
    "my kids love this one",
    "you can find the recipe below",
    "hit the like button",
    "it smells amazing already",
    "this is one of my favourite recipes",
    "don't forget to subscribe",
)

# How a segment is spoken about: (kind, probability).
_KINDS = (("template", 0.25), ("both", 0.45), ("verb", 0.10), ("noun", 0.08), ("silent", 0.12))

MIN_JITTER = 0.05
"""Seconds: no caption timestamp lies closer than this to the segment boundary it was jittered from."""


@dataclass(frozen=True)
class Sentence:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class SpokenSegment:
    """What the speech generator needs to know of a labelled segment."""

    start: float
    end: float
    verb: str
    noun: str


def transcript(segments: list[SpokenSegment], duration: float, rng: np.random.Generator) -> list[Sentence]:
    """Sentences for one video: sorted, non-overlapping, inside [0, duration]."""
    out: list[Sentence] = []
    cursor = 0.0
    if rng.random() < 0.6:
        cursor = _place(out, _pick(rng, INTRO), rng.uniform(0.15, 0.5), rng.uniform(1.2, 2.0), cursor)
    outro = rng.uniform(1.0, 1.8) if rng.random() < 0.6 else 0.0
    for i, seg in enumerate(segments):
        following = segments[i + 1] if i + 1 < len(segments) else None
        limit = duration - outro - 0.1 if following is None else following.end - 0.5
        cursor = _speak_segment(out, seg, following, rng, cursor, limit)
    if outro:
        _place(out, _pick(rng, OUTRO), duration - outro, outro - 0.05, cursor)
    last = duration - 0.02  # never past the end of the video
    out = [Sentence(s.start, min(s.end, last), s.text) for s in out if min(s.end, last) - s.start >= 0.5]
    return _off_boundaries(out, segments)


def _off_boundaries(sentences: list[Sentence], segments: list[SpokenSegment]) -> list[Sentence]:
    """Round to centiseconds (as ASR output is) and move any time that landed on a boundary."""
    boundaries = {round(b, 2) for seg in segments for b in (seg.start, seg.end)}
    out = []
    for s in sentences:
        start, end = round(s.start, 2), round(s.end, 2)
        # Sentences are >= 0.5 s long with >= 0.05 s between them: nudging inwards keeps the order.
        start = round(start + 0.02, 2) if start in boundaries else start
        end = round(end - 0.02, 2) if end in boundaries else end
        out.append(Sentence(start, end, s.text))
    return out


def _speak_segment(
    out: list[Sentence], seg: SpokenSegment, following: SpokenSegment | None,
    rng: np.random.Generator, cursor: float, limit: float,
) -> float:
    """Append this segment's sentences; returns the new cursor (end of the last sentence)."""
    kind = _KINDS[rng.choice(len(_KINDS), p=[p for _, p in _KINDS])][0]
    start = seg.start + _jitter(rng, -0.6, 0.7)
    if rng.random() < 0.12:  # a filler before the step is named
        cursor = _place(out, _pick(rng, FILLER), max(cursor + 0.1, start), rng.uniform(0.8, 1.4), cursor)
        start = cursor + rng.uniform(0.05, 0.3)
    if kind == "silent":
        return cursor
    end = min(seg.end + _jitter(rng, -0.9, 0.4), limit)
    ahead = following is not None and rng.random() < 0.07
    if ahead:  # the speaker announces the next step before it starts
        end -= 1.3
    text = _phrase(kind, seg, rng)
    if rng.random() < 0.2 and end - start > 2.4:  # ASR breaks the sentence in two
        middle = start + (end - start) * rng.uniform(0.4, 0.6)
        cursor = _place(out, text, start, middle - start, cursor)
        follow = _pick(rng, FOLLOW_UP).format(verb=seg.verb)
        cursor = _place(out, follow, middle + rng.uniform(0.05, 0.3), end - middle, cursor)
    else:
        cursor = _place(out, text, start, end - start, cursor)
    if ahead:
        nxt = _pick(rng, LOOKAHEAD).format(verb=following.verb, noun=following.noun)
        cursor = _place(out, nxt, cursor + rng.uniform(0.1, 0.3), 1.1, cursor)
    return cursor


def _phrase(kind: str, seg: SpokenSegment, rng: np.random.Generator) -> str:
    pool = {"template": (TEMPLATE,), "both": BOTH, "verb": VERB_ONLY, "noun": NOUN_ONLY}[kind]
    return _pick(rng, pool).format(verb=seg.verb, noun=seg.noun)


def _place(out: list[Sentence], text: str, start: float, length: float, cursor: float) -> float:
    """Append a sentence starting no earlier than ``cursor``; too short a slot drops it."""
    start = max(start, cursor + 0.05)
    end = start + length
    if end - start >= 0.5:
        out.append(Sentence(float(start), float(end), text))
        return float(end)
    return cursor


def _jitter(rng: np.random.Generator, low: float, high: float) -> float:
    """A timing offset in [low, high] that is never within ``MIN_JITTER`` of zero."""
    value = rng.uniform(low, high)
    return value if abs(value) >= MIN_JITTER else float(np.copysign(MIN_JITTER + abs(value), value))


def _pick(rng: np.random.Generator, pool: tuple[str, ...]) -> str:
    return pool[rng.integers(len(pool))]
