"""The run folder: the one place that names what a run writes, and the small readers of it.

Layout of ``run_dir``::

    LOCK                             held while a run trains in it (``trainer.run_lock``): host, pid
    config.yaml                      the resolved run config (written when training starts)
    metrics.jsonl                    the training scalars, one JSON line per logging step
    tensorboard/                     the same scalars as TensorBoard events
    heldout.json                     held-out metrics at the end of training (``data.heldout``)
    audit/rank-00000.jsonl           with ``data.audit``: what each optimizer step of a rank consumed
    checkpoints/latest               the newest complete checkpoint's name
    checkpoints/step-N/              one checkpoint (``CheckpointFolder``):
        COMPLETE                     written last, by rank 0, once every rank's files are on disk:
                                     the step, the ranks, and each file's size and SHA-256
        config.yaml                  the resolved run config
        model.json                   the model's config, joint vocabulary included
        trainer/rank-00000.json      each rank's trainer state (counters, data position)
        trainer/rng-00000.pt         each rank's RNG states (tensors only)
        (DeepSpeed's engine files)   ZeRO-3 partitions of every rank, optimizer, schedule
    checkpoints/.step-N.partial/     a checkpoint being written; renamed to step-N once complete
    checkpoints/.step-N.replaced/    a complete step-N being replaced by a newer save of that step
    report.md, results.json, *.png   the evaluation report (``videobert eval``'s default --out)
    caption/                         captioning and linear probes (``videobert caption``, ``CaptionFolder``):
        config.yaml                  the caption run's resolved config
        features.safetensors         the frozen features of its segments (reused when they match)
        tensorboard/                 each captioner's training loss, under its row's name (ROW/K with several)
        rows/ROW/captioner-K/checkpoints/step-N/
                                     the row's captioner K's checkpoint: weights, optimizer, state, COMPLETE
        rows/ROW/captions.jsonl      the row's captions of every held-out segment, one per captioner
        results.json, report.md      the table, the probes, the examples (caption_examples.png)

An exported model directory (``videobert export``) keeps the run's config as ``EXPORT_CONFIG`` and
its identity as ``EXPORT_INFO`` beside the transformers files. Small files are written atomically
(temporary name, fsync, rename), so a killed process leaves the old file or the new one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videobert.shards.folders import write_text_atomic

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
HELDOUT_FILE = "heldout.json"
CHECKPOINTS_DIR = "checkpoints"
REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"

LATEST = "latest"
COMPLETE = "COMPLETE"
MODEL_CONFIG = "model.json"
TRAINER_STATE_DIR = "trainer"
AUDIT_DIR = "audit"

EXPORT_INFO = "videobert.json"
"""Written by ``videobert export``: the step, the checkpoint it came from, the codebook's hash."""
EXPORT_CONFIG = "videobert-run.yaml"
"""Written by ``videobert export``: the run's resolved config."""

CAPTION_DIR = "caption"
FEATURES_FILE = "features.safetensors"
ROWS_DIR = "rows"
CAPTIONS_FILE = "captions.jsonl"
CAPTIONER_WEIGHTS = "captioner.safetensors"
CAPTIONER_STATE = "captioner.json"
OPTIMIZER_STATE = "optimizer.pt"
CAPTION_EXAMPLES = "caption_examples.png"

_STEP_DIR = re.compile(r"^step-(\d+)$")
_STAGED_DIR = re.compile(r"^\.step-(\d+)\.(partial|replaced)$")
PARTIAL, REPLACED = "partial", "replaced"


@dataclass(frozen=True)
class CheckpointFolder:
    """One ``step-N`` folder and the names of its files."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @staticmethod
    def name_of(step: int) -> str:
        return f"step-{step}"

    @staticmethod
    def staged_name_of(step: int, kind: str) -> str:
        """``.step-N.partial`` (being written) or ``.step-N.replaced`` (making way for a newer step-N)."""
        return f".step-{step}.{kind}"

    @property
    def complete_marker(self) -> Path:
        return self.path / COMPLETE

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def model_config(self) -> Path:
        return self.path / MODEL_CONFIG

    def trainer_state(self, rank: int) -> Path:
        return self.path / TRAINER_STATE_DIR / f"rank-{rank:05d}.json"

    def rng_state(self, rank: int) -> Path:
        return self.path / TRAINER_STATE_DIR / f"rng-{rank:05d}.pt"

    def is_complete(self) -> bool:
        return self.complete_marker.is_file()

    def marker(self) -> dict[str, Any]:
        """The completion marker's record (step, world size, time)."""
        return json.loads(self.complete_marker.read_text(encoding="utf-8"))

    def read_trainer_state(self, rank: int = 0) -> dict[str, Any]:
        """A rank's trainer state as saved (``trainer.checkpoint.TrainerState`` reads it whole)."""
        return json.loads(self.trainer_state(rank).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class RunFolder:
    """A run folder (``run_dir``) and the names of what a run writes into it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def heldout(self) -> Path:
        return self.path / HELDOUT_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def results(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def caption(self) -> Path:
        """``videobert caption``'s default output folder (``CaptionFolder``)."""
        return self.path / CAPTION_DIR

    @property
    def audit_dir(self) -> Path:
        return self.path / AUDIT_DIR

    def audit(self, rank: int) -> Path:
        return self.audit_dir / f"rank-{rank:05d}.jsonl"

    def checkpoint(self, step: int) -> CheckpointFolder:
        return CheckpointFolder(self.checkpoints / CheckpointFolder.name_of(step))

    def is_run(self) -> bool:
        return self.checkpoints.is_dir()


@dataclass(frozen=True)
class CaptionFolder:
    """What ``videobert caption`` writes (see the module doc); one sub-folder per captioner row."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def features(self) -> Path:
        return self.path / FEATURES_FILE

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def results(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def examples(self) -> Path:
        return self.path / CAPTION_EXAMPLES

    def row(self, name: str) -> Path:
        return self.path / ROWS_DIR / name

    def row_checkpoints(self, name: str, member: int = 0) -> Path:
        """Checkpoints of the row's captioner number ``member``."""
        return self.row(name) / f"captioner-{member}" / CHECKPOINTS_DIR

    def row_captions(self, name: str) -> Path:
        return self.row(name) / CAPTIONS_FILE


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every step folder under a checkpoints folder, complete or not, by step."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def staged_dirs(root: Path) -> list[tuple[int, str, Path]]:
    """(step, ``PARTIAL`` or ``REPLACED``, folder) of the checkpoints a save left on its way."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), m.group(2), p) for p in root.iterdir() if (m := _STAGED_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_complete(root: Path) -> Path | None:
    """The newest complete step folder under a checkpoints folder."""
    complete = [p for _, p in step_dirs(root) if CheckpointFolder(p).is_complete()]
    return complete[-1] if complete else None


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_folder(path: Path) -> None:
    """Make the names in a folder (files created, renamed, removed) durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a system whose folders cannot be opened (Windows): nothing to sync
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder``, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())
