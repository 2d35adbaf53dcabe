"""What checkpoint checksums cost: the SHA-256 of a checkpoint's files against writing and reading them.

    python tests/benchmarks/bench_checkpoint_integrity.py [--mib 512 1024] [--folder DIR]

For each size, one rank's share of a checkpoint is stood in for by what DeepSpeed writes for it: a
``torch.save``d dict of fp32 tensors (parameters and two Adam moments, 64 MiB each) in ``--folder``
(default: a temporary folder on the disk that holds the system's temporary files). Measured, each
the best of three:

  * write: ``torch.save`` and fsync (what a save costs without checksums: the baseline);
  * hash after write: the save's extra pass (``trainer.integrity.checksums``, on a warm page cache);
  * read: ``torch.load`` (what a resume reads, warm cache);
  * verify: the resume's extra pass (``problems_in_share``, warm cache).

Printed: seconds, GB/s, and the ratios hash / write and verify / read. A cold read (a resume on a
fresh node) costs one more read of the files; the load after it then finds them in the page cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import Table  # noqa: E402

from videobert.trainer.integrity import checksums, problems_in_share, recorded  # noqa: E402


def best_of(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def state_of(mib: int) -> dict[str, torch.Tensor]:
    pieces = max(1, mib // 64)
    return {f"{kind}/{i}": torch.randn((64 << 20) // 4) for kind in ("param", "exp_avg", "exp_avg_sq")
            for i in range(-(-pieces // 3))}


def measure(folder: Path, mib: int, table: Table) -> None:
    path = folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = state_of(mib)

    def write() -> None:
        torch.save(state, path)
        with open(path, "rb") as f:
            os.fsync(f.fileno())

    written = best_of(write)
    size = path.stat().st_size
    hashed = best_of(lambda: checksums(folder, [path]))
    files = recorded(checksums(folder, [path]))
    read = best_of(lambda: torch.load(path, weights_only=True))
    verified = best_of(lambda: problems_in_share(folder, files, 0, 1))
    assert problems_in_share(folder, files, 0, 1) == []
    gb = size / 1e9
    table.row(f"{size / 2**20:.0f} MiB", written, hashed, hashed / written, read, verified, verified / read, gb / verified)
    path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    table = Table("checkpoint checksums (SHA-256) against writing and reading the files",
                  ["file", "write s", "hash s", "hash / write", "read s", "verify s", "verify / read", "verify GB/s"])
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        for mib in args.mib:
            measure(Path(tmp), mib, table)


if __name__ == "__main__":
    main()
