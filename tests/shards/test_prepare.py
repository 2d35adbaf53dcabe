"""The prepare stage end to end, and the shard writer under it: round trip through webdataset's reader,
frame-exact samples, determinism, rotation, resuming after an interruption (a real kill included)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from videobert.shards import reader, schema
from videobert.shards.prepare import ArgumentsError, PrepareConfig, prepare
from videobert.shards.writer import ResumeError, ShardStats, ShardWriter, encode_members, resume_point, tar_writer
from videobert.trainer import cli

# What the corpus fixture's captions become at 10 fps, clips of 5 frames, partial clips of >= 3 frames:
# (video, segment index, first frame, frames used, clips, padded frames)
EXPECTED = [
    ("alpha", 0, 0, 10, 2, 0), ("alpha", 1, 10, 13, 3, 2), ("alpha", 2, 23, 5, 1, 0),
    ("beta", 0, 5, 10, 2, 0), ("beta", 1, 15, 15, 3, 0),
    ("gamma", 0, 0, 20, 4, 0),
]
TAGS = {"alpha": 0, "beta": 80, "gamma": 160}  # red level of each corpus video


def samples_of(folder: Path) -> list[schema.Sample]:
    return list(reader.iter_samples(reader.resolve_shards(folder)))


def tar_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in schema.complete_shards(folder)}


def stats_without_timing(folder: Path) -> list[dict]:
    stats = []
    for tar in schema.complete_shards(folder):
        data = json.loads(schema.stats_path(tar).read_text())
        data["state"].pop("wall_seconds")
        stats.append(data)
    return stats


def summary_without_timing(folder: Path) -> dict:
    data = json.loads((folder / schema.SUMMARY_FILE).read_text())
    return {k: v for k, v in data.items() if k not in ("wall_seconds", "frames_per_second")}


# ---------------------------------------------------------------------------------------------------
# The stage


def test_samples_round_trip_with_frame_exact_clips(prepared, media):
    samples = samples_of(prepared)
    assert [(s.meta.video_id, s.meta.segment_index) for s in samples] == [e[:2] for e in EXPECTED]
    texts = {("alpha", 1): "second step", ("gamma", 0): "gamma only"}
    for sample, (video, index, first, used, n_clips, padded) in zip(samples, EXPECTED):
        meta = sample.meta
        assert sample.key == schema.make_key(video, index) and "." not in sample.key
        assert (meta.first_frame, meta.n_clips, meta.clip_len, meta.fps) == (first, n_clips, 5, 10.0)
        assert meta.frame_size == (32, 32) and meta.source == "caption.json (howto100m)"
        assert meta.extra == ({"padded_frames": padded} if padded else {})
        assert sample.frames.shape == (n_clips, 5, 32, 32, 3) and sample.frames.dtype == np.uint8
        # Frame k (10 fps) of a 20 fps time-coded source shows source frame 2k; padding repeats the last.
        expected = [2 * (first + i) for i in range(used)] + [2 * (first + used - 1)] * padded
        assert media.levels(sample.frames) == expected
        assert abs(float(sample.frames[..., 0].mean()) - TAGS[video]) < 3
        if (video, index) in texts:
            assert sample.text == texts[(video, index)]


def test_summary_stats_and_files(prepared):
    summary = json.loads((prepared / schema.SUMMARY_FILE).read_text())
    assert summary["segments_read"] == summary["segments_written"] == 6 and summary["segments_skipped"] == 0
    assert summary["videos_read"] == summary["videos_with_samples"] == 3
    assert summary["clips"] == sum(e[4] for e in EXPECTED) and summary["shards"] == 3
    # Decoding stops after each video's last used frame: alpha 28, beta 30, gamma 20 frames.
    assert summary["frames_decoded"] == 78 and summary["hours_decoded"] == pytest.approx(7.8 / 3600)
    stats = [ShardStats.read(schema.stats_path(t)) for t in schema.complete_shards(prepared)]
    assert [s.samples for s in stats] == [2, 2, 2]
    assert [s.first_position for s in stats] == [(0, 0), (0, 2), (1, 1)]
    assert [s.last_position for s in stats] == [(0, 1), (1, 0), (2, 0)]
    assert all(s.bytes == (prepared / s.shard).stat().st_size for s in stats)
    assert stats[0].extra == {"kind": "clips", "fps": 10.0, "clip_len": 5, "frame_size": [32, 32]}
    assert (prepared / schema.ERRORS_FILE).read_text() == ""
    run = json.loads((prepared / schema.RUN_FILE).read_text())
    assert run["arguments"]["fps"] == 10.0 and run["arguments"]["min_last_clip"] == 3
    assert not list(prepared.glob("*.partial"))


def test_same_bytes_whatever_the_number_of_workers(prepared, corpus, corpus_config_for, tmp_path):
    prepare(corpus_config_for(corpus, tmp_path / "one", workers=1))
    assert tar_bytes(tmp_path / "one") == tar_bytes(prepared)
    assert stats_without_timing(tmp_path / "one") == stats_without_timing(prepared)


def test_shards_rotate_by_bytes(corpus, corpus_config_for, tmp_path):
    limit = 80_000
    prepare(corpus_config_for(corpus, tmp_path / "out", max_samples=None, max_bytes=limit))
    stats = [ShardStats.read(schema.stats_path(t)) for t in schema.complete_shards(tmp_path / "out")]
    assert len(stats) > 2 and sum(s.samples for s in stats) == 6
    assert all(s.bytes <= limit or s.samples == 1 for s in stats)
    assert any(s.samples > 1 for s in stats)


def test_uncropped_frames_keep_the_aspect_ratio(corpus, corpus_config_for, tmp_path):
    prepare(corpus_config_for(corpus, tmp_path / "out", crop="none", workers=1))
    sample = samples_of(tmp_path / "out")[0]
    assert sample.meta.frame_size == (32, 43) and sample.frames.shape == (2, 5, 32, 43, 3)  # 64x48 scaled


def test_rerun_with_the_same_arguments_changes_nothing(prepared, corpus, corpus_config_for):
    before = {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()}
    summary = prepare(corpus_config_for(corpus, prepared))
    assert summary.segments_written == 6
    assert {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()} == before


def test_rerun_with_other_arguments_names_them(prepared, corpus, corpus_config_for, tmp_path):
    with pytest.raises(ArgumentsError) as caught:
        prepare(corpus_config_for(corpus, prepared, fps=12.0, clip_len=6))
    message = str(caught.value)
    assert "--fps was 10.0, now 12.0" in message and "--clip-len was 5, now 6" in message
    assert "--overwrite" in message and "--size" not in message
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    summary = prepare(corpus_config_for(corpus, copy, clip_len=6, overwrite=True))
    assert summary.segments_written == 6 and {s.meta.clip_len for s in samples_of(copy)} == {6}


def test_changed_inputs_are_refused(corpus, corpus_config_for, tmp_path):
    videos = tmp_path / "videos"
    shutil.copytree(corpus / "videos", videos)
    config = corpus_config_for(corpus, tmp_path / "out", videos=(str(videos),))
    prepare(config)
    shutil.copy(videos / "alpha.mp4", videos / "delta.mp4")
    with pytest.raises(ArgumentsError, match="video or transcript files found changed"):
        prepare(config)


def test_config_collects_every_problem(tmp_path):
    with pytest.raises(ArgumentsError) as caught:
        PrepareConfig(videos=(), transcripts=("t",), out=str(tmp_path), fps=0, clip_len=5, min_last_clip=9, crop="wide")
    message = str(caught.value)
    for part in ("no --videos", "--fps must be positive", "--min-last-clip must be between 1 and --clip-len (5)", "--crop"):
        assert part in message


def test_command_line_exit_codes_and_printed_summary(corpus, tmp_path, capsys):
    common = ["prepare", "--transcripts", str(corpus / "caption.json"), "--fps", "10", "--size", "32",
              "--clip-len", "5", "--workers", "1", "--no-progress"]
    assert cli.main(["shards", *common, "--videos", str(corpus / "videos"), "--out", str(tmp_path / "ok")]) == 0
    printed = capsys.readouterr().out
    assert "segments  read 6 = written 6 + skipped 0" in printed and "shards 1, samples 6, clips 15" in printed
    assert cli.main(["shards", *common, "--videos", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "empty")]) == 1
    assert "nothing could be written" in capsys.readouterr().out
    assert cli.main(["shards", *common, "--videos", str(corpus / "videos"), "--out", str(tmp_path / "bad"), "--fps", "-1"]) == 2
    assert "--fps must be positive" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Resuming


def resume_captions(corpus: Path, folder: Path) -> Path:
    """The corpus captions plus a too-short segment per video (so every video has errors.jsonl lines)."""
    captions = json.loads((corpus / "caption.json").read_text())
    for entry in captions.values():
        entry["start"].append(2.96)
        entry["end"].append(2.99)
        entry["text"].append("too short")
    path = folder / "caption.json"
    path.write_text(json.dumps(captions))
    return path


def test_resume_finishes_an_interrupted_run_with_the_same_bytes(corpus, corpus_config_for, tmp_path):
    transcripts = (str(resume_captions(corpus, tmp_path)),)
    reference, broken = tmp_path / "reference", tmp_path / "broken"
    prepare(corpus_config_for(corpus, reference, transcripts=transcripts, max_samples=1))
    shutil.copytree(reference, broken)
    # The state a kill leaves: shards 0-3 complete (shard 3 ends inside video 1), shard 4 renamed but
    # without stats, shard 5 half written, a worker's spool, no summary; errors.jsonl lists every video.
    for name in ("shard-000004.stats.json", "shard-000005.tar", "shard-000005.stats.json", schema.SUMMARY_FILE):
        (broken / name).unlink()
    (broken / "shard-000005.tar.partial").write_bytes(b"half a tar")
    (broken / "spool-000000002.tar.partial").write_bytes(b"spooled")
    point = resume_point(broken)
    assert (point.next_index, point.last_position) == (4, (1, 0))
    assert sorted(p.name for p in broken.glob("shard-*")) == [f"shard-00000{i}.{x}" for i in range(4) for x in ("stats.json", "tar")]
    summary = prepare(corpus_config_for(corpus, broken, transcripts=transcripts, max_samples=1))
    assert summary.segments_written == 6 and summary.segments_skipped == 3
    assert tar_bytes(broken) == tar_bytes(reference)
    assert stats_without_timing(broken) == stats_without_timing(reference)
    assert (broken / schema.ERRORS_FILE).read_text() == (reference / schema.ERRORS_FILE).read_text()
    assert summary_without_timing(broken) == summary_without_timing(reference)


def test_resume_after_a_real_kill(corpus, corpus_config_for, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    captions = {}
    for i in range(8):
        shutil.copy(corpus / "videos" / ["alpha.mp4", "beta.mp4", "gamma.mp4"][i % 3], videos / f"v{i}.mp4")
        captions[f"v{i}"] = {"start": [0.0, 1.0, 2.0], "end": [1.0, 2.0, 3.0], "text": ["one", "two", "three"]}
    (tmp_path / "caption.json").write_text(json.dumps(captions))
    config = corpus_config_for(corpus, tmp_path / "killed", videos=(str(videos),),
                               transcripts=(str(tmp_path / "caption.json"),), max_samples=1)
    command = [sys.executable, "-m", "videobert.trainer.cli", "shards", "prepare", "--videos", str(videos), "--transcripts",
               str(tmp_path / "caption.json"), "--out", config.out, "--fps", "10", "--size", "32",
               "--clip-len", "5", "--max-samples", "1", "--workers", "2", "--no-progress"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = tmp_path / "killed"
    deadline = time.monotonic() + 120
    while not list(killed.glob("*.stats.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # the stage, its workers and their ffmpeg processes
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert not (killed / schema.SUMMARY_FILE).exists(), "the run finished before it could be interrupted"
    for tar in reader.resolve_shards(killed):  # whatever a reader takes for a shard is whole
        assert len(list(reader.iter_samples([tar]))) == reader.read_stats(tar)["samples"]
    prepare(config)
    prepare(corpus_config_for(corpus, tmp_path / "whole", videos=config.videos, transcripts=config.transcripts,
                              max_samples=1))
    assert len(tar_bytes(killed)) == 24 and tar_bytes(killed) == tar_bytes(tmp_path / "whole")
    assert summary_without_timing(killed) == summary_without_timing(tmp_path / "whole")


# ---------------------------------------------------------------------------------------------------
# The shard writer


def make_sample(i: int, n_clips: int = 1, kind: str = schema.CLIP_KIND) -> schema.Sample:
    meta = schema.SampleMeta(
        video_id=f"video.{i}", segment_index=i, start=float(i), end=i + 1.5, fps=10.0, clip_len=2,
        frame_size=(4, 6), n_clips=n_clips, first_frame=10 * i, source="caption.json (howto100m)", kind=kind,
        codebook_hash="abc123" if kind == schema.TOKEN_KIND else None,
    )
    if kind == schema.TOKEN_KIND:
        return schema.Sample(key=schema.make_key(meta.video_id, i), text=f"tokens {i}", meta=meta,
                             tokens=np.arange(n_clips, dtype=np.int32) + i)
    frames = np.random.default_rng(i).integers(0, 256, (n_clips, 2, 4, 6, 3), dtype=np.uint8)
    return schema.Sample(key=schema.make_key(meta.video_id, i), text=f"caption {i} é", meta=meta, frames=frames)


def test_writer_output_is_what_webdataset_writes(tmp_path):
    samples = [make_sample(i, n_clips=1 + i % 3) for i in range(5)]
    with ShardWriter(tmp_path, max_samples=10) as writer:
        for i, sample in enumerate(samples):
            writer.write(sample, (0, i))
    expected = io.BytesIO()
    with wds.TarWriter(expected, encoder=False, mtime=0, user="videobert", group="videobert") as plain:
        for sample in samples:
            plain.write(schema.encode_sample(sample))
    assert (tmp_path / "shard-000000.tar").read_bytes() == expected.getvalue()


def test_schema_round_trip_through_webdataset_reader(tmp_path):
    written = [make_sample(0, 2), make_sample(1, 3, schema.TOKEN_KIND)]
    with ShardWriter(tmp_path) as writer:
        for i, sample in enumerate(written):
            writer.write(sample, (i,))
    read = samples_of(tmp_path)
    assert [s.key for s in read] == [s.key for s in written]
    assert read[0].meta == written[0].meta and read[0].text == written[0].text
    np.testing.assert_array_equal(read[0].frames, written[0].frames)
    np.testing.assert_array_equal(read[1].tokens, written[1].tokens)
    assert read[1].frames is None and read[1].meta.codebook_hash == "abc123"


def test_encode_array_writes_exactly_what_numpy_saves():
    for array in (np.zeros((2, 3, 4, 5, 3), np.uint8), np.arange(5, dtype=np.int32), np.ones((3, 7), np.float16),
                  np.zeros((0,), np.int32), np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))):
        saved = io.BytesIO()
        np.save(saved, np.ascontiguousarray(array), allow_pickle=False)
        assert schema.encode_array(array) == saved.getvalue()


def test_writer_rotates_and_records_positions_state_and_extras(tmp_path):
    with ShardWriter(tmp_path, max_samples=2, extra={"kind": "clips"}) as writer:
        for i in range(5):
            writer.write(make_sample(i), (7, i), state={"done": i})
    stats = [ShardStats.read(schema.stats_path(t)) for t in schema.complete_shards(tmp_path)]
    assert [s.samples for s in stats] == [2, 2, 1]
    assert [(s.first_position, s.last_position) for s in stats] == [((7, 0), (7, 1)), ((7, 2), (7, 3)), ((7, 4), (7, 4))]
    assert [s.state for s in stats] == [{"done": 1}, {"done": 3}, {"done": 4}]
    assert all(s.extra == {"kind": "clips"} for s in stats)
    assert [len(list(reader.iter_samples([str(t)]))) for t in schema.complete_shards(tmp_path)] == [2, 2, 1]


def test_writer_rotates_by_bytes_and_alone_when_too_big(tmp_path):
    small, big = encode_members(make_sample(0)), encode_members(make_sample(1, n_clips=400))
    with ShardWriter(tmp_path, max_bytes=20480) as writer:
        writer.write_members(small, (0,), clips=1)
        writer.write_members(big, (1,), clips=400)
        writer.write_members(small, (2,), clips=1)
        writer.write_members(small, (3,), clips=1)
    sizes = [(t.stat().st_size, ShardStats.read(schema.stats_path(t)).samples) for t in schema.complete_shards(tmp_path)]
    assert [n for _, n in sizes] == [1, 1, 2] and sizes[1][0] > 20480 and sizes[2][0] <= 20480


def test_writer_refuses_positions_that_do_not_increase(tmp_path):
    with pytest.raises(ValueError, match="must increase"):
        with ShardWriter(tmp_path) as writer:
            writer.write(make_sample(0), (1, 5))
            writer.write(make_sample(1), (1, 5))
    assert list(tmp_path.glob("*.tar")) == [] and len(list(tmp_path.glob("*.partial"))) == 1


def test_resume_point_cleans_leftovers_and_checks_the_sequence(tmp_path):
    assert resume_point(tmp_path).next_index == 0 and resume_point(tmp_path).last_position is None
    with ShardWriter(tmp_path, max_samples=1) as writer:
        for i in range(3):
            writer.write(make_sample(i), (i, 0), state={"i": i})
    schema.stats_path(tmp_path / "shard-000002.tar").unlink()
    (tmp_path / "shard-000003.tar.partial").write_bytes(b"x")
    point = resume_point(tmp_path)
    assert (point.next_index, point.last_position, point.last_state) == (2, (1, 0), {"i": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shard-000000.stats.json", "shard-000000.tar", "shard-000001.stats.json", "shard-000001.tar"]
    (tmp_path / "shard-000000.tar").unlink()
    schema.stats_path(tmp_path / "shard-000000.tar").unlink()
    with pytest.raises(ResumeError, match="shard-000000.tar is missing before shard-000001.tar"):
        resume_point(tmp_path)


def test_tar_writer_writes_what_webdataset_writes():
    sample = schema.encode_sample(make_sample(3, 2))
    ours, theirs = io.BytesIO(), io.BytesIO()
    writer = tar_writer(ours)
    writer.write(sample)
    writer.close()
    plain = wds.TarWriter(theirs, encoder=False, mtime=0, user="videobert", group="videobert")
    plain.write(sample)
    plain.close()
    assert ours.getvalue() == theirs.getvalue()


def test_a_downloaders_folder_as_videos_and_transcripts(media, tmp_path):
    """yt-dlp's layout: VIDEO_ID.mp4 beside VIDEO_ID.LANG.vtt, .info.json and a thumbnail, ids that start with
    '-' (which ffmpeg must not take for an option); one folder given as both --videos and --transcripts."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    cue = "WEBVTT\n\n00:00.000 --> 00:01.000\n{}\n\n00:01.000 --> 00:02.000\nmore {}\n"
    for tag, video_id in enumerate(["-Xb3_kQ9mZc", "aBc-123_xyZ"]):
        media.encode(folder / f"{video_id}.mp4", media.coded_frames(60, tag=100 * tag))
        (folder / f"{video_id}.en.vtt").write_text(cue.format("english", tag))
        (folder / f"{video_id}.info.json").write_text(json.dumps({"id": video_id, "duration": 3}))
        (folder / f"{video_id}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a picture")
    (folder / "-Xb3_kQ9mZc.fr.vtt").write_text(cue.format("francais", 0))
    summary = prepare(PrepareConfig(videos=(str(folder),), transcripts=(str(folder),), out=str(tmp_path / "out"),
                                    fps=10.0, size=32, clip_len=5, workers=1, progress=False))
    samples = samples_of(tmp_path / "out")
    assert sorted((s.meta.video_id, s.text) for s in samples) == [
        ("-Xb3_kQ9mZc", "english"), ("-Xb3_kQ9mZc", "more 0"), ("aBc-123_xyZ", "english"), ("aBc-123_xyZ", "more 1")]
    assert all(s.frames.shape == (2, 5, 32, 32, 3) for s in samples)
    assert (summary.files_ignored, summary.transcript_files_read, summary.transcript_files_skipped) == (4, 3, 1)
    (line,) = [json.loads(x) for x in (tmp_path / "out" / schema.ERRORS_FILE).read_text().splitlines()]
    assert line["input"].endswith("-Xb3_kQ9mZc.fr.vtt") and "--language en" in line["reason"]


