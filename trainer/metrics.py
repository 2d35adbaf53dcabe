"""Training metrics: sums over a logging window, reduced across ranks, written to TensorBoard.

Each step adds sums (losses weighted by their target counts, correct predictions, counts, tokens,
samples, seconds waiting for data and computing). At a logging step the sums are all-reduced and
turned into means and rates; rank 0 writes them to TensorBoard and to the console progress bar.

MFU = achieved model FLOP/s / peak FLOP/s of the devices. Achieved FLOPs come from the model's own
sizes (``models.videobert.flops_per_token``-style: 6 x non-embedding parameters per token plus the
attention term, the MLM head counted only at masked positions); the peak is looked up by device name
in ``PEAK_FLOPS`` (dense bf16 tensor-core figures from the vendors' data sheets) unless the config
gives one. On a CPU there is no reliable peak, so MFU is not reported there unless configured.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

import torch

from videobert.models.videobert import OBJECTIVES
from videobert.trainer.distributed import all_reduce_
from videobert.trainer.run_folder import RunFolder

PEAK_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "V100": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}

# The order of the values in the reduced vector.
SUM_KEYS = (
    "loss_sum", "steps",
    *(f"{name}_{part}" for name in OBJECTIVES for part in ("loss_sum", "correct", "count")),
    "samples", "segments", "tokens", "flops", "data_seconds", "compute_seconds",
    "skipped_steps", "bad_samples", "grad_norm_sum",
)


def peak_flops(device: torch.device, configured: float = 0.0) -> float:
    """Peak FLOP/s of one device: the configured value, else the table's entry for its name, else 0."""
    if configured > 0:
        return configured
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_FLOPS[key]
    return 0.0


class Window:
    """Sums for one logging window."""

    def __init__(self, sources: Sequence[str] = ()) -> None:
        self.sums = dict.fromkeys(SUM_KEYS, 0.0)
        self.sources = tuple(sources)
        """The names of a mix's sources (``trainer.mixing``): a loss and a count of samples each."""
        for name in self.sources:
            self.sums.update(dict.fromkeys(_source_keys(name), 0.0))
        self.started = time.perf_counter()

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.sums[key] += float(value)

    def add_output(self, out: Any) -> None:
        """The per-objective sums of one micro-batch's ``PreTrainingOutput``."""
        self.add(loss_sum=out.loss.detach().float())
        for name in OBJECTIVES:
            count = float(getattr(out, f"{name}_count"))
            loss = getattr(out, f"{name}_loss")
            if count and loss is not None:
                self.add(**{f"{name}_loss_sum": float(loss.detach()) * count, f"{name}_count": count,
                            f"{name}_correct": float(getattr(out, f"{name}_correct"))})

    def add_source(self, name: str, out: Any, samples: int) -> None:
        """One micro-batch of a mix's source ``name``: its loss and samples."""
        loss_sum, batches, count = _source_keys(name)
        self.add(**{loss_sum: out.loss.detach().float(), batches: 1, count: samples})

    def reduce(self, world_size: int, peak: float) -> dict[str, float]:
        """Means and rates over all ranks (collective)."""
        vec = torch.tensor(list(self.sums.values()), dtype=torch.float64)
        all_reduce_(vec)
        s = dict(zip(self.sums, vec.tolist()))
        seconds = max(time.perf_counter() - self.started, 1e-9)
        steps = max(s["steps"] / world_size, 1.0)
        out = {
            "loss": s["loss_sum"] / max(s["steps"], 1.0),
            "lr": 0.0,
            "grad_norm": s["grad_norm_sum"] / steps,
            "samples_per_s": s["samples"] / seconds,
            "tokens_per_s": s["tokens"] / seconds,
            "data_wait_share": s["data_seconds"] / max(s["data_seconds"] + s["compute_seconds"], 1e-9),
            "step_seconds": seconds / steps,
            "samples": s["samples"],
            "tokens": s["tokens"],
            "skipped_steps": s["skipped_steps"],
            "bad_samples": s["bad_samples"],
        }
        for name in OBJECTIVES:
            if s[f"{name}_count"]:
                out[f"{name}_loss"] = s[f"{name}_loss_sum"] / s[f"{name}_count"]
                out[f"{name}_acc"] = s[f"{name}_correct"] / s[f"{name}_count"]
        if peak > 0:
            out["mfu"] = s["flops"] / seconds / (peak * world_size)
        for name in self.sources:
            loss_sum, batches, count = _source_keys(name)
            if s[batches]:
                out[f"loss/{name}"] = s[loss_sum] / s[batches]
            out[f"samples/{name}"] = s[count]
        return out


def _source_keys(name: str) -> tuple[str, str, str]:
    """The sums of one source of a mix: loss over its micro-batches, their number, their samples."""
    return f"source_loss_sum/{name}", f"source_batches/{name}", f"source_samples/{name}"


class TensorBoard:
    """Rank 0's TensorBoard writer plus a JSON-lines copy of the same scalars (no-op elsewhere)."""

    def __init__(self, run: RunFolder, enabled: bool, resumed_at: int | None = None):
        """``resumed_at``: the step the run continues from (0: a new run); what an earlier run logged
        past it is dropped, since those steps are logged again."""
        self.writer = None
        self.jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run.tensorboard), purge_step=resumed_at + 1 if resumed_at else None)
            self.jsonl = open_lines_for_append(run.metrics, after_step=resumed_at)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()
        self.jsonl.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.jsonl.close()


def open_lines_for_append(path: Path, after_step: int | None = None) -> TextIO:
    """A JSON-lines file opened to append, after cutting off a last line that a killed writer left
    without its newline (appended to, it would glue onto the next run's first line and spoil both),
    and with ``after_step``, every line from the first one of a later step on."""
    with open(path, "ab+") as f:
        end = f.seek(0, os.SEEK_END)
        keep = _end_of_last_line(f, end)
        if after_step is not None:
            keep = min(keep, _start_of_steps_after(f, after_step))
        if keep != end:
            f.truncate(keep)
    return open(path, "a", encoding="utf-8")


def _start_of_steps_after(f, step: int) -> int:
    """Offset of the first line whose ``step`` is past ``step`` (lines are appended in step order)."""
    f.seek(0)
    offset = 0
    for raw in f:
        try:
            later = int(json.loads(raw)["step"]) > step
        except (ValueError, KeyError, TypeError):
            later = False
        if later:
            return offset
        offset += len(raw)
    return offset


def _end_of_last_line(f, end: int, chunk: int = 1 << 16) -> int:
    """Offset just past the file's last newline (0 when it has none)."""
    position = end
    while position > 0:
        start = max(0, position - chunk)
        f.seek(start)
        found = f.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        position = start
    return 0


def console_summary(values: dict[str, float]) -> dict[str, str]:
    """The few numbers the progress bar shows."""
    shown = {"loss": f"{values['loss']:.3f}"}
    for key, label in (("text_mlm_acc", "txt"), ("video_mlm_acc", "vid"), ("alignment_acc", "aln")):
        if key in values:
            shown[label] = f"{values[key]:.2f}"
    shown["lr"] = f"{values['lr']:.1e}"
    shown["tok/s"] = f"{values['tokens_per_s']:.0f}"
    shown["data"] = f"{100 * values['data_wait_share']:.0f}%"
    if "mfu" in values:
        shown["mfu"] = f"{100 * values['mfu']:.1f}%"
    return shown
