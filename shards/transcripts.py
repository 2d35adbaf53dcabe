"""Transcript readers: caption segments per video from the formats instructional-video corpora ship.

Formats (``FORMATS``), told apart by extension and content, or named with ``fmt=``:

* ``howto100m``  HowTo100M ``caption.json``: ``{video_id: {"start": [...], "end": [...], "text": [...]}}``
* ``youcook2``   YouCook2 annotations: ``{"database": {video_id: {"annotations":
  [{"segment": [start, end], "sentence": "..."}, ...]}}}``
* ``vtt``        WebVTT, one file per video; the video id is the file name without its extension
* ``srt``        SubRip, one file per video; same id rule
* ``jsonl``      a manifest, one ``{"video": path-or-id, "start": s, "end": e, "text": t}`` per line;
  the video id is the file name without extension when ``video`` is a path, else ``video`` itself

A folder stands for the transcript files inside it (recursively, by extension). When two files give
captions for the same video id, the first (in argument order, folders sorted) is used and the other's
segments are reported.

Every segment located in a file is accounted for: it is returned (``Transcripts.segments``) or
reported (``Transcripts.problems``, one ``Problem`` per line of a stage's ``errors.jsonl``), so that
``segments_read == kept + sum(p.segments for skipped problems)``. The fixes, applied per video after
reading:

* segments are sorted by start time (noted once per video when the file had them out of order) and
  numbered in that order (``Segment.index``); entries unusable as read (invalid UTF-8, times that are
  not numbers) are reported before that and get no number;
* empty or whitespace-only text: skipped; ``end <= start``: skipped; a segment ending at or before 0 s:
  skipped; one starting before 0 s: clipped to start at 0; one lasting longer than ``max_segment_seconds``
  (default ``MAX_SEGMENT_SECONDS``): skipped before it can own any frame, so that an absurd end time
  (``1e300``, hours past the video) costs neither memory when its frames are cut nor the segments it
  would have covered;
* a segment overlapping the previous kept one is trimmed to start where that one ends, or skipped when
  nothing is left, so that every frame belongs to at most one segment.

Bad input: a file whose structure is broken (invalid JSON, a VTT without its ``WEBVTT`` line, a cue
timing line that does not parse) is reported with line and column and none of its captions are used.
Invalid UTF-8 costs only the entries or cues that contain it, reported with the byte offset of the first
bad byte; the whole file only when its structure cannot be read at all. JSONL lines are independent:
a line that is not valid JSON costs that line only.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOWTO100M = "howto100m"
YOUCOOK2 = "youcook2"
VTT = "vtt"
SRT = "srt"
JSONL = "jsonl"
FORMATS = (HOWTO100M, YOUCOOK2, VTT, SRT, JSONL)

TRANSCRIPT_EXTENSIONS = (".json", ".jsonl", ".ndjson", ".vtt", ".srt")
VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".flv", ".mpg", ".mpeg", ".ts", ".wmv", ".3gp", ".ogv",
)

MAX_SEGMENT_SECONDS = 300.0
"""Default longest caption segment, in seconds (5 minutes: speech captions last seconds, YouCook2 steps
under a few minutes; at 20 fps and 224 x 224 pixels, 300 s of frames are 0.9 GB, one sample's array)."""

# What an errors.jsonl line says happened to the input it describes.
SKIPPED = "skipped"  # lost: the segments the line accounts for are not written
TRIMMED = "trimmed"  # kept, start moved past an overlap
CLIPPED = "clipped"  # kept, cut at 0 s or at the end of the video
SORTED = "sorted"  # kept, put in time order
ACTIONS = (SKIPPED, TRIMMED, CLIPPED, SORTED)


@dataclass(frozen=True)
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


@dataclass
class Transcripts:
    """Everything read from a set of transcript inputs."""

    segments: dict[str, list[Segment]] = field(default_factory=dict)
    """Video id -> its usable segments, time-sorted, non-overlapping (ids in first-seen order)."""
    problems: list[Problem] = field(default_factory=list)
    """Per file, per video and per segment; ``video_id`` is None where no video could be named."""
    sources: dict[str, str] = field(default_factory=dict)
    """Video id -> the transcript file its segments came from."""
    files_read: int = 0
    files_skipped: int = 0
    """Files none of whose captions could be used (missing, unreadable, malformed, unknown format)."""
    segments_read: int = 0
    """Segments located in the files (kept, fixed or skipped)."""

    @property
    def segments_skipped(self) -> int:
        return sum(p.segments for p in self.problems if p.action == SKIPPED)


# ---------------------------------------------------------------------------------------------------
# Entry points


def read_transcripts(paths: Iterable[str | Path], fmt: str | None = None,
                     max_segment_seconds: float = MAX_SEGMENT_SECONDS) -> Transcripts:
    """Read transcript files and folders; ``fmt`` (one of ``FORMATS``) overrides detection; segments
    longer than ``max_segment_seconds`` are skipped (module docstring)."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown transcript format {fmt!r}; choose one of {', '.join(FORMATS)}")
    files, missing = list_transcript_files(paths)
    result = Transcripts(files_read=len(missing), files_skipped=len(missing))
    result.problems += [
        Problem(input=str(path), video_id=None, segment=None, reason=f"transcript file {path} not found", segments=0)
        for path in missing
    ]
    entries: dict[str, list[_Entry]] = {}
    labels: dict[str, str] = {}
    for path in files:
        parsed = parse_file(path, fmt)
        result.files_read += 1
        result.files_skipped += int(parsed.unusable)
        result.segments_read += parsed.located
        result.problems += parsed.problems
        _merge(parsed, entries, labels, result)
    for video_id, video_entries in entries.items():
        segments, problems = _normalize(video_id, video_entries, result.sources[video_id], labels[video_id],
                                        max_segment_seconds)
        result.segments[video_id] = segments
        result.problems += problems
    return result


def list_transcript_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(files named or inside the folders named, in order, folders sorted; paths that do not exist)."""
    files: list[Path] = []
    missing: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TRANSCRIPT_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            missing.append(path)
    return files, missing


def video_id_of(reference: str) -> str:
    """The video id a manifest's ``video`` value names: a path's file name without extension, else itself."""
    if "/" in reference or "\\" in reference or reference.lower().endswith(VIDEO_EXTENSIONS):
        return Path(reference.replace("\\", "/")).stem
    return reference


def detect_format(path: Path, data: bytes) -> str | None:
    """The format of a transcript file from its extension and first bytes; JSON objects give ``"json"``
    (told apart into ``howto100m`` / ``youcook2`` once parsed); None when nothing fits."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    suffix = path.suffix.lower()
    if head.startswith(b"WEBVTT") or suffix == ".vtt":
        return VTT
    if suffix == ".srt" or re.match(rb"\d+\s*\r?\n[^\n]*-->", head):
        return SRT
    if suffix in (".jsonl", ".ndjson") or _looks_like_jsonl(head):
        return JSONL
    if head.startswith(b"{") or suffix == ".json":
        return "json"
    return None


# ---------------------------------------------------------------------------------------------------
# One file


@dataclass
class _Entry:
    """A located, well-formed caption entry before normalisation."""

    video_id: str
    start: float
    end: float
    text: str


@dataclass
class ParsedFile:
    """What one file gave: entries per video, problems, and how many entries were located."""

    input: str
    """The file, as named by the caller."""
    fmt: str | None
    entries: dict[str, list[_Entry]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    located: int = 0
    unusable: bool = False
    """True when none of the file's captions can be used (the problem says why)."""

    def add(self, entry: _Entry) -> None:
        self.entries.setdefault(entry.video_id, []).append(entry)

    def skip(self, video_id: str | None, reason: str, segments: int = 1) -> None:
        self.problems.append(Problem(input=self.input, video_id=video_id, segment=None, reason=reason, segments=segments))

    def reject(self, reason: str, video_id: str | None = None) -> None:
        """The whole file is unusable: forget what was read from it and say why."""
        self.entries.clear()
        self.problems.clear()
        self.located = 0
        self.unusable = True
        self.skip(video_id, f"{reason}; none of the file's captions are used", segments=0)


def parse_file(path: Path, fmt: str | None = None) -> ParsedFile:
    """Parse one transcript file (format detected unless given)."""
    parsed = ParsedFile(input=str(path), fmt=fmt)
    try:
        data = path.read_bytes()
    except OSError as e:
        parsed.reject(f"cannot read transcript file {path}: {e.strerror or e}")
        return parsed
    parsed.fmt = fmt or detect_format(path, data)
    parser = _PARSERS.get(parsed.fmt or "")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        parsed.reject(f"{path} is UTF-16 encoded; transcripts must be UTF-8")
    elif parser is None:
        parsed.reject(
            f"cannot tell the transcript format of {path} (one of {', '.join(FORMATS)}; name it with --transcript-format)"
        )
    else:
        parser(path, data, parsed)
    return parsed


def _merge(parsed: ParsedFile, entries: dict[str, list[_Entry]], labels: dict[str, str], result: Transcripts) -> None:
    """Add a file's entries; a video id already given by an earlier file keeps that file's captions."""
    for video_id, video_entries in parsed.entries.items():
        if video_id in result.sources:
            result.problems.append(Problem(
                input=parsed.input, video_id=video_id, segment=None, segments=len(video_entries),
                reason=f"video {video_id} already has captions from {result.sources[video_id]}; "
                f"the {len(video_entries)} segments {parsed.input} gives for it are not used",
            ))
            continue
        result.sources[video_id] = parsed.input
        labels[video_id] = f"{Path(parsed.input).name} ({parsed.fmt})"
        entries[video_id] = video_entries


# ---------------------------------------------------------------------------------------------------
# Normalisation: order, validity, overlaps


def _normalize(
    video_id: str, entries: Sequence[_Entry], input_name: str, source: str, max_seconds: float = MAX_SEGMENT_SECONDS,
) -> tuple[list[Segment], list[Problem]]:
    """Sort a video's entries by time, number them, and apply the fixes of the module docstring.

    ``input_name`` is the transcript file (for problems), ``source`` the label segments carry.
    """
    order = sorted(range(len(entries)), key=lambda i: (entries[i].start, entries[i].end, i))
    problems: list[Problem] = []
    moved = sum(1 for position, i in enumerate(order) if position != i)
    if moved:
        problems.append(Problem(
            input=input_name, video_id=video_id, segment=None, action=SORTED, segments=moved,
            reason=f"{moved} of the {len(entries)} segments of {video_id} were out of time order; sorted by start time",
        ))
    kept: list[Segment] = []
    for index, i in enumerate(order):
        segment, problem = _check_segment(video_id, index, entries[i], kept[-1] if kept else None, input_name, source,
                                          max_seconds)
        if problem is not None:
            problems.append(problem)
        if segment is not None:
            kept.append(segment)
    return kept, problems


def _check_segment(
    video_id: str, index: int, entry: _Entry, previous: Segment | None, input_name: str, source: str,
    max_seconds: float = MAX_SEGMENT_SECONDS,
) -> tuple[Segment | None, Problem | None]:
    label = f"segment {index} of {video_id} ({span(entry.start, entry.end)})"

    def problem(reason: str, action: str = SKIPPED) -> Problem:
        return Problem(input=input_name, video_id=video_id, segment=index, reason=f"{label}: {reason}", action=action)

    text = " ".join(entry.text.split())
    if not text:
        return None, problem("text is empty")
    if entry.end <= entry.start:
        return None, problem("end <= start")
    if entry.end <= 0:
        return None, problem("ends at or before 0 s")
    length = entry.end - max(entry.start, 0.0)
    if length > max_seconds:
        shown = seconds(length) if length < 1e15 else f"{length:.3g}"
        return None, problem(f"lasts {shown} s, more than the longest segment allowed ({seconds(max_seconds)} s, "
                             "--max-segment-seconds)")
    start, fix = entry.start, None
    if start < 0:
        start, fix = 0.0, problem("starts before 0 s; clipped to start at 0 s", CLIPPED)
    if previous is not None and start < previous.end:
        if entry.end <= previous.end:
            return None, problem(
                f"lies inside segment {previous.index} ({span(previous.start, previous.end)}), "
                "which already owns its frames"
            )
        start = previous.end
        fix = problem(f"overlaps segment {previous.index}; trimmed to start at {seconds(start)} s", TRIMMED)
    return Segment(video_id, index, start, entry.end, text, source), fix


def seconds(value: float) -> str:
    """A time for messages: millisecond precision, trailing zeros dropped (``12.0``, ``11.5``, ``1.234``)."""
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def span(start: float, end: float) -> str:
    return f"{seconds(start)}-{seconds(end)} s"


# ---------------------------------------------------------------------------------------------------
# JSON formats (caption.json, YouCook2)

_SURROGATE = re.compile("[\udc80-\udcff]")  # what undecodable bytes become with surrogateescape
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # and what an escape like "\ud83d" alone becomes


def _lenient_decode(data: bytes) -> tuple[str, list[int]]:
    """``data`` as text, undecodable bytes kept as lone surrogates; and the byte offsets of those bytes."""
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="surrogateescape")
    offsets: list[int] = []
    byte_pos = char_pos = 0
    for match in _SURROGATE.finditer(text):
        byte_pos += len(text[char_pos : match.start()].encode("utf-8"))
        offsets.append(byte_pos)
        byte_pos += 1
        char_pos = match.end()
    return text, offsets


