"""Reference sentences for the synthetic corpus's labelled segments: what a person would say they see.

The renderer knows everything a segment shows: the verb and the noun, the object's colour and size,
where it rests, how it moves and how fast, and the video's background (colour, texture, lighting).
``describe`` turns that into one sentence of six or more words in the imperative form of YouCook2's
annotations ("stir the red tomato slowly in circles on the left"), its phrasing drawn from several
forms, so that captioning metrics can tell a captioner that sees the video from one that only knows
what sentences usually look like. Every sentence holds the verb and the noun as bare words, so that
``trainer.evaluation.labels.words_of_sentence`` reads the same labels back from it.
"""

from __future__ import annotations

import numpy as np

from videobert.shards.synthetic.scene import NOUNS, VERB_RANGES, Action, Background

MOTION = {
    "stir": ("in circles", "around in a circle", "round and round"),
    "shake": ("from side to side", "back and forth", "to and fro"),
    "roll": ("across the table", "along the board", "back and forth across the table"),
    "flip": ("over and back", "over a few times", "upside down and back"),
    "lift": ("up and down", "up off the table", "up and put it down"),
    "slice": ("into two halves", "in half", "into two pieces"),
}
"""How each verb's motion reads in words (``shards.synthetic.scene.motion_track`` draws it)."""

FAST = ("quickly", "fast", "briskly")
SLOW = ("slowly", "gently", "calmly")

BACKGROUND_NAMES = ("grey blue", "light grey", "slate", "pale steel", "dusk blue", "white", "charcoal", "mid grey")
"""Names of ``shards.synthetic.scene.BACKGROUNDS``, in its order."""
TEXTURE_NAMES = {"plain": "plain", "stripes": "striped", "checker": "checkered", "blotches": "blotchy"}

FORMS = (
    "{verb} the {colour} {noun} {speed} {motion} {place}",
    "{verb} the {size} {colour} {noun} {motion} {speed}",
    "{place} {verb} the {colour} {noun} {motion}",
    "{speed} {verb} the {colour} {noun} {motion} on the {background} board",
    "{verb} the {colour} {noun} {motion} on a {texture} {background} surface",
    "now {verb} the {colour} {noun} {speed} {place}",
)
"""Sentence forms; each has at least six words once filled."""


def describe(action: Action, background: Background, rng: np.random.Generator) -> str:
    """One sentence for a segment showing ``action`` over ``background`` (see module doc)."""
    words = {
        "verb": action.verb, "noun": action.noun, "colour": NOUNS[action.noun][1],
        "size": "small" if action.radius < 0.14 else "big",
        "speed": _pick(rng, FAST if _is_fast(action) else SLOW),
        "motion": _pick(rng, MOTION[action.verb]),
        "place": place(action),
        "background": BACKGROUND_NAMES[background.palette],
        "texture": TEXTURE_NAMES[background.texture],
    }
    return " ".join(_pick(rng, FORMS).format(**words).split())


def _is_fast(action: Action) -> bool:
    """In the quicker half of its verb's range: a shorter period, or for a roll a higher speed."""
    (p_lo, p_hi), (a_lo, a_hi) = VERB_RANGES[action.verb]
    if p_hi > p_lo:
        return action.period < (p_lo + p_hi) / 2
    return action.amplitude > (a_lo + a_hi) / 2


def place(action: Action) -> str:
    """Where the object rests: left, right or middle of the frame (a roll crosses it)."""
    if action.verb == "roll":
        return "near the top" if action.centre[1] < 0.4 else "near the bottom" if action.centre[1] > 0.6 else "in the middle"
    x = action.centre[0]
    return "on the left" if x < 0.42 else "on the right" if x > 0.58 else "in the middle"


def _pick(rng: np.random.Generator, pool: tuple[str, ...]) -> str:
    return pool[rng.integers(len(pool))]
