"""Benchmark: bytes per hour of video of each kind of shard, the cost of reading them, and the full-corpus
path (``shards tokenize-videos``) against ``prepare`` followed by ``tokenize``.

    python tests/benchmarks/bench_full_corpus.py [--videos 4] [--seconds 30] [--source 640x360]
        [--settings demo,paper] [--workers 2] [--codecs jpeg,png] [--folder DIR]

Renders ``--videos`` H.264 videos of a camera panning over a natural texture (``bench_prepare``'s
``natural`` kind, CRF 23) with captions covering every second, then, at each setting (``demo``: 10 fps,
64 x 64, clips of 15 frames; ``paper``: 20 fps, 224 x 224, clips of 30 frames), in one run:

  (a) ``prepare`` -> clip shards, then ``tokenize`` -> token shards (timed; the codebook, of the
      built-in encoder at that setting, is written beforehand: a real run fits it once, on a sample);
  (b) ``tokenize-videos`` -> the same token shards straight from the videos (timed);
      and the same run given no caption at all: the fixed cost of starting its workers;
  (c) reading every sample of each kind of shard with its arrays decoded (``reader.iter_samples``):
      what the loader (token shards) or tokenize (clip shards) pays per hour of video;
  (d) for each compressed frame codec (``--codecs``, e.g. jpeg,png): prepare and tokenize again with
      clip shards stored that way: bytes, prepare's time, reading and tokenize's time, each against
      raw frames measured in the same run.

Prints bytes per hour of video of clip and token shards, read seconds per hour of video, the time of
(a) and (b), their ratio, and the peak disk each path needs (clip + token shards against token shards
alone). The encoder is the built-in synthetic one at every setting: S3D on a GPU costs the same in
both paths, so the difference measured is what the clip shards cost to write and read back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_prepare import Timer, captions, render  # noqa: E402

from videobert.shards import reader  # noqa: E402
from videobert.shards.prepare import PrepareConfig, prepare  # noqa: E402
from videobert.shards.tokenize_clips import TokenizeConfig, tokenize  # noqa: E402
from videobert.shards.tokenize_videos import TokenizeVideosConfig, tokenize_videos  # noqa: E402

SETTINGS = {"demo": dict(fps=10.0, size=64, clip_len=15), "paper": dict(fps=20.0, size=224, clip_len=30)}


def write_codebook(path: Path, *, fps: float, size: int, clip_len: int, branching: int = 12, depth: int = 2) -> Path:
    """A codebook of the built-in encoder at these settings (random centroids: which visual word a clip
    gets does not change what either path costs)."""
    import torch

    from videobert.models.visual.codebook import Codebook
    from videobert.models.visual.encoder import EncoderSpec
    from videobert.models.visual.synthetic import FEATURE_DIM

    spec = EncoderSpec(name="synthetic", fps=fps, clip_len=clip_len, frame_size=(size, size), feature_dim=FEATURE_DIM)
    g = torch.Generator().manual_seed(0)
    Codebook(spec=spec, centroids=[torch.randn(branching**level, branching, FEATURE_DIM, generator=g)
                                   for level in range(depth)]).save(path)
    return path


def read_seconds(folder: Path) -> tuple[float, int]:
    """Seconds to read every sample of a folder's shards, arrays decoded; and the samples read."""
    started = time.perf_counter()
    n = sum(1 for _ in reader.iter_samples(reader.resolve_shards(folder)))
    return time.perf_counter() - started, n


