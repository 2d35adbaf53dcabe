"""Action labels for zero-shot classification: the verb and the noun that each evaluated segment shows.

Two files describe them.

The label vocabulary (``read_vocabulary``): a JSON object ``{"verbs": [...], "nouns": [...]}``, the
classes a prediction is restricted to (the synthetic corpus writes it as ``vocabulary.json``; for real
data, write your own list). Entries are matched lower-cased; an entry may be several words or several
WordPieces (``trainer.evaluation.zeroshot`` explains how those are scored).

The per-segment labels (``read_labels``), in either of two forms, told apart by their content:

* JSON lines, one segment per line: ``{"video": ID, "start": s, "end": e, "verb": V, "noun": N}``
  (the synthetic corpus's ``labels.jsonl``; other fields are ignored). The simplest way to label
  real data.
* YouCook2-form annotations: ``{"database": {ID: {"annotations": [{"segment": [s, e],
  "sentence": ..., "verb": V, "noun": N}, ...]}}}``. ``verb``/``noun`` are optional: where absent
  they are read from the sentence, as the first verb of the vocabulary that occurs in it and the
  first noun that occurs after that verb (a word lookup standing in for the paper's part-of-speech
  tagger). A segment whose sentence names no vocabulary verb or noun is listed, never guessed.

Labels whose verb or noun is not in the vocabulary are listed too. An evaluated sample takes the
label of the segment of its video whose time span overlaps its own most, provided the overlap
covers at least half of the shorter of the two spans (``LabelIndex.find``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from videobert.models.errors import VideoBertError

MIN_OVERLAP = 0.5
"""Share of the shorter span that a sample and a labelled segment must share."""


class LabelError(VideoBertError, ValueError):
    """A labels or vocabulary file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class LabelVocabulary:
    """The classes: verbs and nouns, lower case, each once, in file order."""

    verbs: tuple[str, ...]
    nouns: tuple[str, ...]

    def __post_init__(self) -> None:
        for name, words in (("verbs", self.verbs), ("nouns", self.nouns)):
            if not words:
                raise LabelError(f"the label vocabulary has no {name}")
            if len(set(words)) != len(words):
                raise LabelError(f"the label vocabulary lists some {name} twice: {sorted(words)}")


@dataclass(frozen=True)
class SegmentLabel:
    video: str
    start: float
    end: float
    verb: str
    noun: str


@dataclass
class LabelIndex:
    """Labelled segments by video, and what could not be used (``problems``: one dict per segment)."""

    by_video: dict[str, list[SegmentLabel]] = field(default_factory=lambda: defaultdict(list))
    problems: list[dict[str, Any]] = field(default_factory=list)
    read: int = 0
    """Segments found in the file (kept + listed in ``problems``)."""

    @property
    def kept(self) -> int:
        return sum(len(v) for v in self.by_video.values())

    def find(self, video: str, start: float, end: float) -> SegmentLabel | None:
        """The label of the segment of ``video`` that overlaps [start, end] most (see module doc)."""
        best, best_share = None, 0.0
        for label in self.by_video.get(video, ()):
            overlap = min(end, label.end) - max(start, label.start)
            shorter = max(min(end - start, label.end - label.start), 1e-9)
            if overlap / shorter > best_share:
                best, best_share = label, overlap / shorter
        return best if best_share >= MIN_OVERLAP else None


def read_vocabulary(path: str | Path) -> LabelVocabulary:
    """The label vocabulary of a JSON file ``{"verbs": [...], "nouns": [...]}``."""
    data = _load_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("verbs", "nouns")):
        raise LabelError(f"{path}: a label vocabulary is a JSON object with lists \"verbs\" and \"nouns\"")
    words = {k: tuple(_normal(w) for w in data[k]) for k in ("verbs", "nouns")}
    try:
        return LabelVocabulary(**words)
    except LabelError as e:
        raise LabelError(f"{path}: {e}") from None


