"""Decoding with ffmpeg: frame-exact timing, geometry, streaming, and the errors bad files raise."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from videobert.shards.decode import (
    EMPTY, MISSING, NO_VIDEO, UNREADABLE, DecodeError, DecodeOptions, VideoDecoder, ffmpeg_command, iter_frames,
    parse_crop,
)
from videobert.shards.ffmpeg_bin import ffmpeg_exe
from videobert.shards.prepare import PrepareConfig, default_decode_threads
from videobert.shards.ranks import available_cpus


def decode(path, fps=20.0, size=32, crop=(32, 32)) -> np.ndarray:
    # Time-coded videos are 64x48: size 32 makes ffmpeg scale, whose colour conversion is exact to a
    # level or so (its conversion without scaling is off by up to 3 levels, too much for the code).
    return np.stack(list(iter_frames(path, DecodeOptions(fps=fps, size=size, crop=crop))))


@pytest.mark.parametrize("fps", [20, 10, 8, 7, 30])
def test_frame_k_is_the_picture_on_show_at_k_over_fps(time_video, media, fps):
    """Source: 20 fps, frame j coded in its pixels. Frame k must be the last source frame at or before
    k / fps (frame j is on show from j / 20 s), for rates that divide 20, that do not, and above it."""
    levels = media.levels(decode(time_video, fps=fps))
    assert len(levels) == 3 * fps
    assert levels == [min(59, (k * 20) // fps) for k in range(len(levels))]


def test_late_video_stream_is_padded_to_the_file_timeline(tmp_path, time_video, media):
    """A video stream starting 0.5 s after the audio: frame k is still the picture at k / fps."""
    shifted = tmp_path / "late.mkv"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=4",
         "-itsoffset", "0.5", "-i", str(time_video), "-map", "0:a", "-map", "1:v", "-c:v", "copy",
         "-c:a", "pcm_s16le", str(shifted)],
        check=True,
    )
    levels = media.levels(decode(shifted, fps=10))
    assert levels[:6] == [0] * 6  # 0 - 0.5 s: the first picture, repeated
    assert levels[5:30] == [2 * (k - 5) for k in range(5, 30)]


def test_scale_short_side_and_crops(tmp_path, media):
    frames = np.zeros((4, 48, 96, 3), dtype=np.uint8)  # thirds: red | green | blue
    frames[:, :, :32, 0] = 255
    frames[:, :, 32:64, 1] = 255
    frames[:, :, 64:, 2] = 255
    path = media.encode(tmp_path / "thirds.mp4", frames)
    centre = decode(path, size=24, crop=(24, 24))[0]  # 48x24 after scaling, columns 12-36 kept
    assert centre.shape == (24, 24, 3)
    assert tuple(centre[12, 12]) > (0, 200, 0) and centre[12, 12, 0] < 60 and centre[12, 12, 2] < 60
    assert centre[12, 1, 0] > 200 and centre[12, 22, 2] > 200  # the red and blue thirds at the edges
    whole = decode(path, size=24, crop=None)
    assert whole.shape == (4, 24, 48, 3)
    assert decode(path, size=24, crop=(20, 40)).shape == (4, 20, 40, 3)
    portrait = media.encode(tmp_path / "tall.mp4", np.zeros((2, 64, 48, 3), dtype=np.uint8))
    assert decode(portrait, size=24, crop=None).shape == (2, 32, 24, 3)


def test_parse_crop():
    assert parse_crop("center", 224) == (224, 224)
    assert parse_crop("none", 224) is None
    assert parse_crop("224x398", 224) == (224, 398)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_crop("wide", 224)


def test_stopping_early_ends_ffmpeg(time_video):
    decoder = VideoDecoder(time_video, DecodeOptions(fps=20, size=32, crop=(32, 32)))
    for k, _ in enumerate(decoder):
        if k == 2:
            break
    assert decoder.frames_read == 3
    decoder.process.wait(timeout=10)
    assert decoder.process.poll() is not None and decoder.damage is None


def test_frames_stream_one_at_a_time(time_video):
    frames = iter_frames(time_video, DecodeOptions(fps=20, size=32, crop=(32, 32)))
    first = next(frames)
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    frames.close()


def test_command_reads_first_video_stream_only():
    command = ffmpeg_command("in.mp4", DecodeOptions(fps=20, size=224, crop=(224, 224)))
    graph = command[command.index("-filter_complex") + 1]
    assert graph.startswith("[0:v:0]fps=") and "round=up" in graph and "start_time=0" in graph
    assert command[-1] == "pipe:" and "rgb24" in command


def test_missing_empty_and_text_files(tmp_path):
    options = DecodeOptions(fps=10, size=32, crop=(32, 32))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("these are my cooking notes, not a video\n")
    cases = {"absent.mp4": (MISSING, "not found"), "empty.mp4": (EMPTY, r"empty \(0 bytes\)"),
             "notes.mp4": (UNREADABLE, "is not a video ffmpeg can decode")}
    for name, (kind, words) in cases.items():
        with pytest.raises(DecodeError, match=words) as caught:
            list(iter_frames(tmp_path / name, options))
        assert caught.value.kind == kind and caught.value.path.endswith(name)


def test_audio_only_file(tmp_path, media):
    path = media.audio_only(tmp_path / "podcast.mp4")
    with pytest.raises(DecodeError, match="has no video stream") as caught:
        list(iter_frames(path, DecodeOptions(fps=10, size=32, crop=(32, 32))))
    assert caught.value.kind == NO_VIDEO


def test_truncated_mp4(tmp_path, media):
    """Cut before its index (moov at the end): unreadable. Cut in its media data (moov first): the
    frames before the cut come out, and the damage is reported."""
    for faststart in (False, True):
        whole = media.noise_video(tmp_path / f"whole{faststart}.mp4", seconds=2, faststart=faststart)
        cut = tmp_path / f"cut{faststart}.mp4"
        data = whole.read_bytes()
        cut.write_bytes(data[: len(data) // 2])
        decoder = VideoDecoder(cut, DecodeOptions(fps=20, size=32, crop=(32, 32)))
        if not faststart:
            with pytest.raises(DecodeError, match="moov atom not found"):
                list(decoder)
            continue
        frames = list(decoder)
        assert 5 <= len(frames) < 40 and decoder.frames_read == len(frames)
        assert decoder.damage is not None and decoder.damage.startswith("ffmpeg: ")


@pytest.mark.timeout(60)
def test_a_flood_of_ffmpeg_errors_does_not_stall_the_pipe(tmp_path, media):
    """ffmpeg's stderr is drained while frames are read: a file that makes it write far more than a pipe
    holds (64 KiB) to stderr still decodes, instead of both sides waiting on each other."""
    whole = media.noise_video(tmp_path / "noisy.mp4", seconds=6, fps=50, size=(16, 16), faststart=True)
    data = bytearray(whole.read_bytes())
    start = len(data) // 8
    data[start:] = np.random.default_rng(1).integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
    options = DecodeOptions(fps=50, size=16, crop=(16, 16))
    chatter = subprocess.run(ffmpeg_command(tmp_path / "corrupt.mp4", options), capture_output=True).stderr
    assert len(chatter) > 64 * 1024
    decoder = VideoDecoder(tmp_path / "corrupt.mp4", options)
    frames = list(decoder)
    assert len(frames) > 0 and decoder.damage is not None


def test_the_frames_are_the_same_bytes_whatever_ffmpegs_threads(tmp_path):
    """A filmed-like H.264 video (B-frames, a frame size the scaler splits into slices) decoded with
    ffmpeg's own number of threads, one, and three: the same frames, byte for byte (prepare picks
    the number from the CPUs and workers, and its output must not depend on the machine)."""
    path = tmp_path / "pattern.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=322x242:rate=25:duration=3", "-vf", "noise=alls=8:allf=t", "-c:v", "libx264",
                    "-preset", "veryfast", "-bf", "3", "-pix_fmt", "yuv420p", str(path)], check=True)
    for size, crop in ((112, None), (64, (48, 60))):
        decoded = {threads: np.stack(list(iter_frames(path, DecodeOptions(size=size, crop=crop, threads=threads))))
                   for threads in (0, 1, 3)}
        assert len(decoded[0]) == 60
        assert all(np.array_equal(decoded[0], other) for other in decoded.values()), (size, crop)

    one = " ".join(ffmpeg_command(path, DecodeOptions(threads=1)))
    assert "-threads 1 " in one and "-filter_complex_threads 1" in one
    assert "threads" not in " ".join(ffmpeg_command(path, DecodeOptions()))
    with pytest.raises(ValueError, match="threads"):
        DecodeOptions(threads=-1)
    # prepare shares the CPUs out among its workers, one thread each at least, unless told a number
    config = dict(videos=(str(tmp_path),), transcripts=(str(tmp_path),), out=str(tmp_path / "out"))
    for workers in (1, 2, 64):
        assert PrepareConfig(**config, workers=workers).decode_options().threads == \
            default_decode_threads(workers) == max(1, available_cpus() // workers)
    assert PrepareConfig(**config, workers=64, decode_threads=3).decode_options().threads == 3
    with pytest.raises(ValueError, match="--decode-threads must be 0"):
        PrepareConfig(**config, decode_threads=-2)


def test_options_are_validated():
    with pytest.raises(ValueError, match="fps"):
        DecodeOptions(fps=0)
    with pytest.raises(ValueError, match="crop"):
        DecodeOptions(crop=(0, 10))
