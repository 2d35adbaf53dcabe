"""Benchmark: ``shards prepare`` against a bare ffmpeg decode of the same videos.

    python tests/benchmarks/bench_prepare.py [--sources testsrc2:320x240,natural:640x360,natural:1280x720]
                                             [--videos 4] [--seconds 30] [--workers N] [--repeats 3]

Renders the videos of each source kind (H.264, 25 fps) with a caption.json covering every second of
them: ``testsrc2`` is ffmpeg's test pattern; ``natural`` is a camera panning slowly over a texture
with the 1/f spectrum of natural images, with sensor noise and a slow change of light, encoded at
a usual quality (CRF 23): what decoding a filmed video costs, which a test pattern does not show
(nothing can be downloaded here). Then, per kind, in the same run:

  (a) bare decode: ffmpeg with the very filter chain and threads per video prepare uses
      (``shards.decode.ffmpeg_command``: fps, scale to the short side, centre crop, rgb24) writing raw
      frames to /dev/null, one video at a time, and with as many concurrent ffmpeg processes as prepare
      has workers (and once more with ffmpeg choosing its own number of threads, for comparison);
  (b) ffmpeg to a file: the same ffmpeg commands, as many at a time as prepare has workers, each
      writing its raw frames to a file in the output's folder (the same disk): the limit a user would
      compare prepare with, since prepare writes those same frame bytes;
  (c) prepare: the stage itself (``shards.prepare.prepare``) with ``--workers N``.

Prints frames/s for each, prepare's ratio to the faster bare decode (goal: >= 0.8) and to ffmpeg to a
file (goal: >= 0.9; also round by round, each prepare run against the ffmpeg run just before it, and
their median), the realtime factor
(seconds of video per second) and bytes written per hour of video. Each measurement is repeated (the
three kinds interleaved) and the best kept. On a shared machine wall times move with the neighbours'
load, so CPU seconds (this process and all its children: workers, ffmpeg) are printed too: their
ratio says what prepare costs over the bare decode whatever the load.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from videobert.shards.decode import DecodeOptions, ffmpeg_command
from videobert.shards.ffmpeg_bin import ffmpeg_exe
from videobert.shards.prepare import PrepareConfig, default_decode_threads, prepare


def render(folder: Path, kind: str, count: int, seconds: float, size: str, workers: int) -> list[Path]:
    """Render the test videos of one kind in parallel (a different pattern offset or view each)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"bench{i:03d}.mp4" for i in range(count)]
    texture = natural_texture(folder / "texture.png", size) if kind == "natural" else None

    def one(i: int) -> None:
        if kind == "natural":
            inputs, chain = _natural_input(texture, size, seconds, i)
        else:
            inputs, chain = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={RATE}:duration={seconds}"], \
                f"hue=h={i * 37 % 360}"
        subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *inputs, "-vf", chain, "-t", str(seconds),
             "-r", str(RATE), "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
             str(paths[i])],
            check=True,
        )

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count)))
    return paths


RATE = 25


def natural_texture(path: Path, size: str, seed: int = 0) -> Path:
    """A colour image twice the frame's size whose spectrum falls about as 1/f, like that of natural images."""
    from PIL import Image

    width, height = (2 * int(x) for x in size.split("x"))
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    falloff = np.maximum(np.hypot(fx, fy), 1.0 / max(width, height)) ** -1.3  # a little steeper than 1/f: scenes
    channels = []
    for _ in range(3):
        spectrum = falloff * np.exp(2j * np.pi * rng.random(falloff.shape))
        plane = np.fft.irfft2(spectrum, s=(height, width))
        channels.append((plane - plane.mean()) / plane.std())
    mixed = np.stack(channels, -1) @ np.array([[0.8, 0.5, 0.3], [0.2, 0.6, 0.4], [0.1, 0.2, 0.7]])
    image = np.clip(128 + 40 * mixed, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)
    return path


