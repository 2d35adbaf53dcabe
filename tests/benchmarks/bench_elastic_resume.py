"""Resuming at another number of ranks against resuming at the same number, on CPU.

    python tests/benchmarks/bench_elastic_resume.py [--presets demo base] [--ranks 2]

For each model preset, two checkpoints of one optimizer step are written by real ZeRO-3 jobs: one by
``--ranks`` ranks, one by a single rank. Both are then resumed on ``--ranks`` ranks:

  * same size: DeepSpeed's own load of the ``--ranks``-rank checkpoint (the baseline);
  * another size: the 1-rank checkpoint, re-partitioned as it loads (``trainer.reshard``: each rank
    builds its ZeRO-3 pieces from the old rank's files and DeepSpeed's loader takes them).

Printed: the load seconds of each (the slowest rank's, the faster of two resumes, so that both read
through a warm page cache), the ratio another-size / same-size load (goal: at most 3), and the disk
written beside the checkpoint (none: nothing is converted). Imports and engine construction, the same
for both, are left out of the times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "trainer"))

RESULT = "BENCH_RESUME "


def _overrides(run: Path, inputs: Path, preset: str, steps: int) -> list[str]:
    return [f"run_dir={run}", f"data.train={inputs / 'train'}", f"data.codebook={inputs / 'codebook.safetensors'}",
            f"deepspeed_config={ROOT / 'ds_config.json'}", "model.init=", f"model.preset={preset}",
            "data.text_model=minilm", "data.num_workers=0", "optim.micro_batch_size=2", "data.max_seq_len=64",
            "logging.progress=false", f"max_steps={steps}", f"checkpoint.every_steps={steps}", "optim.precision=fp32"]


def _job(ranks: int, args: list[str]) -> str:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ranks))}
    done = subprocess.run([*launcher, __file__, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"job failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def _resume_seconds(ranks: int, overrides: list[str], repeats: int = 2) -> float:
    """The faster of ``repeats`` resumes (the later ones read through a warm page cache, as the
    conversion's reads do), each the slowest rank's load."""
    times = []
    for _ in range(repeats):
        out = _job(ranks, ["--worker", "resume", *overrides])
        # the ranks share one stdout: their lines may interleave
        times.append(max(json.loads(found)["load_s"] for found in re.findall(re.escape(RESULT) + r"(\{[^}]*\})", out)))
    return min(times)


def _size(path: Path, skip: str = "") -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and (not skip or skip not in p.parts))


def measure(preset: str, ranks: int, work: Path, inputs: Path) -> dict[str, float]:
    from videobert.trainer.run_folder import CheckpointFolder

    written = {}
    for writers in (ranks, 1):
        run = work / f"{preset}-{writers}"
        _job(writers, ["--worker", "train", *_overrides(run, inputs, preset, 1)])
        written[writers] = CheckpointFolder(run / "checkpoints" / "step-1")
    before = _size(written[1].path)
    same = _resume_seconds(ranks, _overrides(written[ranks].path.parents[1], inputs, preset, 1))
    other = _resume_seconds(ranks, _overrides(written[1].path.parents[1], inputs, preset, 1))
    return {"same_load_s": same, "other_load_s": other, "ratio": other / same, "checkpoint_mb": before / 2**20,
            "written_mb": (_size(written[1].path) - before) / 2**20}


def worker(mode: str, overrides: list[str]) -> None:
    """Inside the job: train (writes step-1), or build the trainer and time its resume."""
    from videobert.trainer.config import load_config
    from videobert.trainer.distributed import init_distributed, leave_distributed
    from videobert.trainer.train import Trainer

    cfg = load_config(ROOT / "launch/recipes/debug.yaml", overrides)
    info = init_distributed()
    trainer = Trainer(cfg, info)
    if mode == "train":
        trainer.train()
    else:
        started = time.perf_counter()
        assert trainer.resume(), "nothing to resume"
        print(RESULT + json.dumps({"rank": info.rank, "load_s": time.perf_counter() - started}), flush=True)
    leave_distributed(info, True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["demo", "base"])
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from shard_factory import write_codebook, write_token_shards

    with tempfile.TemporaryDirectory(prefix="bench-elastic-") as tmp:
        work = Path(tmp)
        codebook = write_codebook(work / "inputs" / "codebook.safetensors")
        write_token_shards(work / "inputs" / "train", videos=16, segments=4, shards=4, codebook_hash=codebook.hash,
                           num_tokens=codebook.num_leaves)
        print(f"{'preset':8} {'same-size load':>15} {'other-size load':>16} {'ratio':>6} {'checkpoint':>11} "
              f"{'written beside it':>18}")
        for preset in args.presets:
            r = measure(preset, args.ranks, work, work / "inputs")
            print(f"{preset:8} {r['same_load_s']:14.2f}s {r['other_load_s']:15.2f}s {r['ratio']:5.2f}x "
                  f"{r['checkpoint_mb']:9.0f}MB {r['written_mb']:16.0f}MB", flush=True)
            for sub in work.glob(f"{preset}-*"):
                shutil.rmtree(sub)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3:])
    else:
        main()