def test_spooled_members_are_the_bytes_webdataset_writes(tmp_path):
    """Workers write frames straight from their arrays (no copy into one bytes object): same bytes."""
    from videobert.shards.writer import SampleSpool

    samples = [make_sample(i, n_clips=1 + i % 3) for i in range(4)]
    spool = SampleSpool(tmp_path / "spool.tar")
    spooled = [spool.add(sample) for sample in samples]
    spool.close()
    data = (tmp_path / "spool.tar").read_bytes()
    for sample, where in zip(samples, spooled):
        assert data[where.offset: where.offset + where.length] == encode_members(sample)


# ---------------------------------------------------------------------------------------------------
# Compressed clip shards


def test_prepare_stores_frames_compressed_and_reads_them_back(prepared, corpus, corpus_config_for, tmp_path):
    raw = {s.key: s for s in samples_of(prepared)}
    raw_bytes = sum(p.stat().st_size for p in schema.complete_shards(prepared))
    for codec in ("png", "jpeg"):
        out = tmp_path / codec
        prepare(corpus_config_for(corpus, out, frame_codec=codec))
        found = {s.key: s for s in samples_of(out)}
        assert found.keys() == raw.keys()
        for key, sample in found.items():
            assert sample.frame_codec == codec and sample.meta == raw[key].meta and sample.text == raw[key].text
            error = np.abs(sample.frames.astype(int) - raw[key].frames).mean()
            assert error == 0 if codec == "png" else error < 4, (codec, key, error)
        assert json.loads((out / schema.RUN_FILE).read_text())["arguments"]["frame_codec"] == codec
        assert sum(p.stat().st_size for p in schema.complete_shards(out)) < raw_bytes
    with pytest.raises(ArgumentsError, match="--frame-codec was 'jpeg', now 'raw'"):
        prepare(corpus_config_for(corpus, tmp_path / "jpeg"))
    with pytest.raises(ArgumentsError, match="--frame-codec must be one of raw, jpeg, png"):
        corpus_config_for(corpus, tmp_path / "other", frame_codec="gif")