def run_setting(name: str, folder: Path, videos: Path, transcript: Path, workers: int,
                codecs: tuple[str, ...] = ()) -> None:
    s = SETTINGS[name]
    common = dict(videos=(str(videos),), transcripts=(str(transcript),), workers=workers, progress=False, **s)
    with Timer() as prepared:
        clips = prepare(PrepareConfig(out=str(folder / "clips"), **common))
    codebook = write_codebook(folder / "codebook.safetensors", **s)
    with Timer() as tokenized:
        tokens = tokenize(TokenizeConfig(clips=(str(folder / "clips"),), codebook=str(codebook),
                                         out=str(folder / "tokens"), workers=workers, progress=False))
    with Timer() as direct:
        full = tokenize_videos(TokenizeVideosConfig(out=str(folder / "direct"), codebook=str(codebook),
                                                    **common))
    assert full.segments_written == tokens.samples_written == clips.segments_written
    empty = folder / "no-captions.json"
    empty.write_text("{}")
    with Timer() as start_up:  # the same run with no caption at all: its workers' start and the encoder's build
        tokenize_videos(TokenizeVideosConfig(out=str(folder / "empty"), codebook=str(codebook),
                                             **{**common, "transcripts": (str(empty),)}))
    hours = clips.hours_decoded
    clip_read, _ = read_seconds(folder / "clips")
    token_read, _ = read_seconds(folder / "direct")
    print(f"\n{name}: {s['fps']:g} fps, {s['size']}x{s['size']}, clips of {s['clip_len']} frames; "
          f"{hours * 3600:.0f} s of video, {clips.segments_written} samples, {clips.clips} clips, {workers} workers")
    print(f"  clip shards   {clips.bytes / hours / 1e9:10.3f} GB per hour of video   read {clip_read / hours:8.1f} s "
          "per hour of video (frames decoded)")
    print(f"  token shards  {full.bytes / hours / 1e6:10.3f} MB per hour of video   read {token_read / hours:8.2f} s "
          f"per hour of video   ({clips.bytes / full.bytes:,.0f}x smaller)")
    both = prepared.wall + tokenized.wall
    print(f"  prepare + tokenize  {both:7.1f} s ({prepared.wall:.1f} + {tokenized.wall:.1f}; "
          f"{prepared.cpu + tokenized.cpu:.1f} CPU s)   peak disk {(clips.bytes + tokens.bytes) / 1e6:9.1f} MB")
    print(f"  tokenize-videos     {direct.wall:7.1f} s ({direct.cpu:.1f} CPU s)"
          f"{'':22}peak disk {full.bytes / 1e6:9.3f} MB")
    print(f"    of which start-up {start_up.wall:7.1f} s ({start_up.cpu:.1f} CPU s): spawning the workers (each "
          "imports torch) and building the encoder, once per run or part")
    print(f"  speed of tokenize-videos / prepare + tokenize: {both / direct.wall:.2f} in wall time, "
          f"{(prepared.cpu + tokenized.cpu) / max(direct.cpu, 1e-9):.2f} in CPU seconds; HowTo100M's 134,000 h "
          f"would need {clips.bytes / hours * 134_000 / 1e15:.2f} PB of clip shards, "
          f"{full.bytes / hours * 134_000 / 1e9:.1f} GB of token shards")
    if codecs:
        compare_codecs(folder, common, codebook, codecs, workers, hours,
                       raw=(clips.bytes, prepared.wall, clip_read, tokenized.wall))


def compare_codecs(folder: Path, common: dict, codebook: Path, codecs: tuple[str, ...], workers: int, hours: float,
                   raw: tuple[int, float, float, float]) -> None:
    """(d): clip shards of each codec against raw frames (bytes, prepare, read, tokenize)."""
    raw_bytes, raw_prepare, raw_read, raw_tokenize = raw
    print("  clip shards by frame codec (ratios against raw frames, this run):")
    print(f"    {'codec':6} {'GB per hour':>12} {'x smaller':>10} {'prepare s':>10} {'x raw':>6} "
          f"{'read s/h':>9} {'x raw':>7} {'tokenize s':>11} {'x raw':>6}")
    print(f"    {'raw':6} {raw_bytes / hours / 1e9:12.3f} {1:10.1f} {raw_prepare:10.1f} {1:6.2f} "
          f"{raw_read / hours:9.1f} {1:7.2f} {raw_tokenize:11.1f} {1:6.2f}")
    for codec in codecs:
        out = folder / f"clips-{codec}"
        with Timer() as prepared:
            clips = prepare(PrepareConfig(out=str(out), frame_codec=codec, **common))
        read, _ = read_seconds(out)
        with Timer() as tokenized:
            tokenize(TokenizeConfig(clips=(str(out),), codebook=str(codebook), out=str(folder / f"tokens-{codec}"),
                                    workers=workers, progress=False))
        print(f"    {codec:6} {clips.bytes / hours / 1e9:12.3f} {raw_bytes / clips.bytes:10.1f} {prepared.wall:10.1f} "
              f"{prepared.wall / raw_prepare:6.2f} {read / hours:9.1f} {read / max(raw_read, 1e-9):7.2f} "
              f"{tokenized.wall:11.1f} {tokenized.wall / raw_tokenize:6.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--source", default="640x360", help="rendered video size WxH")
    parser.add_argument("--settings", default="demo,paper")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--folder", type=Path, help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--codecs", default="jpeg,png", help="compressed frame codecs compared with raw frames ('' for none)")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="bench_full_corpus_"))
    try:
        paths = render(folder / "videos", "natural", args.videos, args.seconds, args.source, args.workers)
        transcript = folder / "caption.json"
        transcript.write_text(json.dumps(captions(paths, args.seconds)))
        print(f"{args.videos} videos x {args.seconds:g} s, {args.source}, H.264 CRF 23 "
              f"({sum(p.stat().st_size for p in paths) / 1e6:.1f} MB); {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        for name in args.settings.split(","):
            run_setting(name, folder / name, folder / "videos", transcript, args.workers,
                        tuple(c for c in args.codecs.split(",") if c))
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
