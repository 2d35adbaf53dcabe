"""Transcript readers: caption segments per video from the formats instructional-video corpora ship.

Formats (``FORMATS``), told apart by extension and content, or named with ``fmt=``:

* ``howto100m``  HowTo100M ``caption.json``: ``{video_id: {"start": [...], "end": [...], "text": [...]}}``
* ``youcook2``   YouCook2 annotations: ``{"database": {video_id: {"annotations":
  [{"segment": [start, end], "sentence": "..."}, ...]}}}``
* ``vtt``        WebVTT, one file per video; the video id is the file name without its extension
* ``srt``        SubRip, one file per video; same id rule
* ``jsonl``      a manifest, one ``{"video": path-or-id, "start": s, "end": e, "text": t}`` per line;
  the video id is the file name without extension when ``video`` is a path, else ``video`` itself

A folder stands for the transcript files inside it (recursively, by extension); what a downloader
leaves beside the videos (yt-dlp's ``.info.json``, thumbnails, descriptions) is ignored and counted
(``TranscriptFiles.ignored``), so one folder can be given as both videos and transcripts. When two
files give captions for the same video id, the first (in argument order, folders sorted) is used and
the other's segments are reported.

Subtitles downloaded with yt-dlp are named ``VIDEO_ID.LANG.vtt`` (``.en.vtt``, ``.en-US.srt``): the
language suffix is not part of the video id. When a video has subtitles in several languages, one
is chosen (``language``, default ``en``: that tag, then the same language in a region, ``en-US``,
then a file without a suffix, then the first by name) and the others are reported, not read.

Parts (``shards.parts``): given ``part``, only the videos the part owns are kept, and memory holds
only theirs. The JSON formats are read as a stream (``shards.json_members``): a multi-GB caption.json
is never in memory whole, and the captions of videos other parts own are skipped unparsed. Whole-file
facts (a file that cannot be read, a line that names no video) are part 0's to report and count.

Every segment located in a file is accounted for: it is returned (``Transcripts.segments``) or
reported (``Transcripts.problems``, one ``Problem`` per line of a stage's ``errors.jsonl``), so that
``segments_read == kept + sum(p.segments for skipped problems)``. The fixes, applied per video after
reading:

* segments are sorted by start time (noted once per video when the file had them out of order) and
  numbered in that order (``Segment.index``); entries unusable as read (invalid UTF-8, times that are
  not finite numbers, including numbers too large for a float) are reported before that and get no
  number;
* empty or whitespace-only text: skipped; ``end <= start``: skipped; a segment ending at or before 0 s:
  skipped; one starting before 0 s: clipped to start at 0; one lasting longer than ``max_segment_seconds``
  (default ``MAX_SEGMENT_SECONDS``): skipped before it can own any frame, so that an absurd end time
  (``1e300``, hours past the video) costs neither memory when its frames are cut nor the segments it
  would have covered;
* a segment overlapping the previous kept one is trimmed to start where that one ends, or skipped when
  nothing is left, so that every frame belongs to at most one segment.

Bad input: a file whose structure is broken (JSON whose brackets or strings do not close, a VTT
without its ``WEBVTT`` line, a cue timing line that does not parse) is reported with line and column
and none of its captions are used. One video's captions in a JSON file that are not valid JSON
inside, or nested deeper than the parser goes, cost that video only. Invalid UTF-8 costs only the
entries or cues that contain it, reported with the byte offset of the first bad byte. JSONL lines
are independent: a line that is not valid JSON costs that line only.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from videobert.shards import transcripts_json as _json
from videobert.shards.parts import Part
from videobert.shards.transcript_entries import (
    CLIPPED, FORMATS, HOWTO100M, JSONL, SKIPPED, SORTED, SRT, TRIMMED, VIDEO_EXTENSIONS, VTT, YOUCOOK2, Entry, Line,
    ParsedFile, Problem, Segment, decode_line, seconds, span,
)

TRANSCRIPT_EXTENSIONS = (".json", ".jsonl", ".ndjson", ".vtt", ".srt")
SIDECAR_EXTENSIONS = (".vtt", ".srt")
"""Per-video transcripts (the video id is the file name, less a language suffix)."""
DOWNLOADER_JSON = (".info.json", ".live_chat.json", ".comments.json")
"""JSON files yt-dlp writes beside a video that are not transcripts (ignored in folders)."""
DEFAULT_LANGUAGE = "en"

_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")

MAX_SEGMENT_SECONDS = 300.0
"""Default longest caption segment, in seconds (5 minutes: speech captions last seconds, YouCook2 steps
under a few minutes; at 20 fps and 224 x 224 pixels, 300 s of frames are 0.9 GB, one sample's array)."""


@dataclass
class Transcripts:
    """Everything read from a set of transcript inputs (by one part: the videos it owns)."""

    segments: dict[str, list[Segment]] = field(default_factory=dict)
    """Video id -> its usable segments, time-sorted, non-overlapping (ids in first-seen order)."""
    problems: list[Problem] = field(default_factory=list)
    """Per file, per video and per segment; ``video_id`` is None where no video could be named."""
    sources: dict[str, str] = field(default_factory=dict)
    """Video id -> the transcript file its segments came from."""
    files_read: int = 0
    files_skipped: int = 0
    """Files none of whose captions could be used (missing, unreadable, malformed, unknown format, or
    subtitles in a language not chosen)."""
    files_ignored: int = 0
    """Files in the folders given that are neither transcripts nor videos (a downloader's metadata,
    thumbnails); counted by part 0."""
    segments_read: int = 0
    """Segments located in the files (kept, fixed or skipped)."""

    @property
    def segments_skipped(self) -> int:
        return sum(p.segments for p in self.problems if p.action == SKIPPED)


# ---------------------------------------------------------------------------------------------------
# Entry points


def read_transcripts(paths: Iterable[str | Path], fmt: str | None = None, *, language: str = DEFAULT_LANGUAGE,
                     part: Part | None = None, max_segment_seconds: float = MAX_SEGMENT_SECONDS) -> Transcripts:
    """Read transcript files and folders; ``fmt`` (one of ``FORMATS``) overrides detection; ``part``
    keeps the videos that part owns (default: all); segments longer than ``max_segment_seconds`` are
    skipped (module docstring)."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown transcript format {fmt!r}; choose one of {', '.join(FORMATS)}")
    part = part or Part()
    listing = list_transcript_files(paths)
    result = Transcripts()
    if part.first:
        result.files_read = result.files_skipped = len(listing.missing)
        result.files_ignored = len(listing.ignored)
        result.problems += [
            Problem(input=str(path), video_id=None, segment=None, reason=f"transcript file {path} not found", segments=0)
            for path in listing.missing
        ]
    entries: dict[str, list[Entry]] = {}
    labels: dict[str, str] = {}
    for choice in choose_sidecars(listing.files, fmt, language):
        if choice.video_id is not None and not part.owns_video(choice.video_id):
            continue  # another part's video: its file is not even opened
        parsed = choice.not_chosen or parse_file(choice.path, fmt, video_id=choice.video_id, part=part)
        counted = choice.video_id is not None or part.first
        result.files_read += counted
        result.files_skipped += counted and parsed.unusable
        result.segments_read += parsed.located
        result.problems += parsed.problems
        _merge(parsed, entries, labels, result)
    for video_id, video_entries in entries.items():
        segments, problems = _normalize(video_id, video_entries, result.sources[video_id], labels[video_id],
                                        max_segment_seconds)
        result.segments[video_id] = segments
        result.problems += problems
    return result


@dataclass
class TranscriptFiles:
    """What ``list_transcript_files`` found."""

    files: list[Path]
    """Transcript files named, or inside the folders named, in order (folders sorted)."""
    missing: list[Path]
    """Paths that do not exist."""
    ignored: set[Path] = field(default_factory=set)
    """Files inside the folders that are neither transcripts nor videos."""


def list_transcript_files(paths: Iterable[str | Path]) -> TranscriptFiles:
    """The transcript files of the given paths (a file named is taken whatever its extension)."""
    found = TranscriptFiles([], [])
    for item in paths:
        path = Path(item)
        if path.is_dir():
            inside = files_under(path)
            found.files += [p for p in inside if is_transcript_file(p)]
            found.ignored.update(p.absolute() for p in inside if not is_transcript_file(p) and not is_video_file(p))
        elif path.is_file():
            found.files.append(path)
        else:
            found.missing.append(path)
    return found


def files_under(folder: Path) -> list[Path]:
    """The files in a folder and its subfolders, sorted. Read from the directory entries (no ``stat``
    per file): every part of a split run lists a corpus folder of a million videos, often on a shared
    file system."""
    found = []
    for top, _, names in os.walk(folder):
        found += [Path(top, name) for name in names]
    return sorted(found)


def is_transcript_file(path: Path) -> bool:
    """A transcript by its name (in a folder): a transcript extension, and not a downloader's JSON."""
    name = path.name.lower()
    return path.suffix.lower() in TRANSCRIPT_EXTENSIONS and not name.endswith(DOWNLOADER_JSON)


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def sidecar_id(path: Path) -> tuple[str, str | None]:
    """(video id, language) of a per-video subtitle file: ``abc.en-US.vtt`` -> (``abc``, ``en-US``)."""
    stem = path.stem
    head, dot, tail = stem.rpartition(".")
    if dot and head and _LANGUAGE_TAG.fullmatch(tail):
        return head, tail
    return stem, None


def detect_format(path: Path, data: bytes) -> str | None:
    """The format of a transcript file from its extension and first bytes; JSON objects give ``"json"``
    (told apart into ``howto100m`` / ``youcook2`` while read); None when nothing fits."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    suffix = path.suffix.lower()
    if head.startswith(b"WEBVTT") or suffix == ".vtt":
        return VTT
    if suffix == ".srt" or re.match(rb"\d+\s*\r?\n[^\n]*-->", head):
        return SRT
    if suffix in (".jsonl", ".ndjson") or _json.looks_like_jsonl(head):
        return JSONL
    if head.startswith(b"{") or suffix == ".json":
        return "json"
    return None


# ---------------------------------------------------------------------------------------------------
# Subtitles in several languages


@dataclass
class SidecarChoice:
    """A transcript file to read: its video id when it is one video's file, and when it is a subtitle
    file not chosen (another language of a video that has one chosen), what that means."""

    path: Path
    video_id: str | None = None
    not_chosen: "ParsedFile | None" = None


def choose_sidecars(files: Sequence[Path], fmt: str | None, language: str) -> list[SidecarChoice]:
    """Files in order, per-video subtitle files grouped by video: one language kept per video."""
    per_video = fmt in (VTT, SRT) or fmt is None
    groups: dict[str, list[tuple[Path, str | None]]] = {}
    choices: list[SidecarChoice] = []
    for path in files:
        if per_video and (fmt in (VTT, SRT) or path.suffix.lower() in SIDECAR_EXTENSIONS):
            video_id, tag = sidecar_id(path)
            if video_id not in groups:
                choices.append(SidecarChoice(path, video_id))
                groups[video_id] = []
            groups[video_id].append((path, tag))
        else:
            choices.append(SidecarChoice(path))
    return [c for choice in choices for c in _resolve_group(choice, groups, language)]


def _resolve_group(choice: SidecarChoice, groups: dict, language: str) -> list[SidecarChoice]:
    if choice.video_id is None or len(groups[choice.video_id]) == 1:
        return [choice]
    group = groups[choice.video_id]
    chosen_path, chosen_tag = min(group, key=lambda item: (_language_rank(item[1], language), item[0].name))
    result = [SidecarChoice(chosen_path, choice.video_id)]
    for path, tag in group:
        if path == chosen_path:
            continue
        not_chosen = ParsedFile(input=str(path), fmt=None, unusable=True)
        not_chosen.problems.append(Problem(
            input=str(path), video_id=choice.video_id, segment=None, segments=0,
            reason=f"video {choice.video_id} has subtitles in {_language_name(tag)} ({path.name}) and in "
            f"{_language_name(chosen_tag)} ({chosen_path.name}); {chosen_path.name} is used (--language {language})",
        ))
        result.append(SidecarChoice(path, choice.video_id, not_chosen))
    return result


def _language_rank(tag: str | None, language: str) -> int:
    """0: the language asked for; 1: the same language in a region or script; 2: no tag; 3: another."""
    if tag is not None and tag.lower() == language.lower():
        return 0
    if tag is not None and tag.lower().split("-")[0] == language.lower().split("-")[0]:
        return 1
    return 2 if tag is None else 3


def _language_name(tag: str | None) -> str:
    return tag if tag is not None else "no language suffix"


# ---------------------------------------------------------------------------------------------------
# One file


def parse_file(path: Path, fmt: str | None = None, *, video_id: str | None = None,
               part: Part | None = None) -> ParsedFile:
    """Parse one transcript file (format detected unless given); ``video_id`` names the video of a
    per-video file (default: from its name); ``part`` keeps the videos that part owns."""
    parsed = ParsedFile(input=str(path), fmt=fmt, part=part or Part(), video_id=video_id)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        parsed.reject(f"cannot read transcript file {path}: {e.strerror or e}")
        return parsed
    parsed.fmt = fmt or detect_format(path, head)
    if parsed.fmt in (VTT, SRT) and parsed.video_id is None:
        parsed.video_id = sidecar_id(path)[0]
    parser = _parser(parsed.fmt)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        parsed.reject(f"{path} is UTF-16 encoded; transcripts must be UTF-8")
    elif parser is None:
        parsed.reject(
            f"cannot tell the transcript format of {path} (one of {', '.join(FORMATS)}; name it with --transcript-format)"
        )
    else:
        try:
            parser(path, parsed)
        except OSError as e:
            parsed.reject(f"cannot read transcript file {path}: {e.strerror or e}")
    return parsed


def _parser(fmt: str | None) -> Callable[[Path, ParsedFile], None] | None:
    parsers = {"json": _json.parse_json, HOWTO100M: _json.parse_json, YOUCOOK2: _json.parse_json,
               JSONL: _json.parse_jsonl, VTT: _parse_vtt, SRT: _parse_srt}
    return parsers.get(fmt or "")


def _merge(parsed: ParsedFile, entries: dict[str, list[Entry]], labels: dict[str, str], result: Transcripts) -> None:
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
    video_id: str, entries: Sequence[Entry], input_name: str, source: str, max_seconds: float = MAX_SEGMENT_SECONDS,
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
        entry = entries[i]
        text = " ".join(entry.text.split())
        if text and 0 <= entry.start < entry.end <= entry.start + max_seconds and (not kept or entry.start >= kept[-1].end):
            kept.append(Segment(video_id, index, entry.start, entry.end, text, source))  # nothing to fix
            continue
        segment, problem = _check_segment(video_id, index, entry, kept[-1] if kept else None, input_name, source,
                                          max_seconds)
        if problem is not None:
            problems.append(problem)
        if segment is not None:
            kept.append(segment)
    return kept, problems


def _check_segment(
    video_id: str, index: int, entry: Entry, previous: Segment | None, input_name: str, source: str,
    max_seconds: float = MAX_SEGMENT_SECONDS,
) -> tuple[Segment | None, Problem | None]:
    def problem(reason: str, action: str = SKIPPED) -> Problem:  # the label only when needed: most segments are fine
        label = f"segment {index} of {video_id} ({span(entry.start, entry.end)})"
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


# ---------------------------------------------------------------------------------------------------
# Line formats (WebVTT, SRT; JSONL lines are read by ``shards.transcripts_json``)


def _lines(data: bytes) -> list[Line]:
    lines: list[Line] = []
    offset = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        lines.append(decode_line(raw, number, offset))
        offset += len(raw) + 1
    return lines


def _blocks(lines: list[Line]) -> Iterator[list[Line]]:
    """Runs of non-blank lines (cues, headers, notes)."""
    block: list[Line] = []
    for line in lines:
        if line.text.strip() or line.bad_offset is not None:
            block.append(line)
        elif block:
            yield block
            block = []
    if block:
        yield block


_TIMING = re.compile(r"\s*(?P<start>\S+)\s+-->\s+(?P<end>\S+)")
_TIMESTAMP = re.compile(r"(?:(\d{1,6}):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")  # bounded: no 5000-digit hours
_MARKUP = re.compile(r"<[^>]*>|\{\\[^}]*\}")


class _Malformed(ValueError):
    def __init__(self, line: Line, column: int, message: str) -> None:
        super().__init__(f"line {line.number}, column {column}: {message}")


def _timing(line: Line) -> tuple[float, float]:
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


def _cue_text(lines: list[Line]) -> str:
    return html.unescape(_MARKUP.sub("", " ".join(line.text for line in lines)))


def _parse_vtt(path: Path, parsed: ParsedFile) -> None:
    blocks = list(_blocks(_lines(path.read_bytes())))
    if not blocks or not blocks[0][0].text.startswith("WEBVTT") or blocks[0][0].bad_offset is not None:
        parsed.reject(f"{path} line 1, column 1: a WebVTT file starts with 'WEBVTT'")
        return
    cues = [b for b in blocks[1:] if not (b[0].text.startswith(("NOTE", "STYLE", "REGION")) and "-->" not in b[0].text)]
    _read_cues(path, cues, parsed)


def _parse_srt(path: Path, parsed: ParsedFile) -> None:
    _read_cues(path, list(_blocks(_lines(path.read_bytes()))), parsed)


def _read_cues(path: Path, blocks: list[list[Line]], parsed: ParsedFile) -> None:
    """Cue blocks (optional identifier line, timing line, text lines) of a VTT or SRT file."""
    try:
        for block in blocks:
            parsed.locate(parsed.video_id)
            _read_cue(path, parsed.video_id, block, parsed)
    except _Malformed as e:
        parsed.reject(f"{path} {e}")


def _read_cue(path: Path, video_id: str, block: list[Line], parsed: ParsedFile) -> None:
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
    parsed.add(Entry(video_id, start, end, _cue_text(block[timing_at + 1 :])))


def _try_timing(line: Line) -> tuple[float, float] | None:
    try:
        return _timing(line)
    except _Malformed:
        return None