def _compressed_raw(codec: str = "png") -> tuple[schema.Sample, dict]:
    meta = schema.SampleMeta(video_id="v", segment_index=0, start=0.0, end=1.0, fps=4.0, clip_len=2,
                             frame_size=(8, 6), n_clips=2, first_frame=0, source="t.json")
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 2, 8, 6, 3), dtype=np.uint8)
    sample = schema.Sample(key="v_0", text="a caption", meta=meta, frames=frames, frame_codec=codec)
    raw = {"__url__": "shard-000000.tar", **schema.encode_sample(sample)}
    return sample, raw


def test_damaged_compressed_frames_are_refused_naming_the_frame():
    sample, raw = _compressed_raw()
    assert np.array_equal(schema.decode_sample(raw).frames, sample.frames)
    lengths = np.load(io.BytesIO(raw[schema.FRAME_IMAGE_BYTES]))
    images = bytearray(raw[schema.FRAME_IMAGES])
    header = len(images) - int(lengths.sum())
    start = header + int(lengths[:2].sum())  # the third image
    damaged = bytes(images[:start]) + b"\0" * 16 + bytes(images[start + 16:])
    with pytest.raises(schema.ShardFormatError, match=r"shard-000000.tar:v_0: frame 2 is not a readable"):
        schema.decode_sample({**raw, schema.FRAME_IMAGES: damaged})
    shorter = schema.encode_array(lengths - np.eye(1, len(lengths), 0, dtype=np.int64)[0])
    with pytest.raises(schema.ShardFormatError, match="lists 4 images of .* bytes in all"):
        schema.decode_sample({**raw, schema.FRAME_IMAGE_BYTES: shorter})
    without = {k: v for k, v in raw.items() if k != schema.FRAME_IMAGE_BYTES}
    with pytest.raises(schema.ShardFormatError, match="compressed frames without their"):
        schema.decode_sample(without)
    both = {**raw, schema.FRAMES: schema.encode_array(sample.frames)}
    with pytest.raises(schema.ShardFormatError, match="holds both frames.npy and frames.images.npy"):
        schema.decode_sample(both)
    other_size = dataclasses.replace(sample, meta=dataclasses.replace(sample.meta, frame_size=(6, 8)),
                                     frames=sample.frames.transpose(0, 1, 3, 2, 4).copy())
    swapped = {**raw, schema.META: other_size.meta.to_json()}
    with pytest.raises(schema.ShardFormatError, match="frame 0 is a 6x8 image in mode RGB, expected 8x6 RGB"):
        schema.decode_sample(swapped)
    huge = dataclasses.replace(sample.meta, frame_size=(60000, 60000))
    with pytest.raises(schema.ShardFormatError, match="would decode to more than"):
        schema.decode_sample({**raw, schema.META: huge.to_json()})