def _natural_input(texture: Path, size: str, seconds: float, i: int) -> tuple[list[str], str]:
    """A slow pan over the texture (a different path per video), sensor noise, light that drifts."""
    width, height = (int(x) for x in size.split("x"))
    dx, dy = width / seconds * (0.6 + 0.1 * i), height / seconds * (0.3 + 0.05 * i)
    chain = (f"loop=loop=-1:size=1,setpts=N/({RATE}*TB),"  # the texture decoded once, then repeated
             f"crop={width}:{height}:x='mod({dx:.3f}*t+{37 * i},{width})':y='mod({dy:.3f}*t+{23 * i},{height})',"
             f"noise=alls=6:allf=t,eq=brightness='0.04*sin(t/3+{i})':saturation=1.1")
    return ["-i", str(texture)], chain


def captions(paths: list[Path], seconds: float, seed: int = 0) -> dict:
    """Segments of 2-6 s back to back over each whole video, the last one ending at its end."""
    rng = random.Random(seed)
    result = {}
    for path in paths:
        starts, ends, t = [], [], 0.0
        while t < seconds:
            end = min(seconds, t + rng.uniform(2.0, 6.0))
            starts.append(round(t, 3))
            ends.append(round(end, 3))
            t = end
        result[path.stem] = {"start": starts, "end": ends, "text": [f"step {i}" for i in range(len(starts))]}
    return result


class Timer:
    """Wall seconds and CPU seconds of this process and its (waited-for) descendants."""

    def __enter__(self) -> "Timer":
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc_info) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = _cpu_seconds() - self._cpu


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bare_decode(paths: list[Path], options: DecodeOptions, concurrency: int) -> Timer:
    """Decode every video to /dev/null with ``concurrency`` ffmpeg processes at a time."""
    def one(path: Path) -> None:
        subprocess.run(ffmpeg_command(path, options, output="/dev/null"), check=True, capture_output=True)

    with Timer() as timer, concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, paths))
    return timer


