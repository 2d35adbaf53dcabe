"""The JSON transcript formats, read as streams: HowTo100M caption.json, YouCook2 annotations, JSONL.

caption.json and YouCook2 files are read member by member (``shards.json_members``): one video's
captions are parsed at a time, and only for the videos the reading part owns (``ParsedFile.owns``).
JSONL manifests are read line by line. Numbers are parsed as floats (a 5000-digit number becomes a
time too large to use, reported like any other unusable time, not an error of the parser), and a
value nested deeper than the parser goes costs its video or line only.

Invalid UTF-8 in a string costs the entry that holds it and is reported with the byte offset of its
first bad byte (``BadBytes``).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from videobert.shards.json_members import Member, StructureError, iter_members, line_column
from videobert.shards.transcript_entries import (
    HOWTO100M, YOUCOOK2, Entry, Line, ParsedFile, add_entry, at_offset, decode_line, video_id_of,
)

_SURROGATE = re.compile("[\udc80-\udcff]")  # what undecodable bytes become with surrogateescape
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # and what an escape like "\ud83d" alone becomes
_SURROGATE_ESCAPE = re.compile(r"\\[uU][dD][89a-fA-F]")
_KEY = "<key>"
_CAPTION_LISTS = (b'"start"', b'"end"', b'"text"')


def lenient_decode(data: bytes) -> tuple[str, list[int]]:
    """``data`` as text, undecodable bytes kept as lone surrogates; and the byte offsets of those bytes."""
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="surrogateescape")
    offsets: list[int] = []
    byte_pos = char_pos = 0
    for match in _SURROGATE.finditer(text):
        byte_pos += len(text[char_pos: match.start()].encode("utf-8", errors="surrogateescape"))
        offsets.append(byte_pos)
        byte_pos += 1
        char_pos = match.end()
    return text, offsets


class BadBytes:
    """The JSON strings of a document that are not valid Unicode, with the byte offset of their first
    invalid UTF-8 byte: strings are visited in document order, which is the order their undecodable
    bytes appear in the file. A string holding a lone surrogate escape (``"\\ud83d"``) is invalid too,
    without an offset."""

    def __init__(self, document: Any, offsets: list[int], text: str | None = None) -> None:
        self.by_path: dict[tuple, int | None] = {}
        self._offsets = iter(offsets)
        self._seen = 0
        if offsets or text is None or _SURROGATE_ESCAPE.search(text):  # else no string can be bad
            self._walk(document)
        if self._seen != len(offsets):  # lone surrogate escapes mixed in: offsets cannot be matched up
            self.by_path = dict.fromkeys(self.by_path)

    def at(self, *path: Any) -> tuple[bool, int | None]:
        """(whether the string at ``path`` had invalid UTF-8, the offset of its first bad byte)."""
        return (path in self.by_path, self.by_path.get(path))

    def _walk(self, document: Any) -> None:
        """Every string in document order, with its path (a stack, not recursion: any depth is fine)."""
        stack: list[tuple[Any, tuple]] = [(document, ())]
        while stack:
            node, path = stack.pop()
            if isinstance(node, dict):
                for key, value in reversed(list(node.items())):
                    stack.append((value, path + (key,)))
                    stack.append((key, path + (key, _KEY)))
            elif isinstance(node, list):
                stack.extend((value, path + (i,)) for i, value in reversed(list(enumerate(node))))
            elif isinstance(node, str):
                self._visit_string(node, path)

    def _visit_string(self, text: str, path: tuple) -> None:
        if _LONE_SURROGATE.search(text):
            bad = _SURROGATE.findall(text)
            offsets = [next(self._offsets, None) for _ in bad]
            self.by_path[path] = offsets[0] if offsets else None
            self._seen += len(bad)


# ---------------------------------------------------------------------------------------------------
# caption.json and YouCook2: an object of members


def parse_json(path: Path, parsed: ParsedFile) -> None:
    """A HowTo100M caption.json or a YouCook2 annotation file (told apart by a ``database`` member)."""
    detected = parsed.fmt == "json"
    if detected:
        parsed.fmt = HOWTO100M
    with open(path, "rb") as f:
        try:
            _read_members(path, iter_members(f), parsed, detected)
        except StructureError as e:
            if e.found is not None:
                kind = "a YouCook2 annotation file" if parsed.fmt == YOUCOOK2 else "a HowTo100M caption file"
                parsed.reject(f"{path}: {kind} is an object of video ids, found {e.found}")
            else:
                parsed.reject(f"{path} line {e.line}, column {e.column}: not valid JSON ({e.message})")


def _read_members(path: Path, members, parsed: ParsedFile, detected: bool) -> None:
    database_seen = False
    for member in members:  # every member is delimited, even after the database: the structure is checked
        if database_seen:
            continue
        if member.key == b'"database"' and (parsed.fmt == YOUCOOK2 or detected and _is_database(member)):
            parsed.reset(YOUCOOK2)
            _read_database(path, member, parsed)
            database_seen = True
        elif parsed.fmt == HOWTO100M:
            _read_howto100m_video(path, member, parsed)
    if parsed.fmt == YOUCOOK2 and not database_seen:
        parsed.reject(f"{path}: a YouCook2 annotation file has an object \"database\" of video ids")


def _is_database(member: Member) -> bool:
    """A ``database`` member holding videos, not a HowTo100M video of that name."""
    if not member.value.lstrip().startswith(b"{"):
        return False
    try:
        first = next(iter_members(io.BytesIO(member.value)), None)
    except StructureError:
        return True  # reading it as the database reports the break
    return first is None or first.key not in _CAPTION_LISTS


def _read_database(path: Path, member: Member, parsed: ParsedFile) -> None:
    try:
        videos = list(iter_members(io.BytesIO(member.value), base_offset=member.value_offset))
    except StructureError as e:
        if e.found is None:
            raise
        parsed.reject(f"{path}: a YouCook2 annotation file has an object \"database\" of video ids")
        return
    for video in videos:
        _read_youcook2_video(path, video, parsed)


def _video_key(path: Path, member: Member, parsed: ParsedFile) -> str | None:
    """The member's video id when this part reads it; None otherwise (a bad id is reported, by part 0,
    with the segments of its captions)."""
    text, offsets = lenient_decode(member.key)
    try:
        video_id = json.loads(text)
    except json.JSONDecodeError as e:
        return _bad_key(path, member, parsed, f" is not a valid JSON string ({e.msg})")
    if _LONE_SURROGATE.search(video_id):
        return _bad_key(path, member, parsed, f" has invalid UTF-8{at_offset(_first(offsets, member.key_offset))}")
    return video_id if parsed.owns(video_id) else None


def _bad_key(path: Path, member: Member, parsed: ParsedFile, what: str) -> None:
    if parsed.owns(None):
        value = _load(path, member, None, parsed)
        count = _located(value[0], parsed.fmt) if value is not None else 0
        parsed.locate(None, count)
        parsed.skip(None, f"{path}: a video id{what}; its {count} segments are skipped", segments=count)
    return None


def _first(offsets: list[int], base: int) -> int | None:
    return base + offsets[0] if offsets else None


def _load(path: Path, member: Member, video_id: str | None, parsed: ParsedFile) -> tuple[Any, BadBytes] | None:
    """One member's value parsed (with its bad strings), or None after reporting why it cannot be."""
    text, offsets = lenient_decode(member.value)
    try:
        value = json.loads(text, parse_int=float)
    except json.JSONDecodeError as e:
        where = member.value_offset + len(text[: e.pos].encode("utf-8", errors="surrogateescape"))
        reason = f"not valid JSON ({e.msg})"
    except RecursionError:
        where, reason = member.value_offset, "nested too deeply to read"
    else:
        return value, BadBytes(value, [member.value_offset + o for o in offsets], text)
    with open(path, "rb") as f:
        line, column = line_column(f, where)
    name = f"video {video_id}" if video_id is not None else "a video whose id cannot be read"
    parsed.skip(video_id, f"{path} line {line}, column {column}: {reason} in the captions of {name}; they are "
                "skipped", segments=0)
    return None


