"""One transcript file as its readers see it: located caption entries, the problems found, the line
model of text formats, and the names of the formats. Every reader (``shards.transcripts`` for the
line formats and the entry point, ``shards.transcripts_json`` for the JSON formats) builds on these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videobert.shards.parts import Part

HOWTO100M = "howto100m"


YOUCOOK2 = "youcook2"


VTT = "vtt"


SRT = "srt"


JSONL = "jsonl"


FORMATS = (HOWTO100M, YOUCOOK2, VTT, SRT, JSONL)


VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".flv", ".mpg", ".mpeg", ".ts", ".wmv", ".3gp", ".ogv",
)


# What an errors.jsonl line says happened to the input it describes.
SKIPPED = "skipped"  # lost: the segments the line accounts for are not written


TRIMMED = "trimmed"  # kept, start moved past an overlap


CLIPPED = "clipped"  # kept, cut at 0 s or at the end of the video


SORTED = "sorted"  # kept, put in time order


ACTIONS = (SKIPPED, TRIMMED, CLIPPED, SORTED)


@dataclass(frozen=True, slots=True)
class Segment:
    """One caption segment of one video, after the per-video fixes (see the module docstring)."""

    video_id: str
    index: int
    """Position in the video's time-sorted segment list (the sample key's segment number)."""
    start: float
    """Seconds; after clipping at 0 and trimming an overlap (see the module docstring)."""
    end: float
    text: str
    """Whitespace-normalised caption text."""
    source: str
    """The transcript it came from: file name and format, e.g. ``caption.json (howto100m)``."""


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One line of ``errors.jsonl``: an input, or part of one, that was fixed or could not be used."""

    input: str
    """The file the problem is in (a transcript or a video)."""
    video_id: str | None
    segment: int | None
    """The segment's ``index``; None for whole videos or files, and for entries that could not be placed."""
    reason: str
    """What and where, in words a person understands."""
    action: str = SKIPPED
    """``skipped`` (lost) or a fix that kept the input: ``trimmed``, ``clipped``, ``sorted``."""
    segments: int = 1
    """Caption segments this line accounts for (lines with ``skipped`` add up to the segments lost)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input, "video_id": self.video_id, "segment": self.segment,
            "reason": self.reason, "action": self.action, "segments": self.segments,
        }


def video_id_of(reference: str) -> str:
    """The video id a manifest's ``video`` value names: a path's file name without extension, else itself."""
    if "/" in reference or "\\" in reference or reference.lower().endswith(VIDEO_EXTENSIONS):
        return Path(reference.replace("\\", "/")).stem
    return reference


@dataclass(slots=True)
class Entry:
    """A located, well-formed caption entry before normalisation."""

    video_id: str
    start: float
    end: float
    text: str


@dataclass
class ParsedFile:
    """What one file gave (for one part): entries per video, problems, and how many entries were located."""

    input: str
    """The file, as named by the caller."""
    fmt: str | None
    part: Part = field(default_factory=Part)
    entries: dict[str, list[Entry]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    located: int = 0
    unusable: bool = False
    """True when none of the file's captions can be used (the problem says why)."""
    video_id: str | None = None
    """The video of a per-video file (VTT, SRT); None for files of many videos."""

    def owns(self, video_id: str | None) -> bool:
        """Whether this part reads ``video_id``'s captions (None: facts of no one video, part 0's)."""
        return self.part.first if video_id is None else self.part.owns_video(video_id)

    def locate(self, video_id: str | None, count: int = 1) -> None:
        if self.owns(video_id):
            self.located += count

    def add(self, entry: Entry) -> None:
        self.entries.setdefault(entry.video_id, []).append(entry)

    def skip(self, video_id: str | None, reason: str, segments: int = 1) -> None:
        if self.owns(video_id):
            self.problems.append(Problem(input=self.input, video_id=video_id, segment=None, reason=reason,
                                         segments=segments))

    def reject(self, reason: str, video_id: str | None = None) -> None:
        """The whole file is unusable: forget what was read from it and say why."""
        self.entries.clear()
        self.problems.clear()
        self.located = 0
        self.unusable = True
        self.skip(video_id if video_id is not None else self.video_id,
                  f"{reason}; none of the file's captions are used", segments=0)

    def reset(self, fmt: str) -> None:
        """Start over as another format (a JSON file found to be YouCook2's)."""
        self.entries.clear()
        self.problems.clear()
        self.located = 0
        self.fmt = fmt


def add_entry(parsed: ParsedFile, path: Path, video_id: str, label: str, start: Any, end: Any, text: Any,
              bad_text: tuple[bool, int | None]) -> None:
    """Validate one entry's values; add it or report it."""
    if is_time(start) and is_time(end) and isinstance(text, str) and not bad_text[0]:
        parsed.add(Entry(video_id, float(start), float(end), text))
        return
    where = f"{label} of {video_id} in {path.name}"
    if not (is_time(start) and is_time(end)):
        parsed.skip(video_id, f"{where}: start and end must be finite numbers of seconds, got {_shown(start)} and "
                    f"{_shown(end)}")
        return
    where += f" ({span(start, end)})"
    if not isinstance(text, str):
        parsed.skip(video_id, f"{where}: text must be a string, got {type(text).__name__}")
    elif bad_text[0] and bad_text[1] is None:
        parsed.skip(video_id, f"{where}: text is not valid Unicode (invalid UTF-8 or an unpaired surrogate escape)")
    elif bad_text[0]:
        parsed.skip(video_id, f"{where}: text has invalid UTF-8{at_offset(bad_text[1])}")
    else:
        parsed.add(Entry(video_id, float(start), float(end), text))


def is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "a number too large for seconds"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def at_offset(offset: int | None) -> str:
    return f" at byte offset {offset}" if offset is not None else ""


def seconds(value: float) -> str:
    """A time for messages: millisecond precision, trailing zeros dropped (``12.0``, ``11.5``, ``1.234``)."""
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def span(start: float, end: float) -> str:
    return f"{seconds(start)}-{seconds(end)} s"


@dataclass(frozen=True)
class Line:
    number: int
    """1-based line number."""
    offset: int
    """Byte offset of the line's first character in the file."""
    text: str
    """The line; undecodable bytes kept as lone surrogates."""
    bad_offset: int | None
    """Byte offset (in the file) of the line's first undecodable byte; None when the line is valid UTF-8."""


def decode_line(raw: bytes, number: int, offset: int) -> Line:
    """One line of a file (``raw`` without its ``\\n``; a ``\\r`` before it and a first line's BOM go)."""
    body = raw[:-1] if raw.endswith(b"\r") else raw
    start = offset
    if number == 1 and body.startswith(b"\xef\xbb\xbf"):
        body, start = body[3:], offset + 3
    try:
        return Line(number, start, body.decode("utf-8"), None)
    except UnicodeDecodeError as e:
        return Line(number, start, body.decode("utf-8", errors="surrogateescape"), start + e.start)
