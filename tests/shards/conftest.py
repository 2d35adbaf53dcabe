"""Fixtures for the shard tests: tiny real H.264 videos encoded by ffmpeg from frames made with numpy,
and a small prepared shard folder shared by the prepare and inspect tests."""

from __future__ import annotations

import json
from pathlib import Path

import ffmpeg
import numpy as np
import pytest

from videobert.shards.ffmpeg_bin import ffmpeg_exe

LEVEL_STEP = 4  # gray level step between consecutive frames of a time-coded video


class Media:
    """Makes test inputs: videos whose pixels encode time, audio-only files, transcripts."""

    @staticmethod
    def coded_frames(n: int, height: int = 48, width: int = 64, tag: int = 0) -> np.ndarray:
        """Frame ``j`` is a solid colour with green = blue = ``LEVEL_STEP * j`` (the picture tells its own
        index) and red = ``tag`` (tells videos apart)."""
        if (n - 1) * LEVEL_STEP > 255:
            raise ValueError(f"at most {255 // LEVEL_STEP + 1} coded frames")
        frames = np.empty((n, height, width, 3), dtype=np.uint8)
        frames[..., 0] = tag
        frames[..., 1:] = (np.arange(n) * LEVEL_STEP).astype(np.uint8)[:, None, None, None]
        return frames

    @staticmethod
    def levels(frames: np.ndarray) -> list[int]:
        """The frame indices coded frames show (inverse of ``coded_frames``)."""
        green = frames.reshape(-1, *frames.shape[-3:])[..., 1]
        return [int(round(float(f.mean()) / LEVEL_STEP)) for f in green]

    @staticmethod
    def encode(path: Path, frames: np.ndarray, fps: int = 20, *, faststart: bool = False) -> Path:
        """Encode RGB frames to a lossless H.264 mp4 with ffmpeg (libx264, qp 0, yuv420p)."""
        n, height, width, _ = frames.shape
        options = {"vcodec": "libx264", "pix_fmt": "yuv420p", "qp": 0, "preset": "ultrafast", "threads": 1}
        if faststart:
            options["movflags"] = "+faststart"
        (
            ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
            .output(str(path), **options)
            .global_args("-hide_banner", "-loglevel", "error")
            .overwrite_output()
            .run(cmd=ffmpeg_exe(), input=np.ascontiguousarray(frames).tobytes())
        )
        return path

    @staticmethod
    def noise_video(path: Path, seconds: float, fps: int = 20, size: tuple[int, int] = (48, 64), seed: int = 0,
                    faststart: bool = False) -> Path:
        """Random pixels (compress badly, so that the file is large enough to cut part-way)."""
        rng = np.random.default_rng(seed)
        frames = rng.integers(0, 256, size=(round(seconds * fps), *size, 3), dtype=np.uint8)
        return Media.encode(path, frames, fps, faststart=faststart)

    @staticmethod
    def audio_only(path: Path, seconds: float = 2.0) -> Path:
        ffmpeg.input(f"sine=duration={seconds}", f="lavfi").output(str(path), acodec="aac").global_args(
            "-hide_banner", "-loglevel", "error").overwrite_output().run(cmd=ffmpeg_exe())
        return path

    @staticmethod
    def caption_json(path: Path, captions: dict[str, list[tuple[float, float, str]]]) -> Path:
        """A HowTo100M caption.json: {video_id: {"start": [...], "end": [...], "text": [...]}}."""
        data = {vid: {"start": [c[0] for c in cs], "end": [c[1] for c in cs], "text": [c[2] for c in cs]}
                for vid, cs in captions.items()}
        path.write_text(json.dumps(data), encoding="utf-8")
        return path


@pytest.fixture(scope="session")
def media() -> type[Media]:
    return Media


@pytest.fixture(scope="session")
def time_video(tmp_path_factory) -> Path:
    """3 s at 20 fps, 64x48: frame j shows gray level 4 * j."""
    folder = tmp_path_factory.mktemp("time_video")
    return Media.encode(folder / "timecoded.mp4", Media.coded_frames(60), fps=20)


CORPUS_CAPTIONS = {
    # video id -> segments (start, end, text); at 10 fps with clips of 5 frames
    "alpha": [(0.0, 1.0, "first step"), (1.0, 2.3, "second  step\n"), (2.3, 2.9, "third step")],
    "beta": [(0.5, 1.5, "beta one"), (1.5, 2.95, "beta two")],
    "gamma": [(0.0, 2.0, "gamma only")],
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Three time-coded videos (3 s, 20 fps, 64x48) in ``videos/`` and their ``caption.json``."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "videos").mkdir()
    for i, video_id in enumerate(CORPUS_CAPTIONS):
        Media.encode(folder / "videos" / f"{video_id}.mp4", Media.coded_frames(60, tag=80 * i))
    Media.caption_json(folder / "caption.json", CORPUS_CAPTIONS)
    return folder


def corpus_config(corpus: Path, out: Path, **overrides):
    from videobert.shards.prepare import PrepareConfig

    options = dict(videos=(str(corpus / "videos"),), transcripts=(str(corpus / "caption.json"),), out=str(out),
                   fps=10.0, size=32, clip_len=5, max_samples=2, workers=2, progress=False)
    options.update(overrides)
    return PrepareConfig(**options)


@pytest.fixture(scope="session")
def prepared(corpus: Path, tmp_path_factory) -> Path:
    """The corpus prepared at 10 fps, 32x32, clips of 5 frames, 2 samples per shard."""
    from videobert.shards.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "shards"
    prepare(corpus_config(corpus, out))
    return out


@pytest.fixture(scope="session")
def corpus_config_for():
    """``corpus_config_for(corpus, out, **overrides)``: the PrepareConfig the ``prepared`` folder used."""
    return corpus_config
