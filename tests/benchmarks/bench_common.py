"""What the GPU benchmark scripts share: timing, peak memory, and a results table written row by row.

Rows go to the console and, appended and flushed at once, to a markdown file, so that a run cut
short (the GPU is lent for minutes) still leaves every figure measured up to that point.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch


class Table:
    """A markdown table written one row at a time (to stdout and, if given, appended to ``path``)."""

    def __init__(self, title: str, columns: Sequence[str], path: str | Path | None = None, preface: str = "") -> None:
        self.columns = list(columns)
        self.path = Path(path) if path else None
        preface = f"{preface}\n\n" if preface else ""
        self._emit(f"\n### {title}\n\n{preface}| " + " | ".join(self.columns) + " |\n|" + "---|" * len(self.columns))

    def row(self, *values) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"{len(values)} values for {len(self.columns)} columns")
        self._emit("| " + " | ".join(_format(v) for v in values) + " |")

    def note(self, text: str) -> None:
        self._emit(f"\n{text}\n")

    def _emit(self, text: str) -> None:
        print(text, flush=True)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(text + "\n")


def _format(value) -> str:
    if isinstance(value, float) and value != value:
        return "-"  # NaN: not measured here
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], None], device: torch.device, warmup: int, reps: int) -> float:
    """Median wall seconds of ``fn`` after ``warmup`` calls, synchronising the device around each."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], None], device: torch.device) -> float:
    """Bytes allocated at the peak of one call of ``fn`` above what was allocated before it (CUDA;
    NaN elsewhere: the CPU allocator keeps no such record)."""
    if device.type != "cuda":
        return float("nan")
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - before)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU"


def environment_line(device: torch.device) -> str:
    """Device and versions, printed above each table so figures from other machines are not mixed up."""
    import triton

    return (f"device: {device_name(device)}; torch {torch.__version__}; triton {triton.__version__}; "
            f"CUDA {torch.version.cuda or '-'}")