class _BadBytes:
    """The JSON strings that are not valid Unicode, with the byte offset of their first invalid UTF-8
    byte: strings are visited in document order, which is the order their undecodable bytes appear in
    the file. A string holding a lone surrogate escape (``"\\ud83d"``) is invalid too, without an offset."""

    def __init__(self, document: Any, offsets: list[int]) -> None:
        self.by_path: dict[tuple, int | None] = {}
        self._offsets = iter(offsets)
        self._seen = 0
        self._walk(document, ())
        if self._seen != len(offsets):  # lone surrogate escapes mixed in: offsets cannot be matched up
            self.by_path = dict.fromkeys(self.by_path)

    def at(self, *path: Any) -> tuple[bool, int | None]:
        """(whether the string at ``path`` had invalid UTF-8, the offset of its first bad byte)."""
        return (path in self.by_path, self.by_path.get(path))

    def _walk(self, node: Any, path: tuple) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                self._visit_string(key, path + (key, _KEY))
                self._walk(value, path + (key,))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                self._walk(value, path + (i,))
        elif isinstance(node, str):
            self._visit_string(node, path)

    def _visit_string(self, text: str, path: tuple) -> None:
        if _LONE_SURROGATE.search(text):
            bad = _SURROGATE.findall(text)
            offsets = [next(self._offsets, None) for _ in bad]
            self.by_path[path] = offsets[0] if offsets else None
            self._seen += len(bad)


