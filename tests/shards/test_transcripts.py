"""Transcript readers: every format parsed from real files, detection, and the per-video fixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from videobert.shards.transcript_entries import (
    CLIPPED, FORMATS, HOWTO100M, JSONL, SKIPPED, SORTED, SRT, TRIMMED, VTT, YOUCOOK2, video_id_of,
)
from videobert.shards.transcripts import Transcripts, detect_format, read_transcripts


def spans(result: Transcripts, video_id: str) -> list[tuple[int, float, float, str]]:
    return [(s.index, s.start, s.end, s.text) for s in result.segments[video_id]]


def assert_accounted(result: Transcripts) -> None:
    kept = sum(len(segments) for segments in result.segments.values())
    assert kept + result.segments_skipped == result.segments_read


def test_howto100m_caption_json(tmp_path):
    path = tmp_path / "caption.json"
    path.write_text(json.dumps({
        "vid-1": {"start": [0.0, 2.5], "end": [2.5, 4.0], "text": ["  hello   there ", "cut the onion"]},
        "vid_2": {"start": [1], "end": [3], "text": ["stir"]},
    }))
    result = read_transcripts([path])
    assert spans(result, "vid-1") == [(0, 0.0, 2.5, "hello there"), (1, 2.5, 4.0, "cut the onion")]
    assert spans(result, "vid_2") == [(0, 1.0, 3.0, "stir")]
    assert result.segments["vid-1"][0].source == "caption.json (howto100m)"
    assert result.sources["vid-1"] == str(path)
    assert result.problems == [] and result.segments_read == 3
    assert_accounted(result)


def test_youcook2_annotations(tmp_path):
    path = tmp_path / "youcookii_annotations.json"
    path.write_text(json.dumps({"database": {
        "abc": {"subset": "training", "duration": 60.0, "annotations": [
            {"id": 0, "segment": [5, 10], "sentence": "grill the tomatoes"},
            {"id": 1, "segment": [12, 20], "sentence": "add salt"},
        ]},
    }}))
    result = read_transcripts([path])
    assert spans(result, "abc") == [(0, 5.0, 10.0, "grill the tomatoes"), (1, 12.0, 20.0, "add salt")]
    assert result.segments["abc"][0].source == "youcookii_annotations.json (youcook2)"


def test_webvtt_cues_tags_and_notes(tmp_path):
    path = tmp_path / "lesson01.vtt"
    path.write_text(
        "WEBVTT\nKind: captions\nLanguage: en\n\n"
        "NOTE written by hand\nacross two lines\n\n"
        "intro\n00:00:01.000 --> 00:00:02.500 align:start position:0%\n<c.yellow>Welcome</c> &amp; hello\nsecond line\n\n"
        "01:02.000 --> 01:04.250\nnow <00:01:03.000><c>chop</c> it\n",
        encoding="utf-8",
    )
    result = read_transcripts([path])
    assert spans(result, "lesson01") == [(0, 1.0, 2.5, "Welcome & hello second line"), (1, 62.0, 64.25, "now chop it")]
    assert result.segments["lesson01"][0].source == "lesson01.vtt (vtt)"


def test_srt_with_bom_and_crlf(tmp_path):
    path = tmp_path / "movie.srt"
    text = "1\r\n00:00:00,500 --> 00:00:01,750\r\n<i>Hi</i> there\r\n\r\n2\r\n00:00:02,000 --> 00:00:03,000\r\n{\\an8}top\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    result = read_transcripts([path])
    assert spans(result, "movie") == [(0, 0.5, 1.75, "Hi there"), (1, 2.0, 3.0, "top")]


def test_jsonl_manifest_paths_and_ids(tmp_path):
    path = tmp_path / "manifest.jsonl"
    lines = [
        {"video": "clips/cooking/v1.mp4", "start": 3.0, "end": 4.0, "text": "later"},
        {"video": "v1", "start": 0.0, "end": 1.0, "text": "earlier"},
        {"video": "other", "start": 0, "end": 2, "text": "x"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    result = read_transcripts([path])
    assert spans(result, "v1") == [(0, 0.0, 1.0, "earlier"), (1, 3.0, 4.0, "later")]
    assert spans(result, "other") == [(0, 0.0, 2.0, "x")]
    sorted_note = [p for p in result.problems if p.action == SORTED]
    assert len(sorted_note) == 1 and sorted_note[0].video_id == "v1" and sorted_note[0].segments == 2


def test_folder_of_per_video_files(tmp_path):
    (tmp_path / "a.vtt").write_text("WEBVTT\n\n00:01.000 --> 00:02.000\nfrom vtt\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nfrom srt\n")
    (tmp_path / "notes.txt").write_text("not a transcript")
    result = read_transcripts([tmp_path])
    assert sorted(result.segments) == ["a", "b"] and result.files_read == 2


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("x.vtt", b"WEBVTT\n", VTT),
        ("x.txt", b"\xef\xbb\xbfWEBVTT\n\n", VTT),
        ("x.txt", b"1\n00:00:01,000 --> 00:00:02,000\nhi\n", SRT),
        ("x.json", b'{"video": "a", "start": 0, "end": 1, "text": "t"}\n{"video": "b"}\n', JSONL),
        ("x.jsonl", b"", JSONL),
        ("x.dat", b'{"abc": {"start": []}}', "json"),
        ("x.dat", b"hello", None),
    ],
)
def test_detect_format_from_extension_and_content(name, content, expected):
    assert detect_format(Path(name), content) == expected


def test_format_override_reads_an_unrecognised_file(tmp_path):
    path = tmp_path / "annotations.data"
    path.write_text(json.dumps({"database": {"v": {"annotations": [{"segment": [0, 1], "sentence": "s"}]}}}))
    assert read_transcripts([path], fmt=YOUCOOK2).segments["v"][0].source == "annotations.data (youcook2)"
    unknown = tmp_path / "mystery.dat"
    unknown.write_text("nothing I know")
    result = read_transcripts([unknown])
    assert result.files_skipped == 1 and "--transcript-format" in result.problems[0].reason


def test_video_id_of_manifest_values():
    assert video_id_of("data/videos/abc.mp4") == "abc"
    assert video_id_of("C:\\videos\\abc.webm") == "abc"
    assert video_id_of("abc") == "abc"
    assert video_id_of("abc.MKV") == "abc"
    assert video_id_of("abc.v2") == "abc.v2"  # not a video extension: an id with a dot


def test_normalize_sorts_trims_clips_and_skips(tmp_path):
    path = tmp_path / "caption.json"
    rows = [  # (start, end, text), deliberately out of order
        (10.0, 12.0, "late"), (0.0, 3.0, "first"), (2.0, 5.0, "overlaps first"), (2.5, 4.0, "inside the previous"),
        (6.0, 6.0, "zero length"), (7.0, 6.5, "reversed"), (8.0, 9.0, "   "), (-1.0, 0.5, "before zero"),
        (-3.0, -1.0, "entirely before zero"),
    ]
    path.write_text(json.dumps({"v": {"start": [r[0] for r in rows], "end": [r[1] for r in rows], "text": [r[2] for r in rows]}}))
    result = read_transcripts([path])
    by_index = {p.segment: p for p in result.problems if p.segment is not None}
    # sorted order: -3, -1, 0, 2, 2.5, 6, 7, 8, 10
    assert spans(result, "v") == [
        (1, 0.0, 0.5, "before zero"), (2, 0.5, 3.0, "first"), (3, 3.0, 5.0, "overlaps first"), (8, 10.0, 12.0, "late"),
    ]
    assert by_index[0].action == SKIPPED and "ends at or before 0 s" in by_index[0].reason
    assert by_index[1].action == CLIPPED and "clipped to start at 0 s" in by_index[1].reason
    assert by_index[2].action == TRIMMED and "trimmed to start at 0.5 s" in by_index[2].reason
    assert by_index[3].action == TRIMMED and by_index[3].reason.startswith("segment 3 of v (2.0-5.0 s): overlaps segment 2")
    assert by_index[4].action == SKIPPED and "lies inside segment 3" in by_index[4].reason
    assert by_index[5].reason == "segment 5 of v (6.0-6.0 s): end <= start"
    assert by_index[6].reason == "segment 6 of v (7.0-6.5 s): end <= start"
    assert by_index[7].reason == "segment 7 of v (8.0-9.0 s): text is empty"
    assert [p for p in result.problems if p.segment is None][0].action == SORTED
    assert result.segments_skipped == 5 and result.segments_read == 9
    assert_accounted(result)


def test_invalid_utf8_costs_only_the_affected_entries(tmp_path):
    path = tmp_path / "caption.json"
    good = json.dumps({"v": {"start": [0, 2, 4], "end": [1, 3, 5], "text": ["fine", "BROKEN here", "also fine"]}})
    data = good.encode().replace(b"BROKEN", b"br\xffken")
    path.write_bytes(data)
    result = read_transcripts([path])
    assert [s.text for s in result.segments["v"]] == ["fine", "also fine"]
    (problem,) = result.problems
    offset = data.index(b"\xff")
    assert f"invalid UTF-8 at byte offset {offset}" in problem.reason
    assert "entry 1 of v" in problem.reason and problem.segments == 1
    assert_accounted(result)


def test_unpaired_surrogate_escape_is_not_valid_text(tmp_path):
    path = tmp_path / "caption.json"
    path.write_text('{"v": {"start": [0, 2], "end": [1, 3], "text": ["half an emoji \\ud83d", "whole \\ud83d\\ude00"]}}')
    result = read_transcripts([path])
    assert [s.text for s in result.segments["v"]] == ["whole \U0001F600"]
    (problem,) = result.problems
    assert "entry 0 of v" in problem.reason and "unpaired surrogate" in problem.reason


def test_invalid_utf8_in_vtt_cue_and_jsonl_line(tmp_path):
    vtt = tmp_path / "clip.vtt"
    data = b"WEBVTT\n\n00:00.000 --> 00:01.000\nok\n\n00:01.000 --> 00:02.000\nbad \xc3\x28 byte\n\n00:02.000 --> 00:03.000\nok too\n"
    vtt.write_bytes(data)
    manifest = tmp_path / "m.jsonl"
    line = b'{"video": "w", "start": 0, "end": 1, "text": "caf\xe9"}\n'
    manifest.write_bytes(b'{"video": "w", "start": 1, "end": 2, "text": "fine"}\n' + line)
    result = read_transcripts([vtt, manifest])
    assert [s.text for s in result.segments["clip"]] == ["ok", "ok too"]
    assert [s.text for s in result.segments["w"]] == ["fine"]
    offsets = {p.video_id: p.reason for p in result.problems}
    vtt_offset = data.index(b"\xc3")
    assert f"byte offset {vtt_offset}" in offsets["clip"] and "cue at line 6" in offsets["clip"]
    jsonl_offset = len(b'{"video": "w", "start": 1, "end": 2, "text": "fine"}\n') + line.index(b"\xe9")
    assert f"byte offset {jsonl_offset}" in offsets["w"]
    assert_accounted(result)


@pytest.mark.parametrize(
    "name, content, where",
    [
        ("broken.json", '{"v": {"start": [0], "end": [1],\n  "text": ["a"]]}}', "line 2, column 16"),
        ("lesson.vtt", "WEBVTT\n\n00:00.000 --> 00:01.000\nfine\n\n00:01.000 --> 00:0x.000\nbad\n", "line 6, column 15"),
        ("nohead.vtt", "00:00.000 --> 00:01.000\nno header\n", "line 1, column 1"),
        ("film.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\njust text without timing\n", "line 6, column 1"),
    ],
)
def test_malformed_files_are_reported_with_line_and_column(tmp_path, name, content, where):
    path = tmp_path / name
    path.write_text(content)
    result = read_transcripts([path])
    assert result.segments == {} and result.files_skipped == 1
    (problem,) = result.problems
    assert where in problem.reason and str(path) in problem.reason
    assert "none of the file's captions are used" in problem.reason
    assert problem.segments == 0 and result.segments_read == 0


def test_structure_errors_inside_valid_json(tmp_path):
    path = tmp_path / "caption.json"
    path.write_text(json.dumps({
        "ragged": {"start": [0, 1], "end": [1], "text": ["a", "b"]},
        "typed": {"start": [0, "1"], "end": [1, 2], "text": ["a", 7]},
    }))
    result = read_transcripts([path])
    reasons = [p.reason for p in result.problems]
    assert any("ragged" in r and "equal length" in r and "2, 1, 2" in r for r in reasons)
    assert any("entry 1 of typed" in r and "finite numbers" in r for r in reasons)
    assert spans(result, "typed") == [(0, 0.0, 1.0, "a")]
    assert_accounted(result)


def test_duplicate_video_ids_keep_the_first_source(tmp_path):
    first = tmp_path / "a_caption.json"
    first.write_text(json.dumps({"v": {"start": [0], "end": [1], "text": ["from json"]}}))
    second = tmp_path / "v.srt"
    second.write_text("1\n00:00:00,000 --> 00:00:01,000\nfrom srt\n\n2\n00:00:02,000 --> 00:00:03,000\nmore\n")
    result = read_transcripts([first, second])
    assert [s.text for s in result.segments["v"]] == ["from json"]
    (problem,) = result.problems
    assert problem.segments == 2 and "already has captions from" in problem.reason
    assert_accounted(result)


def test_missing_and_utf16_files_are_reported(tmp_path):
    utf16 = tmp_path / "wide.vtt"
    utf16.write_bytes("WEBVTT\n\n00:00.000 --> 00:01.000\nhi\n".encode("utf-16"))
    result = read_transcripts([tmp_path / "absent.json", utf16])
    missing, wide = result.problems
    assert missing.reason.endswith("absent.json not found") and "UTF-16" in wide.reason
    assert result.files_read == 2 and result.files_skipped == 2


def test_unknown_format_name_is_refused():
    with pytest.raises(ValueError, match="unknown transcript format"):
        read_transcripts([], fmt="ass")


FORMAT_SAMPLES = {
    HOWTO100M: '{"clip": {"start": [1.0], "end": [2.0], "text": ["stir"]}}',
    YOUCOOK2: '{"database": {"clip": {"annotations": [{"segment": [1.0, 2.0], "sentence": "stir"}]}}}',
    VTT: "WEBVTT\n\n00:01.000 --> 00:02.000\nstir\n",
    SRT: "1\n00:00:01,000 --> 00:00:02,000\nstir\n",
    JSONL: '{"video": "clip", "start": 1.0, "end": 2.0, "text": "stir"}\n',
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_name_can_be_forced(tmp_path, fmt):
    """Each name of FORMATS (the --transcript-format choices) reads its format from a file whose name
    tells nothing, and labels the segments with that name."""
    path = tmp_path / "clip.data"
    path.write_text(FORMAT_SAMPLES[fmt])
    result = read_transcripts([path], fmt=fmt)
    (segment,) = result.segments["clip"]
    assert (segment.start, segment.end, segment.text, segment.source) == (1.0, 2.0, "stir", f"clip.data ({fmt})")


def test_the_command_line_offers_exactly_these_formats():
    import argparse

    from videobert.shards.prepare import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    choices = next(a.choices for a in parser._actions if "--transcript-format" in a.option_strings)
    assert tuple(choices) == FORMATS and set(FORMAT_SAMPLES) == set(FORMATS)


# ---------------------------------------------------------------------------------------------------
# Hostile JSON: nesting and numbers no parser should be asked to build, in every JSON reader


DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "1" * 5000


def test_deep_nesting_and_huge_numbers_cost_one_video_in_caption_json(tmp_path):
    path = tmp_path / "caption.json"
    path.write_text('{"deep": {"start": [0], "end": [1], "text": ' + DEEP + '},'
                    f' "huge": {{"start": [0, {HUGE}], "end": [1, 2], "text": ["fine", "too large"]}},'
                    ' "good": {"start": [0], "end": [1], "text": ["kept"]}}')
    result = read_transcripts([path])
    assert spans(result, "good") == [(0, 0.0, 1.0, "kept")] and spans(result, "huge") == [(0, 0.0, 1.0, "fine")]
    reasons = {p.video_id: p.reason for p in result.problems}
    assert "line 1, column 10: nested too deeply to read in the captions of video deep" in reasons["deep"]
    assert "entry 1 of huge" in reasons["huge"] and "a number too large for seconds" in reasons["huge"]
    assert result.files_skipped == 0
    assert_accounted(result)


def test_deep_nesting_and_huge_numbers_in_youcook2_jsonl_and_vtt(tmp_path):
    youcook2 = tmp_path / "youcook2.json"
    youcook2.write_text('{"database": {"deep": {"annotations": ' + DEEP + '}, "big": {"annotations": '
                        f'[{{"segment": [0, {HUGE}], "sentence": "x"}}, {{"segment": [1, 2], "sentence": "y"}}]}}}}}}')
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"video": "w", "start": 0, "end": 1, "text": ' + DEEP + '}\n'
                        f'{{"video": "w", "start": {HUGE}, "end": 1, "text": "t"}}\n'
                        '{"video": "w", "start": 1, "end": 2, "text": "kept"}\n')
    vtt = tmp_path / "talk.vtt"
    vtt.write_text(f"WEBVTT\n\n{HUGE}:00:00.000 --> 00:01.000\nabsurd hours\n")
    result = read_transcripts([youcook2, manifest, vtt])
    assert spans(result, "big") == [(0, 1.0, 2.0, "y")] and spans(result, "w") == [(0, 1.0, 2.0, "kept")]
    reasons = [p.reason for p in result.problems]
    assert any("nested too deeply" in r and "video deep" in r for r in reasons)
    assert any("m.jsonl line 1: nested too deeply to read" in r for r in reasons)
    assert any("line 2 of w" in r and "too large" in r for r in reasons)
    assert any("talk.vtt line 3, column 1" in r and "is not a timestamp" in r for r in reasons)
    assert_accounted(result)


def test_structure_breaks_name_line_and_column_and_cost_the_file(tmp_path):
    cases = {
        "unclosed.json": ('{"a": {"start": [0], "end": [1], "text": ["x"]},\n "b": {"start": [0', "line 2, column"),
        "comma.json": ('{"a": {"start": [0], "end": [1], "text": ["x"]}\n "b": {}}', "line 2, column 2: not valid JSON (Expecting ',' delimiter)"),
        "list.json": ('[{"start": [0]}]', "a HowTo100M caption file is an object of video ids, found list"),
        "extra.json": ('{"a": {"start": [0], "end": [1], "text": ["x"]}} {}', "line 1, column 50: not valid JSON (Extra data)"),
    }
    for name, (content, where) in cases.items():
        (tmp_path / name).write_text(content)
        result = read_transcripts([tmp_path / name])
        (problem,) = result.problems
        assert where in problem.reason and "none of the file's captions are used" in problem.reason, name
        assert result.segments == {} and result.files_skipped == 1


def test_caption_json_is_read_as_a_stream(tmp_path):
    from videobert.shards import json_members

    captions = {f"v{i}": {"start": [0.0, 1.5], "end": [1.5, 3.0], "text": [f"a {{{i}", "b ]\"]"]} for i in range(3000)}
    captions["nested"] = {"start": [0], "end": [1], "text": ["x"], "extra": {"deeper": [{"deepest": 1}]}}
    path = tmp_path / "caption.json"
    path.write_text(json.dumps(captions, indent=1))
    with open(path, "rb") as f:  # a window far smaller than the file: values across chunk ends
        members = list(json_members.iter_members(f, chunk_bytes=4096))
    assert [json.loads(m.key) for m in members] == list(captions)
    assert all(json.loads(m.value) == captions[json.loads(m.key)] for m in members)
    data = path.read_bytes()
    assert all(data[m.value_offset: m.value_offset + len(m.value)] == m.value for m in members)
    assert len(read_transcripts([path]).segments) == 3001


def test_a_part_reads_only_its_videos_and_the_parts_add_up(tmp_path):
    from videobert.shards.parts import Part, video_part

    data = {f"video-{i}": {"start": [0, 2], "end": [1, 3], "text": ["one", "" if i % 5 else "two"]} for i in range(40)}
    (tmp_path / "caption.json").write_text(json.dumps(data))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "solo.vtt").write_text("WEBVTT\n\n00:00.000 --> 00:01.000\nsolo\n")
    whole = read_transcripts([tmp_path])
    parts = [read_transcripts([tmp_path], part=Part(k, 3)) for k in range(3)]
    for k, part in enumerate(parts):
        assert all(video_part(v, 3) == k for v in part.segments)
        assert all(p.video_id is None and k == 0 or video_part(p.video_id, 3) == k for p in part.problems)
        assert_accounted(part)
    assert sorted(v for p in parts for v in p.segments) == sorted(whole.segments)
    assert sorted(p.reason for part in parts for p in part.problems) == sorted(p.reason for p in whole.problems)
    for name in ("segments_read", "files_read", "files_skipped"):
        assert sum(getattr(p, name) for p in parts) == getattr(whole, name), name


# ---------------------------------------------------------------------------------------------------
# What downloaders leave beside the videos


def test_language_suffixed_sidecars_match_their_video(tmp_path):
    cue = "WEBVTT\n\n00:00.000 --> 00:01.000\n{}\n"
    (tmp_path / "-dQw4w9WgXc.en.vtt").write_text(cue.format("english"))
    (tmp_path / "-dQw4w9WgXc.de.vtt").write_text(cue.format("deutsch"))
    (tmp_path / "bikes.en-US.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nbikes\n")
    (tmp_path / "plain.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nno suffix\n")
    (tmp_path / "my.video.vtt").write_text(cue.format("a dot in the id"))
    (tmp_path / "-dQw4w9WgXc.info.json").write_text(json.dumps({"id": "-dQw4w9WgXc", "title": "a video"}))
    (tmp_path / "-dQw4w9WgXc.webp").write_bytes(b"RIFF....WEBP")
    result = read_transcripts([tmp_path])
    assert {v: [s.text for s in ss] for v, ss in result.segments.items()} == {
        "-dQw4w9WgXc": ["english"], "bikes": ["bikes"], "plain": ["no suffix"], "my.video": ["a dot in the id"]}
    (problem,) = result.problems
    assert problem.video_id == "-dQw4w9WgXc" and problem.input.endswith(".de.vtt") and problem.segments == 0
    assert "in de (-dQw4w9WgXc.de.vtt) and in en (-dQw4w9WgXc.en.vtt)" in problem.reason
    assert (result.files_read, result.files_skipped, result.files_ignored) == (5, 1, 2)
    german = read_transcripts([tmp_path], language="de")
    assert [s.text for s in german.segments["-dQw4w9WgXc"]] == ["deutsch"]
    regional = read_transcripts([tmp_path / "bikes.en-US.srt", tmp_path / "plain.srt"], language="en-GB")
    assert sorted(regional.segments) == ["bikes", "plain"]