def _located(value: Any, fmt: str | None) -> int:
    """Caption entries a member's value holds (what a bad id loses)."""
    if fmt == YOUCOOK2:
        annotations = value.get("annotations") if isinstance(value, dict) else None
        return len(annotations) if isinstance(annotations, list) else 0
    columns = [value.get(name) for name in ("start", "end", "text")] if isinstance(value, dict) else []
    return max((len(c) for c in columns if isinstance(c, list)), default=0)


def _read_howto100m_video(path: Path, member: Member, parsed: ParsedFile) -> None:
    video_id = _video_key(path, member, parsed)
    loaded = _load(path, member, video_id, parsed) if video_id is not None else None
    if loaded is None:
        return
    captions, bad = loaded
    count = _located(captions, HOWTO100M)
    parsed.locate(video_id, count)
    lists = captions if isinstance(captions, dict) else {}
    columns = [lists.get(name) for name in ("start", "end", "text")]
    lengths = [len(c) for c in columns if isinstance(c, list)]
    if len(lengths) != 3 or len(set(lengths)) != 1:
        parsed.skip(video_id, f"{path}: captions of video {video_id} are not three lists start, end, text "
                    f"of equal length (found lengths {_lengths(columns)})", segments=count)
        return
    entries = parsed.entries.setdefault(video_id, [])
    clean = not bad.by_path
    for i, (start, end, text) in enumerate(zip(*columns)):
        # The common case inline (numbers are parsed as floats; x - x is 0 only for finite x).
        if clean and type(start) is float and type(end) is float and type(text) is str \
                and start - start == 0.0 and end - end == 0.0:
            entries.append(Entry(video_id, start, end, text))
        else:
            add_entry(parsed, path, video_id, f"entry {i}", start, end, text, bad.at("text", i))
    if not entries:
        del parsed.entries[video_id]