_KEY = "<key>"


def _parse_json(path: Path, data: bytes, parsed: ParsedFile) -> None:
    text, offsets = _lenient_decode(data)
    try:
        document = json.loads(text.lstrip("\ufeff"))
    except json.JSONDecodeError as e:
        parsed.reject(_json_error(path, text, e, offsets))
        return
    bad = _BadBytes(document, offsets)
    if parsed.fmt == YOUCOOK2 or (parsed.fmt == "json" and isinstance(document, dict) and "database" in document):
        parsed.fmt = YOUCOOK2
        _read_youcook2(path, document, bad, parsed)
    else:
        parsed.fmt = HOWTO100M
        _read_howto100m(path, document, bad, parsed)


def _json_error(path: Path, text: str, error: json.JSONDecodeError, offsets: list[int]) -> str:
    where = f"{path} line {error.lineno}, column {error.colno}"
    if error.pos < len(text) and _SURROGATE.match(text, error.pos) and offsets:
        prefix_bad = len(_SURROGATE.findall(text, 0, error.pos))
        return f"{where}: invalid UTF-8 at byte offset {offsets[prefix_bad]} breaks the JSON structure"
    return f"{where}: not valid JSON ({error.msg})"


def _read_howto100m(path: Path, document: Any, bad: _BadBytes, parsed: ParsedFile) -> None:
    if not isinstance(document, dict):
        parsed.reject(f"{path}: a HowTo100M caption file is an object of video ids, found {type(document).__name__}")
        return
    for video_id, captions in document.items():
        lists = captions if isinstance(captions, dict) else {}
        columns = [lists.get(name) for name in ("start", "end", "text")]
        lengths = [len(c) for c in columns if isinstance(c, list)]
        count = max(lengths, default=0)
        parsed.located += count
        if not _usable_video_id(path, video_id, bad, parsed, count):
            continue
        if len(lengths) != 3 or len(set(lengths)) != 1:
            parsed.skip(video_id, f"{path}: captions of video {video_id} are not three lists start, end, text "
                        f"of equal length (found lengths {_lengths(columns)})", segments=count)
            continue
        for i in range(count):
            _add_entry(parsed, path, video_id, f"entry {i}", columns[0][i], columns[1][i], columns[2][i],
                       bad.at(video_id, "text", i))


