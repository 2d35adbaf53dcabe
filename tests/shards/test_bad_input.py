"""Bad input through the whole prepare stage: each kind gets a clear errors.jsonl line, the run goes on,
and the summary adds up (segments written + skipped = read).

One run over a corpus that holds every kind of bad input at once; each test checks one policy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from videobert.shards import reader, schema
from videobert.shards.prepare import PrepareConfig, prepare

GOOD = [  # (start, end, text) for good.mp4 (3 s), in file order (entries 4 and 5 out of time order)
    (0.0, 1.0, "one"),  # 0: written, 2 clips
    (0.8, 1.5, "overlap"),  # 1: trimmed to start at 1.0
    (1.2, 1.4, "inside"),  # 2: inside segment 1: skipped
    (1.5, 1.58, "tiny"),  # 3: one frame at 10 fps: too short
    (2.0, 1.8, "reversed"),  # 5 after sorting: end <= start
    (1.6, 1.9, "   "),  # 4 after sorting: empty text
    (2.1, 3.15, "runs past the end"),  # 6: clipped to the end (3 s)
    (3.2, 4.0, "after the end"),  # 7: starts after the end
    (0.0, 0.5, "BAD_BYTES"),  # an entry whose text is not UTF-8
]
TWO = [(0.0, 1.0, "first"), (1.0, 2.0, "second")]


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, media):
    root = tmp_path_factory.mktemp("bad")
    videos, transcripts = root / "videos", root / "transcripts"
    (videos / "sub").mkdir(parents=True)
    transcripts.mkdir()
    good = media.encode(videos / "good.mp4", media.coded_frames(60))
    for name in ("subs", "malformed", "lonely", "sub/good"):
        shutil.copy(good, videos / f"{name}.mp4")
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("a shopping list, not a video\n")
    media.audio_only(videos / "podcast.mp4", 2.0)
    _cut(media.noise_video(root / "whole_fs.mp4", seconds=3, faststart=True), videos / "cut.mp4")
    _cut(media.noise_video(root / "whole.mp4", seconds=3), videos / "headless.mp4")

    captions = {"good": GOOD, "empty": TWO, "notes": TWO, "podcast": TWO, "headless": TWO, "absent": TWO,
                "cut": [(0.0, 0.5, "before the cut"), (0.5, 2.0, "across the cut"), (2.2, 2.9, "after the cut")],
                "orphan": [(0.0, 1.0, "no video has this id")]}
    data = json.dumps({vid: {"start": [c[0] for c in cs], "end": [c[1] for c in cs], "text": [c[2] for c in cs]}
                       for vid, cs in captions.items()}).encode()
    (transcripts / "caption.json").write_bytes(data.replace(b"BAD_BYTES", b"bad \xff bytes"))
    (transcripts / "bad_json.json").write_text('{"x": {"start": [0], "end": [1] "text": ["a"]}}')
    vtt = b"WEBVTT\n\n00:00.000 --> 00:01.000\nfine\n\n00:01.000 --> 00:02.000\nnot \xe9 utf8\n\n" \
          b"00:02.850 --> 00:03.500\nends after the end, too short\n"
    (transcripts / "subs.vtt").write_bytes(vtt)
    (transcripts / "malformed.vtt").write_text("WEBVTT\n\n00:00.000 --> 00:01.000\nok\n\n00:01.000 --> 00:xx.000\nbad\n")
    (transcripts / "broken.srt").write_text("1\n00:00:01,000 --> garbage\ntext\n")

    out = root / "out"
    config = PrepareConfig(
        videos=(str(videos), str(videos / "absent.mp4")), transcripts=(str(transcripts),), out=str(out),
        fps=10.0, size=32, clip_len=5, workers=2, progress=False,
    )
    summary = prepare(config)
    lines = [json.loads(line) for line in (out / schema.ERRORS_FILE).read_text().splitlines()]
    return {"out": out, "summary": summary, "lines": lines, "vtt": vtt, "caption": data, "videos": videos}


def _cut(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])


def lines_for(bad_run, video_id, segment="any"):
    return [line for line in bad_run["lines"]
            if line["video_id"] == video_id and (segment == "any" or line["segment"] == segment)]


def one_line(bad_run, video_id, segment="any"):
    found = lines_for(bad_run, video_id, segment)
    assert len(found) == 1, found
    return found[0]


def test_the_summary_adds_up(bad_run):
    s = bad_run["summary"]
    assert s.segments_read == 9 + 5 * 2 + 3 + 1 + 3  # caption.json entries + subs.vtt cues; broken files: 0
    assert s.segments_written + s.segments_skipped == s.segments_read
    assert s.segments_skipped == sum(line["segments"] for line in bad_run["lines"] if line["action"] == "skipped")
    written = reader.iter_samples(reader.resolve_shards(bad_run["out"]))
    assert sum(1 for _ in written) == s.segments_written
    assert s.videos_read == 12 and s.videos_with_samples == 3 and s.videos_skipped == 9
    # bad_json.json is not skipped whole: its one video's captions are not valid JSON, and cost that video
    assert (s.transcript_files_read, s.transcript_files_skipped) == (5, 2)
    assert not list(bad_run["out"].glob("*.partial"))  # no spool or unfinished file left behind
    for line in bad_run["lines"]:
        assert set(line) == {"input", "video_id", "segment", "reason", "action", "segments", "video_order"}
        assert line["action"] in ("skipped", "trimmed", "clipped", "sorted")


def test_missing_file(bad_run):
    line = one_line(bad_run, "absent")
    assert line["reason"].endswith("absent.mp4 not found; 2 caption segments are skipped")
    assert line["segments"] == 2 and line["action"] == "skipped" and line["input"].endswith("absent.mp4")


def test_zero_byte_file(bad_run):
    line = one_line(bad_run, "empty")
    assert "is empty (0 bytes)" in line["reason"] and line["segments"] == 2


def test_text_file_named_mp4(bad_run):
    line = one_line(bad_run, "notes")
    assert "notes.mp4 is not a video ffmpeg can decode" in line["reason"] and line["segments"] == 2


def test_audio_only_file(bad_run):
    line = one_line(bad_run, "podcast")
    assert "has no video stream" in line["reason"] and line["segments"] == 2


def test_mp4_truncated_before_its_index(bad_run):
    line = one_line(bad_run, "headless")
    assert "moov atom not found" in line["reason"] and line["segments"] == 2


def test_mp4_truncated_in_its_media_data_keeps_the_frames_before(bad_run):
    written = [s for s in reader.iter_samples(reader.resolve_shards(bad_run["out"])) if s.meta.video_id == "cut"]
    assert written and written[0].meta.segment_index == 0 and written[0].meta.n_clips == 1
    video_line = one_line(bad_run, "cut", None)
    assert "ended with errors after" in video_line["reason"] and video_line["action"] == "clipped"
    assert "the frames decoded are used" in video_line["reason"]
    after = one_line(bad_run, "cut", 2)
    assert "starts after the last frame decoded from the damaged file" in after["reason"]
    across = one_line(bad_run, "cut", 1)
    assert "damaged file" in across["reason"] and across["action"] in ("clipped", "skipped")
    assert len(written) == 1 + (across["action"] == "clipped")


def test_captions_past_the_end_of_the_video(bad_run):
    clipped = one_line(bad_run, "good", 6)
    assert clipped["action"] == "clipped" and clipped["segments"] == 1
    assert clipped["reason"] == "segment 6 of good (2.1-3.15 s): ends after the end of the video (3.0 s); clipped to it (2 clips)"
    after = one_line(bad_run, "good", 7)
    assert after["reason"] == "segment 7 of good (3.2-4.0 s): starts after the end of the video (3.0 s)"
    too_short = one_line(bad_run, "subs", 1)  # the non-UTF-8 cue has no index
    assert "ends after the end of the video (3.0 s); the rest covers 1 frame at 10 fps, fewer than the 3" in too_short["reason"]
    samples = {(s.meta.video_id, s.meta.segment_index): s for s in reader.iter_samples(reader.resolve_shards(bad_run["out"]))}
    clipped_sample = samples[("good", 6)]
    assert clipped_sample.meta.end == 3.0 and clipped_sample.meta.n_clips == 2
    assert clipped_sample.meta.extra == {"padded_frames": 1}


def test_end_before_start(bad_run):
    line = one_line(bad_run, "good", 5)
    assert line["reason"] == "segment 5 of good (2.0-1.8 s): end <= start" and line["action"] == "skipped"


def test_overlapping_segments(bad_run):
    trimmed = one_line(bad_run, "good", 1)
    assert trimmed["action"] == "trimmed" and "trimmed to start at 1.0 s" in trimmed["reason"]
    inside = one_line(bad_run, "good", 2)
    assert inside["action"] == "skipped" and "lies inside segment 1 (1.0-1.5 s)" in inside["reason"]
    samples = [s for s in reader.iter_samples(reader.resolve_shards(bad_run["out"])) if s.meta.video_id == "good"]
    frames = [range(s.meta.first_frame, s.meta.first_frame + s.meta.n_clips * 5) for s in samples]
    assert all(a.stop <= b.start for a, b in zip(frames, frames[1:]))  # no frame in two samples


def test_unsorted_segments(bad_run):
    (line,) = [line for line in lines_for(bad_run, "good", None) if line["action"] == "sorted"]
    assert line["reason"] == "2 of the 8 segments of good were out of time order; sorted by start time"
    assert line["segments"] == 2 and line["input"].endswith("caption.json")


def test_empty_text_and_too_short_segments(bad_run):
    assert one_line(bad_run, "good", 4)["reason"] == "segment 4 of good (1.6-1.9 s): text is empty"
    tiny = one_line(bad_run, "good", 3)
    assert "(1.5-1.58 s) covers 1 frame at 10 fps, fewer than the 3 that make a clip" in tiny["reason"]


def test_invalid_utf8_in_a_transcript(bad_run):
    json_line = [line for line in lines_for(bad_run, "good") if "UTF-8" in line["reason"]]
    offset = bad_run["caption"].index(b"BAD_BYTES") + len(b"bad ")
    assert len(json_line) == 1 and f"byte offset {offset}" in json_line[0]["reason"]
    vtt_line = one_line(bad_run, "subs", None)
    vtt_offset = bad_run["vtt"].index(bytes([0xE9]))
    assert f"invalid UTF-8 at byte offset {vtt_offset}" in vtt_line["reason"]
    assert vtt_line["segments"] == 1 and vtt_line["input"].endswith("subs.vtt")


def test_malformed_json_vtt_and_srt(bad_run):
    by_input = {Path(line["input"]).name: line for line in bad_run["lines"] if line["segments"] == 0 and line["video_order"] is None}
    assert "bad_json.json line 1, column 33: not valid JSON" in by_input["bad_json.json"]["reason"]
    assert "broken.srt line 2, column 18: 'garbage' is not a timestamp" in by_input["broken.srt"]["reason"]
    vtt = [line for line in lines_for(bad_run, "malformed")]
    assert "malformed.vtt line 6, column 15" in vtt[0]["reason"] and "none of the file's captions are used" in vtt[0]["reason"]
    assert "no transcript gives captions for video malformed" in vtt[1]["reason"]


def test_unmatched_ids_on_either_side_and_duplicate_files(bad_run):
    orphan = one_line(bad_run, "orphan")
    assert orphan["video_order"] is None and orphan["segments"] == 1
    assert "no video file named orphan among the --videos inputs" in orphan["reason"]
    lonely = one_line(bad_run, "lonely")
    assert lonely["reason"] == "no transcript gives captions for video lonely" and lonely["segments"] == 0
    duplicate = [line for line in lines_for(bad_run, "good") if "already taken" in line["reason"]]
    assert len(duplicate) == 1 and duplicate[0]["input"].endswith("sub/good.mp4")


def test_lines_follow_the_video_order(bad_run):
    orders = [line["video_order"] for line in bad_run["lines"]]
    first_ordered = next(i for i, order in enumerate(orders) if order is not None)
    assert all(order is None for order in orders[:first_ordered])
    assert orders[first_ordered:] == sorted(orders[first_ordered:])