def decode_to_files(paths: list[Path], options: DecodeOptions, concurrency: int, folder: Path) -> Timer:
    """Decode every video to a raw-frame file in ``folder`` (flushed to the disk, as prepare's shards
    are), ``concurrency`` ffmpeg processes at a time; the files are removed afterwards."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    def one(path: Path) -> None:
        target = folder / f"{path.stem}.rgb"
        subprocess.run(ffmpeg_command(path, options, output=str(target)), check=True, capture_output=True)
        with open(target, "rb") as f:
            os.fsync(f.fileno())

    with Timer() as timer, concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, paths))
    shutil.rmtree(folder)
    return timer


def run_prepare(videos: Path, transcript: Path, out: Path, options: DecodeOptions, workers: int) -> tuple[Timer, dict]:
    shutil.rmtree(out, ignore_errors=True)
    config = PrepareConfig(
        videos=(str(videos),), transcripts=(str(transcript),), out=str(out), fps=options.fps,
        size=options.size, workers=workers, progress=False,
    )
    with Timer() as timer:
        summary = prepare(config)
    return timer, summary.to_json()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", default="testsrc2:320x240,natural:640x360,natural:1280x720",
                        help="KIND:WxH,... with KIND testsrc2 or natural")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", type=Path, help="work folder (default: a temporary one, removed after)")
    args = parser.parse_args(argv)

    folder = args.folder or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        for source in args.sources.split(","):
            kind, size = source.split(":")
            report(args, folder / f"{kind}-{size}", kind, size)
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def report(args: argparse.Namespace, folder: Path, kind: str, size: str) -> None:
    # The ffmpeg runs use prepare's own decoding options, its threads per video included.
    options = DecodeOptions(fps=args.fps, size=args.size, crop=(args.size, args.size),
                            threads=default_decode_threads(args.workers))
    ffmpeg_threads = dataclasses.replace(options, threads=0)
    started = time.perf_counter()
    paths = render(folder / "videos", kind, args.videos, args.seconds, size, args.workers)
    transcript = folder / "caption.json"
    transcript.write_text(json.dumps(captions(paths, args.seconds)))
    video_seconds = args.videos * args.seconds
    frames = round(video_seconds * args.fps)
    megabits = sum(p.stat().st_size for p in paths) * 8 / 1e6 / video_seconds
    print(f"\n{kind} {size}: rendered {args.videos} videos x {args.seconds:g} s ({megabits:.1f} Mbit/s) in "
          f"{time.perf_counter() - started:.1f} s; decoding at {args.fps:g} fps to {args.size}x{args.size}: {frames} "
          f"frames, {args.workers} workers, {os.cpu_count()} CPUs")

    to_file = f"ffmpeg to a file, {args.workers} concurrent"
    runs: dict[str, list[Timer]] = {"bare decode, sequential": [], f"bare decode, {args.workers} concurrent": [],
                                    to_file: [], f"prepare, {args.workers} workers": []}
    summary: dict = {}
    own_threads: list[Timer] = []
    for _ in range(args.repeats):
        own_threads.append(bare_decode(paths, ffmpeg_threads, args.workers))
        runs["bare decode, sequential"].append(bare_decode(paths, options, 1))
        runs[f"bare decode, {args.workers} concurrent"].append(bare_decode(paths, options, args.workers))
        runs[to_file].append(decode_to_files(paths, options, args.workers, folder / "frames"))
        timer, summary = run_prepare(folder / "videos", transcript, folder / "shards", options, args.workers)
        runs[f"prepare, {args.workers} workers"].append(timer)
    if summary["frames_decoded"] != frames:
        print(f"note: prepare decoded {summary['frames_decoded']} of the {frames} frames (it stops after the last "
              "frame a clip uses)")

    best = {name: min(timers, key=lambda t: t.wall) for name, timers in runs.items()}
    for name, timer in best.items():
        print(f"{name:<32} {timer.wall:7.2f} s  {frames / timer.wall:8.0f} frames/s  {video_seconds / timer.wall:6.1f}x "
              f"realtime  {min(t.cpu for t in runs[name]):7.2f} CPU s")
    own = min(own_threads, key=lambda t: t.wall)
    print(f"{'(bare decode, ' + str(args.workers) + ' concurrent, ffmpeg choosing its threads)':<32} {own.wall:7.2f} s  "
          f"{frames / own.wall:8.0f} frames/s  {min(t.cpu for t in own_threads):7.2f} CPU s: "
          f"prepare's {options.threads} thread(s) per video decode "
          f"{own.wall / best[f'bare decode, {args.workers} concurrent'].wall:.2f}x as fast")
    *bare, written, prepared = best.values()
    ratio = min(t.wall for t in bare) / prepared.wall
    prepare_name = list(runs)[3]
    cpu_ratio = min(min(t.cpu for t in runs[name]) for name in list(runs)[:2]) / min(t.cpu for t in runs[prepare_name])
    extra = (min(t.cpu for t in runs[prepare_name]) - min(t.cpu for t in runs[list(runs)[1]])) / frames * 1e3
    print(f"prepare / faster bare decode: {ratio:.2f} in frames/s (goal >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'}); "
          f"{cpu_ratio:.2f} in frames per CPU second ({extra:.2f} ms of CPU per output frame on top of ffmpeg)")
    to_file_ratio = written.wall / prepared.wall
    to_file_cpu = min(t.cpu for t in runs[to_file]) / min(t.cpu for t in runs[prepare_name])
    rounds = sorted(f.wall / p.wall for f, p in zip(runs[to_file], runs[prepare_name]))
    print(f"prepare / ffmpeg to a file: {to_file_ratio:.2f} in frames/s (goal >= 0.90: "
          f"{'met' if to_file_ratio >= 0.9 else 'NOT met'}), {to_file_cpu:.2f} in frames per CPU second; the best "
          f"of {args.repeats} runs each, interleaved; round by round (each prepare against the ffmpeg run just "
          f"before it): median {statistics.median(rounds):.2f}, {', '.join(f'{r:.2f}' for r in rounds)}")
    hours = video_seconds / 3600
    print(f"written: {summary['bytes'] / 1e9:.3f} GB in {summary['shards']} shards, {summary['bytes'] / hours / 1e9:.1f} GB "
          f"per hour of video ({summary['segments_written']} samples, {summary['clips']} clips)")
    for name, timers in runs.items():
        print(f"  {name}: " + ", ".join(f"{t.wall:.2f} s ({t.cpu:.2f} CPU s)" for t in timers))
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())