def _read_youcook2(path: Path, document: Any, bad: _BadBytes, parsed: ParsedFile) -> None:
    database = document.get("database") if isinstance(document, dict) else None
    if not isinstance(database, dict):
        parsed.reject(f"{path}: a YouCook2 annotation file has an object \"database\" of video ids")
        return
    for video_id, video in database.items():
        annotations = video.get("annotations") if isinstance(video, dict) else None
        count = len(annotations) if isinstance(annotations, list) else 0
        parsed.located += count
        if not _usable_video_id(path, video_id, bad, parsed, count, ("database",)):
            continue
        if not isinstance(annotations, list):
            parsed.skip(video_id, f"{path}: video {video_id} has no \"annotations\" list", segments=0)
            continue
        for i, annotation in enumerate(annotations):
            item = annotation if isinstance(annotation, dict) else {}
            segment = item.get("segment")
            start, end = segment if isinstance(segment, list) and len(segment) == 2 else (None, None)
            _add_entry(parsed, path, video_id, f"annotation {i}", start, end, item.get("sentence"),
                       bad.at("database", video_id, "annotations", i, "sentence"))


def _usable_video_id(path: Path, video_id: str, bad: _BadBytes, parsed: ParsedFile, count: int, prefix: tuple = ()) -> bool:
    is_bad, offset = bad.at(*prefix, video_id, _KEY)
    if is_bad:
        parsed.skip(None, f"{path}: a video id has invalid UTF-8{_at(offset)}; its {count} segments are skipped",
                    segments=count)
    return not is_bad