def _read_youcook2_video(path: Path, member: Member, parsed: ParsedFile) -> None:
    video_id = _video_key(path, member, parsed)
    loaded = _load(path, member, video_id, parsed) if video_id is not None else None
    if loaded is None:
        return
    video, bad = loaded
    annotations = video.get("annotations") if isinstance(video, dict) else None
    parsed.locate(video_id, _located(video, YOUCOOK2))
    if not isinstance(annotations, list):
        parsed.skip(video_id, f"{path}: video {video_id} has no \"annotations\" list", segments=0)
        return
    for i, annotation in enumerate(annotations):
        item = annotation if isinstance(annotation, dict) else {}
        segment = item.get("segment")
        start, end = segment if isinstance(segment, list) and len(segment) == 2 else (None, None)
        add_entry(parsed, path, video_id, f"annotation {i}", start, end, item.get("sentence"),
                  bad.at("annotations", i, "sentence"))


def _lengths(columns: list[Any]) -> str:
    return ", ".join(str(len(c)) if isinstance(c, list) else "missing" for c in columns)


# ---------------------------------------------------------------------------------------------------
# JSONL manifests


def looks_like_jsonl(head: bytes) -> bool:
    """The first line is a whole JSON object with a "video" field."""
    first = head.split(b"\n", 1)[0].strip()
    if not (first.startswith(b"{") and first.endswith(b"}")):
        return False
    try:
        item = json.loads(first, parse_int=float)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(item, dict) and "video" in item


def parse_jsonl(path: Path, parsed: ParsedFile) -> None:
    with open(path, "rb") as f:
        offset = 0
        for number, raw in enumerate(f, start=1):
            line = decode_line(raw[:-1] if raw.endswith(b"\n") else raw, number, offset)
            offset += len(raw)
            if line.text.strip():
                _read_manifest_line(path, line, parsed)


def _read_manifest_line(path: Path, line: Line, parsed: ParsedFile) -> None:
    where = f"{path} line {line.number}"
    try:
        item = json.loads(line.text, parse_int=float)
    except json.JSONDecodeError as e:
        return _unplaced(parsed, f"{where}, column {e.colno}: not valid JSON ({e.msg})")
    except RecursionError:
        return _unplaced(parsed, f"{where}: nested too deeply to read")
    video = item.get("video") if isinstance(item, dict) else None
    if not isinstance(video, str) or not video:
        return _unplaced(parsed, f"{where}: expected an object with a string \"video\"")
    bad = BadBytes(item, lenient_decode(line.text.encode("utf-8", errors="surrogateescape"))[1])
    is_bad, offset = bad.at("video")
    if is_bad:
        return _unplaced(parsed, f"{where}: \"video\" has invalid UTF-8{at_offset(_shift(offset, line.offset))}")
    video_id = video_id_of(video)
    if not parsed.owns(video_id):
        return None
    parsed.locate(video_id)
    is_bad, offset = bad.at("text")
    add_entry(parsed, path, video_id, f"line {line.number}", item.get("start"), item.get("end"),
              item.get("text"), (is_bad, _shift(offset, line.offset)))
    return None


def _unplaced(parsed: ParsedFile, reason: str) -> None:
    """A line that names no video: part 0 counts and reports it."""
    parsed.locate(None)
    parsed.skip(None, reason)


def _shift(offset: int | None, by: int) -> int | None:
    return None if offset is None else offset + by
