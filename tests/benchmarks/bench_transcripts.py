"""Benchmark: memory and time of reading a HowTo100M-size caption.json, whole and as one part of many.

    python tests/benchmarks/bench_transcripts.py [--videos 100000] [--segments 100] [--parts 100]
                                                 [--file caption.json] [--keep]

Generates a caption.json of the HowTo100M form (``{video_id: {"start": [...], "end": [...], "text":
[...]}}``, YouTube-like ids, ASR-like lower-case captions; 100K videos x 100 segments is about 1 GB),
then, each in a fresh process so that its peak resident memory is its own:

  (a) ``json.load`` of the whole file (what reading it into Python objects costs; the baseline);
  (b) ``read_transcripts`` of the whole file (a run of one part);
  (c) ``read_transcripts`` of part 0 of ``--parts`` (what one process of a split prepare holds).

Prints, for each, the seconds and the peak resident memory above the process's resident memory
before reading (imports included in neither), the videos and segments read, and the ratios of (b)
and (c) to (a). Goal: (c)'s memory grows with its own share of the videos, not with the file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("so now we are going to add the onions and then just stir it around until it gets nice and brown you "
         "want to make sure that the pan is hot enough before you put in a little bit of oil salt pepper garlic "
         "okay chop cut slice mix pour bake fry boil simmer taste cheese butter flour sugar egg milk").split()
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


def generate(path: Path, videos: int, segments: int, seed: int = 0) -> None:
    """Write the file one video at a time (never held whole)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        f.write("{")
        for v in range(videos):
            video_id = "".join(rng.choice(ID_CHARS) for _ in range(11))
            starts, ends, texts, t = [], [], [], 0.0
            for _ in range(segments):
                length = rng.uniform(1.5, 6.0)
                starts.append(round(t, 2))
                ends.append(round(t + length, 2))
                texts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(7, 18))))
                t += length + rng.uniform(0.0, 1.0)
            captions = json.dumps({"start": starts, "end": ends, "text": texts}, ensure_ascii=False)
            f.write(("," if v else "") + json.dumps(video_id) + ": " + captions)
        f.write("}")


def measure(kind: str, path: Path, parts: int) -> dict:
    """Run one measurement in a fresh process; its figures as a dict."""
    command = [sys.executable, __file__, "--child", kind, "--file", str(path), "--parts", str(parts)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(kind: str, path: str, parts: int) -> None:
    """Inside the measuring process: import first, then read, then report."""
    from videobert.shards.parts import Part
    from videobert.shards.transcripts import read_transcripts

    before = _rss_now()
    started, cpu = time.perf_counter(), time.process_time()
    if kind == "json.load":
        with open(path, "rb") as f:
            document = json.load(f)
        videos, segments = len(document), sum(len(v["text"]) for v in document.values())
    else:
        part = Part(0, parts) if kind == "part" else Part()
        result = read_transcripts([path], part=part)
        videos, segments = len(result.segments), result.segments_read
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    print(json.dumps({"kind": kind, "seconds": seconds, "cpu": cpu, "peak_above_start": peak - before,
                      "start": before, "videos": videos, "segments": segments}))


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--parts", type=int, default=100)
    parser.add_argument("--file", type=Path, help="use (or create) this caption.json instead of a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, str(args.file), args.parts)
        return 0
    folder = Path(tempfile.mkdtemp(prefix="bench_transcripts_"))
    path = args.file or folder / "caption.json"
    try:
        if not path.exists():
            started = time.perf_counter()
            generate(path, args.videos, args.segments)
            print(f"generated {path}: {args.videos} videos x {args.segments} segments, "
                  f"{path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s")
        report(path, args.parts)
    finally:
        if not args.keep and args.file is None:
            path.unlink(missing_ok=True)
            folder.rmdir()
    return 0


def report(path: Path, parts: int) -> None:
    rows = [measure("json.load", path, parts), measure("whole", path, parts), measure("part", path, parts)]
    names = {"json.load": "json.load (baseline)", "whole": "read_transcripts, whole",
             "part": f"read_transcripts, part 0/{parts}"}
    base = rows[0]
    print(f"{'':<34} {'seconds':>8} {'CPU s':>7} {'peak MB':>9} {'videos':>8} {'segments':>10}  "
          f"{'time/base':>9} {'memory/base':>11}")
    for row in rows:
        print(f"{names[row['kind']]:<34} {row['seconds']:8.1f} {row['cpu']:7.1f} {row['peak_above_start'] / 1e6:9.0f} "
              f"{row['videos']:8d} {row['segments']:10d}  {row['seconds'] / base['seconds']:9.2f} "
              f"{row['peak_above_start'] / base['peak_above_start']:11.3f}")
    part, whole = rows[2], rows[1]
    share = part["segments"] / max(whole["segments"], 1)
    print(f"part 0/{parts} holds {100 * share:.2f} % of the segments and peaks at "
          f"{100 * part['peak_above_start'] / whole['peak_above_start']:.2f} % of the whole read's memory "
          f"(file {path.stat().st_size / 1e9:.2f} GB)")
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())