def _add_entry(parsed: ParsedFile, path: Path, video_id: str, label: str, start: Any, end: Any, text: Any,
               bad_text: tuple[bool, int | None]) -> None:
    """Validate one entry's values; add it or report it."""
    where = f"{label} of {video_id} in {path.name}"
    if not (_is_time(start) and _is_time(end)):
        parsed.skip(video_id, f"{where}: start and end must be finite numbers of seconds, got {start!r} and {end!r}")
        return
    where += f" ({span(start, end)})"
    if not isinstance(text, str):
        parsed.skip(video_id, f"{where}: text must be a string, got {type(text).__name__}")
    elif bad_text[0] and bad_text[1] is None:
        parsed.skip(video_id, f"{where}: text is not valid Unicode (invalid UTF-8 or an unpaired surrogate escape)")
    elif bad_text[0]:
        parsed.skip(video_id, f"{where}: text has invalid UTF-8{_at(bad_text[1])}")
    else:
        parsed.add(_Entry(video_id, float(start), float(end), text))


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _lengths(columns: list[Any]) -> str:
    return ", ".join(str(len(c)) if isinstance(c, list) else "missing" for c in columns)


def _at(offset: int | None) -> str:
    return f" at byte offset {offset}" if offset is not None else ""


def _looks_like_jsonl(head: bytes) -> bool:
    """The first line is a whole JSON object with a "video" field."""
    first = head.split(b"\n", 1)[0].strip()
    if not (first.startswith(b"{") and first.endswith(b"}")):
        return False
    try:
        item = json.loads(first)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(item, dict) and "video" in item


# ---------------------------------------------------------------------------------------------------
# Line formats (WebVTT, SRT, JSONL)


@dataclass(frozen=True)
class _Line:
    number: int
    """1-based line number."""
    offset: int
    """Byte offset of the line's first character in the file."""
    text: str
    """The line; undecodable bytes kept as lone surrogates."""
    bad_offset: int | None
    """Byte offset (in the file) of the line's first undecodable byte; None when the line is valid UTF-8."""


def _lines(data: bytes) -> list[_Line]:
    lines: list[_Line] = []
    offset = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        body = raw[:-1] if raw.endswith(b"\r") else raw
        start = offset
        if number == 1 and body.startswith(b"\xef\xbb\xbf"):
            body, start = body[3:], offset + 3
        try:
            lines.append(_Line(number, start, body.decode("utf-8"), None))
        except UnicodeDecodeError as e:
            lines.append(_Line(number, start, body.decode("utf-8", errors="surrogateescape"), start + e.start))
        offset += len(raw) + 1
    return lines


def _blocks(lines: list[_Line]) -> Iterator[list[_Line]]:
    """Runs of non-blank lines (cues, headers, notes)."""
    block: list[_Line] = []
    for line in lines:
        if line.text.strip() or line.bad_offset is not None:
            block.append(line)
        elif block:
            yield block
            block = []
    if block:
        yield block


_TIMING = re.compile(r"\s*(?P<start>\S+)\s+-->\s+(?P<end>\S+)")
_TIMESTAMP = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")
_MARKUP = re.compile(r"<[^>]*>|\{\\[^}]*\}")


class _Malformed(ValueError):
    def __init__(self, line: _Line, column: int, message: str) -> None:
        super().__init__(f"line {line.number}, column {column}: {message}")