def read_labels(path: str | Path, vocabulary: LabelVocabulary) -> LabelIndex:
    """Per-segment labels from labels JSON lines or YouCook2-form annotations (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"labels file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None  # JSON lines: one document per line
    # A file of one JSON line parses as a single document too: it is JSON lines when it is a segment.
    youcook2 = isinstance(document, dict) and "video" not in document
    rows = _youcook2_rows(path, document) if youcook2 else _jsonl_rows(path, text)
    index = LabelIndex()
    for where, row in rows:
        index.read += 1
        label, problem = _label(row, vocabulary)
        if label is None:
            index.problems.append({"input": f"{path}:{where}", "video": str(row.get("video", "?")), "reason": problem})
        else:
            index.by_video[label.video].append(label)
    if not index.kept:
        raise LabelError(f"{path}: none of its {index.read} segments has a usable label; first problems: "
                         f"{[p['reason'] for p in index.problems[:3]]}")
    return index


def _load_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LabelError(f"{path} is not valid JSON: {e}") from None


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LabelError(f"{path}:{number}: neither a YouCook2 annotation file nor JSON lines ({e})") from None
        yield f"line {number}", row if isinstance(row, dict) else {}


def _youcook2_rows(path: Path, document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    database = document.get("database")
    if not isinstance(database, dict):
        raise LabelError(f"{path}: a YouCook2 annotation file has an object \"database\" of video ids")
    for video, entry in database.items():
        annotations = entry.get("annotations") if isinstance(entry, dict) else None
        for i, item in enumerate(annotations if isinstance(annotations, list) else []):
            item = item if isinstance(item, dict) else {}
            segment = item.get("segment")
            span = segment if isinstance(segment, list) and len(segment) == 2 else (None, None)
            yield f"{video} annotation {i}", {"video": video, "start": span[0], "end": span[1], "verb": item.get("verb"),
                                              "noun": item.get("noun"), "sentence": item.get("sentence")}


def _label(row: dict[str, Any], vocabulary: LabelVocabulary) -> tuple[SegmentLabel | None, str]:
    try:
        start, end = float(row["start"]), float(row["end"])
    except (KeyError, TypeError, ValueError):
        return None, "no numeric start and end"
    if not end > start:
        return None, f"empty time span [{start}, {end}]"
    verb, noun = row.get("verb"), row.get("noun")
    if (verb is None or noun is None) and isinstance(row.get("sentence"), str):
        found_verb, found_noun = words_of_sentence(row["sentence"], vocabulary)
        verb, noun = verb or found_verb, noun or found_noun
    if not isinstance(verb, str) or not isinstance(noun, str):
        return None, "no verb and noun given, and none of the vocabulary's found in its sentence"
    verb, noun = _normal(verb), _normal(noun)
    missing = [f"{kind} {word!r}" for kind, word, known in (("verb", verb, vocabulary.verbs), ("noun", noun, vocabulary.nouns))
               if word not in known]
    if missing:
        return None, f"{' and '.join(missing)} not in the label vocabulary"
    return SegmentLabel(video=str(row["video"]), start=start, end=end, verb=verb, noun=noun), ""


def words_of_sentence(sentence: str, vocabulary: LabelVocabulary) -> tuple[str | None, str | None]:
    """The first vocabulary verb in ``sentence`` and the first vocabulary noun after it (or None)."""
    words = _normal(sentence).replace(",", " ").replace(".", " ").split()
    verb_at = _first(words, vocabulary.verbs, 0)
    if verb_at is None:
        return None, None
    noun_at = _first(words, vocabulary.nouns, verb_at[0] + len(verb_at[1].split()))
    return verb_at[1], noun_at[1] if noun_at else None


def _first(words: list[str], phrases: tuple[str, ...], start: int) -> tuple[int, str] | None:
    for i in range(start, len(words)):
        for phrase in phrases:
            parts = phrase.split()
            if words[i : i + len(parts)] == parts:
                return i, phrase
    return None


def _normal(word: Any) -> str:
    return " ".join(str(word).lower().split())
