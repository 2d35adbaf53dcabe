"""Transcripts in every format, valid and broken: each file is read without a traceback, every
segment located in it is kept or listed with a reason naming the file, and valid files lose nothing."""

from __future__ import annotations

import json

import pytest
from fuzzing import LISTED, READ, REFUSED, TEST_SECONDS, fuzz_settings, time_limit
from hypothesis import given
from hypothesis import strategies as st

from videobert.shards.transcript_entries import FORMATS, HOWTO100M, JSONL, SRT, VTT, YOUCOOK2
from videobert.shards.transcripts import read_transcripts

WORDS = st.text(alphabet=st.sampled_from("abcdefghij klmnopqrstuvwxyzé✓ -"), min_size=1, max_size=24).filter(
    lambda t: t.strip() and "-->" not in t)

pytestmark = pytest.mark.timeout(TEST_SECONDS, method="thread")  # the signal is the cases' (time_limit)


@st.composite
def captions(draw) -> list[tuple[float, float, str]]:
    """Time-ordered, non-overlapping segments with text (what a valid transcript holds)."""
    n = draw(st.integers(1, 6))
    gaps = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
    lengths = draw(st.lists(st.integers(5, 60), min_size=n, max_size=n))
    out, t = [], 0
    for gap, length in zip(gaps, lengths):
        start = t + gap
        out.append((start / 10, (start + length) / 10, " ".join(draw(WORDS).split())))
        t = start + length
    return out


def _stamp(seconds: float, comma: bool) -> str:
    ms = round(seconds * 1000)
    text = f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"
    return text.replace(".", ",") if comma else text


def render(fmt: str, video: str, caps: list[tuple[float, float, str]]) -> tuple[str, bytes]:
    """(file name, bytes) of a transcript of ``fmt`` holding ``caps`` for ``video``."""
    if fmt == HOWTO100M:
        doc = {video: {"start": [c[0] for c in caps], "end": [c[1] for c in caps], "text": [c[2] for c in caps]}}
        return "caption.json", json.dumps(doc, ensure_ascii=False).encode()
    if fmt == YOUCOOK2:
        doc = {"database": {video: {"annotations": [{"segment": [c[0], c[1]], "sentence": c[2]} for c in caps]}}}
        return "annotations.json", json.dumps(doc, ensure_ascii=False).encode()
    if fmt == JSONL:
        lines = [json.dumps({"video": video, "start": c[0], "end": c[1], "text": c[2]}, ensure_ascii=False) for c in caps]
        return "manifest.jsonl", ("\n".join(lines) + "\n").encode()
    cues = [f"{_stamp(a, fmt == SRT)} --> {_stamp(b, fmt == SRT)}\n{text}\n" for a, b, text in caps]
    if fmt == SRT:
        return f"{video}.srt", "\n".join(f"{i + 1}\n{cue}" for i, cue in enumerate(cues)).encode()
    return f"{video}.vtt", ("WEBVTT\n\n" + "\n".join(cues)).encode()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True) | WORDS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(WORDS, inner, max_size=3), max_leaves=6,
)


@st.composite
def mutated(draw, data: bytes, fmt: str) -> tuple[str, bytes]:
    """A mutation of a transcript's bytes (or none), and its name."""
    kind = draw(st.sampled_from(["none", "flip", "delete", "insert", "truncate", "duplicate line", "swap lines",
                                 "bad utf-8", "value"]))
    if not data or kind == "none":
        return "none", data
    at = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return kind, data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    if kind == "delete":
        return kind, data[:at] + data[at + draw(st.integers(1, 40)):]
    if kind == "insert":
        return kind, data[:at] + draw(st.binary(min_size=1, max_size=12)) + data[at:]
    if kind == "truncate":
        return kind, data[:at]
    if kind == "bad utf-8":
        return kind, data[:at] + b"\xff\xfe\xc3" + data[at:]
    lines = data.split(b"\n")
    i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    if kind == "duplicate line":
        return kind, b"\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    if kind == "swap lines":
        lines[i], lines[j] = lines[j], lines[i]
        return kind, b"\n".join(lines)
    if fmt in (VTT, SRT):
        return "timing", data.replace(b" --> ", b" --> " + draw(st.sampled_from([b"-", b"99:", b"x", b""])), 1)
    return kind, _replace_value(data, fmt, draw(JSON_VALUES), draw(st.integers(0, 50)))


def _replace_value(data: bytes, fmt: str, value, pick: int) -> bytes:
    """A JSON transcript with one of its values (chosen by ``pick``) replaced by ``value``."""
    if fmt == JSONL:
        lines = data.decode().splitlines()
        item = json.loads(lines[pick % len(lines)])
        item[sorted(item)[pick % len(item)]] = value
        lines[pick % len(lines)] = json.dumps(item)
        return ("\n".join(lines) + "\n").encode()
    doc = json.loads(data)
    paths = list(_paths(doc, ()))
    path = paths[pick % len(paths)]
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(doc).encode()


def _paths(node, prefix):
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield prefix + (i,)
            yield from _paths(value, prefix + (i,))


@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.data(), caps=captions())
@fuzz_settings(30)
def test_transcripts_read_or_list_every_segment(tmp_path_factory, tally, fmt, data, caps):
    name, original = render(fmt, "vid_01", caps)
    mutation, content = data.draw(mutated(original, fmt))
    path = tmp_path_factory.mktemp("transcript") / name
    path.write_bytes(content)
    with time_limit():
        result = read_transcripts([path], fmt=data.draw(st.sampled_from([None, fmt])))
    kept = sum(len(segments) for segments in result.segments.values())
    assert kept + result.segments_skipped == result.segments_read, "every segment located is kept or listed"
    for problem in result.problems:
        assert problem.input == str(path) and problem.reason, problem
        assert path.name in problem.reason or (problem.video_id or "\0") in problem.reason, problem.reason
    if mutation == "none":
        assert [(s.start, s.end, s.text) for s in result.segments["vid_01"]] == caps and not result.problems
    kind = f"transcripts ({fmt})"
    tally.add(kind, "files", READ if not result.problems else REFUSED if result.files_skipped else LISTED)