def _timing(line: _Line) -> tuple[float, float]:
    match = _TIMING.match(line.text)
    if match is None:
        raise _Malformed(line, 1, "expected a cue timing line 'start --> end'")
    times = []
    for name in ("start", "end"):
        value = _TIMESTAMP.fullmatch(match.group(name))
        if value is None:
            raise _Malformed(line, match.start(name) + 1, f"{match.group(name)!r} is not a timestamp like 00:01:02.500")
        hours, minutes, secs, fraction = value.groups()
        times.append(int(hours or 0) * 3600 + int(minutes) * 60 + int(secs) + int(fraction) / 10 ** len(fraction))
    return times[0], times[1]


def _cue_text(lines: list[_Line]) -> str:
    return html.unescape(_MARKUP.sub("", " ".join(line.text for line in lines)))


def _parse_vtt(path: Path, data: bytes, parsed: ParsedFile) -> None:
    blocks = list(_blocks(_lines(data)))
    if not blocks or not blocks[0][0].text.startswith("WEBVTT") or blocks[0][0].bad_offset is not None:
        parsed.reject(f"{path} line 1, column 1: a WebVTT file starts with 'WEBVTT'", path.stem)
        return
    cues = [b for b in blocks[1:] if not (b[0].text.startswith(("NOTE", "STYLE", "REGION")) and "-->" not in b[0].text)]
    _read_cues(path, cues, parsed)


def _parse_srt(path: Path, data: bytes, parsed: ParsedFile) -> None:
    _read_cues(path, list(_blocks(_lines(data))), parsed)


def _read_cues(path: Path, blocks: list[list[_Line]], parsed: ParsedFile) -> None:
    """Cue blocks (optional identifier line, timing line, text lines) of a VTT or SRT file."""
    video_id = path.stem
    try:
        for block in blocks:
            parsed.located += 1
            _read_cue(path, video_id, block, parsed)
    except _Malformed as e:
        parsed.reject(f"{path} {e}", video_id)


def _read_cue(path: Path, video_id: str, block: list[_Line], parsed: ParsedFile) -> None:
    timing_at = next((i for i, line in enumerate(block[:2]) if "-->" in line.text), None)
    bad = next((line.bad_offset for line in block if line.bad_offset is not None), None)
    where = f"cue at line {block[0].number} of {path.name}"
    if bad is not None:
        times = _try_timing(block[timing_at]) if timing_at is not None else None
        where += f" ({span(*times)})" if times else ""
        parsed.skip(video_id, f"{where}: invalid UTF-8 at byte offset {bad}")
        return
    if timing_at is None:
        numbered = block[0].text.strip().isdigit() and len(block) > 1  # a cue number, then its timing
        raise _Malformed(block[1] if numbered else block[0], 1, "expected a cue timing line 'start --> end'")
    start, end = _timing(block[timing_at])
    parsed.add(_Entry(video_id, start, end, _cue_text(block[timing_at + 1 :])))


def _try_timing(line: _Line) -> tuple[float, float] | None:
    try:
        return _timing(line)
    except _Malformed:
        return None


def _parse_jsonl(path: Path, data: bytes, parsed: ParsedFile) -> None:
    for line in _lines(data):
        if line.text.strip():
            parsed.located += 1
            _read_manifest_line(path, line, parsed)


def _read_manifest_line(path: Path, line: _Line, parsed: ParsedFile) -> None:
    where = f"{path} line {line.number}"
    try:
        item = json.loads(line.text)
    except json.JSONDecodeError as e:
        parsed.skip(None, f"{where}, column {e.colno}: not valid JSON ({e.msg})")
        return
    bad = _BadBytes(item, _lenient_decode(line.text.encode("utf-8", errors="surrogateescape"))[1])
    video = item.get("video") if isinstance(item, dict) else None
    if not isinstance(video, str) or not video:
        parsed.skip(None, f"{where}: expected an object with a string \"video\"")
        return
    is_bad, offset = bad.at("video")
    if is_bad:
        parsed.skip(None, f"{where}: \"video\" has invalid UTF-8{_at(_shift(offset, line.offset))}")
        return
    is_bad, offset = bad.at("text")
    _add_entry(parsed, path, video_id_of(video), f"line {line.number}", item.get("start"), item.get("end"),
               item.get("text"), (is_bad, _shift(offset, line.offset)))


def _shift(offset: int | None, by: int) -> int | None:
    return None if offset is None else offset + by


_PARSERS = {
    "json": _parse_json, HOWTO100M: _parse_json, YOUCOOK2: _parse_json,
    VTT: _parse_vtt, SRT: _parse_srt, JSONL: _parse_jsonl,
}
