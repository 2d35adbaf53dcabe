"""Benchmark: what splitting a shard stage into parts costs, in CPU seconds, at the same number of workers.

    python tests/benchmarks/bench_parts.py [--videos 16] [--seconds 60] [--source natural:640x360]
                                           [--workers 2] [--repeats 2]

Renders the videos (``bench_prepare.render``), then, in the same run, each as child processes whose
CPU seconds (user + system, their workers and ffmpeg included) are counted:

  prepare    one process with ``--workers W``, against W parts (``--part i/W``) with one worker each,
             started at once into one folder;
  tokenize   the clip shards (prepared at the built-in encoder's 10 fps, 64x64, 15-frame clips, with a
             codebook fitted on them) by one process with ``--workers W``, against W parts with one
             worker each.

Prints the CPU seconds of each, the split's cost (parts / one process - 1; goal: at most 5 %), the CPU
seconds of starting one more process (``import shards.prepare``: the fixed cost of a part, which a
part of hours of work does not notice) and the split's cost less those starts. Every process runs
with one thread per worker (``OMP_NUM_THREADS=1``), so both forms compute alike. Wall times are
printed but are noise on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_prepare import captions, render  # noqa: E402

PREPARE = ["--fps", "10", "--size", "64", "--clip-len", "15", "--max-samples", "8", "--no-progress"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(commands: list[list[str]]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of running the commands at once, to the end."""
    cpu, wall = children_cpu(), time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per worker or part, as tokenize's pool gives its workers
    processes = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for c in commands]
    for process, command in zip(processes, commands):
        _, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{err.decode()[-3000:]}")
    return children_cpu() - cpu, time.perf_counter() - wall


def stage(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "videobert.trainer.cli", "shards", name, *args]


def prepare_commands(videos: Path, transcript: Path, out: Path, workers: int, split: bool) -> list[list[str]]:
    base = ["--videos", str(videos), "--transcripts", str(transcript), "--out", str(out), *PREPARE]
    if not split:
        return [stage("prepare", *base, "--workers", str(workers))]
    return [stage("prepare", *base, "--workers", "1", "--part", f"{k}/{workers}") for k in range(workers)]


def tokenize_commands(clips: Path, codebook: Path, out: Path, workers: int, split: bool) -> list[list[str]]:
    base = ["--clips", str(clips), "--codebook", str(codebook), "--out", str(out), "--no-progress", "--device", "cpu"]
    if not split:
        return [stage("tokenize", *base, "--workers", str(workers))]
    return [stage("tokenize", *base, "--workers", "1", "--part", f"{k}/{workers}") for k in range(workers)]


def measure(name: str, make, repeats: int, workers: int, folder: Path) -> dict[str, tuple[float, float]]:
    """Best (lowest CPU) of ``repeats`` runs of one process and of the parts, interleaved."""
    best: dict[str, tuple[float, float]] = {}
    for repeat in range(repeats):
        for split in (False, True):
            out = folder / f"{name}-{'parts' if split else 'one'}"
            shutil.rmtree(out, ignore_errors=True)
            cpu, wall = timed(make(out, split))
            key = f"{workers} parts x 1 worker" if split else f"1 process x {workers} workers"
            best[key] = min(best.get(key, (cpu, wall)), (cpu, wall))
    return best


def startup_cpu() -> float:
    cpu, _ = timed([[sys.executable, "-c", "import shards.prepare, shards.parts"]])
    return cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--source", default="natural:640x360")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folder", type=Path, help="work folder (default: a temporary one, removed after)")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="bench_parts_"))
    try:
        report(args, folder)
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def report(args: argparse.Namespace, folder: Path) -> None:
    kind, size = args.source.split(":")
    paths = render(folder / "videos", kind, args.videos, args.seconds, size, args.workers)
    transcript = folder / "caption.json"
    transcript.write_text(json.dumps(captions(paths, args.seconds)))
    print(f"{args.videos} {kind} videos x {args.seconds:g} s at {size}; {args.workers} workers in all; "
          f"{os.cpu_count()} CPUs")
    rows = {"prepare": measure("prepare", lambda out, split: prepare_commands(
        folder / "videos", transcript, out, args.workers, split), args.repeats, args.workers, folder)}
    codebook = folder / "codebook"
    timed([stage("fit-codebook", "--clips", str(folder / "prepare-one"), "--out", str(codebook), "--encoder",
                 "synthetic", "--depth", "2", "--branching", "8", "--num-clips", "2000", "--no-progress")])
    rows["tokenize"] = measure("tokenize", lambda out, split: tokenize_commands(
        folder / "prepare-one", codebook, out, args.workers, split), args.repeats, args.workers, folder)
    start = startup_cpu()
    print(f"one more process starts in {start:.1f} CPU s (imports): the fixed cost of a part")
    for name, best in rows.items():
        (one_cpu, one_wall), (parts_cpu, parts_wall) = best.values()
        print(f"{name:<9} " + "   ".join(f"{key}: {cpu:7.1f} CPU s ({wall:5.1f} s wall)" for key, (cpu, wall)
                                         in best.items()) + f"   split cost {100 * (parts_cpu / one_cpu - 1):+.1f} %")
    # Processes the parts start beyond one process's: prepare forks its workers (no start of their own),
    # tokenize spawns them (each starts, as a part does).
    for name, extra in (("prepare", args.workers - 1), ("tokenize", -1)):
        (one_cpu, _), (parts_cpu, _) = rows[name].values()
        print(f"{name}'s split cost less the {extra:+d} process start(s): "
              f"{100 * ((parts_cpu - extra * start) / one_cpu - 1):+.1f} % (what a part of hours of work pays)")
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())
