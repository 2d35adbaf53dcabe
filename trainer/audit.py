"""The audit of what a run consumed (``data.audit=true``): how a user checks a run's data.

Each rank appends to ``run_dir/audit/rank-NNNNN.jsonl`` one JSON line per optimizer step and epoch::

    {"step": 12, "epoch": 0, "keys": ["video003-0002", "video003-0003", ...]}

With corpora mixed by weight (``trainer.mixing``) each line also names its source, and a step has one
line per source and epoch::

    {"step": 12, "source": "youcook2", "epoch": 3, "keys": [...]}

``keys`` are the samples the step's examples were built from: every sample of a joined item; the
video an alignment negative borrows from another item is not a consumption. A step whose examples
straddle the end of an epoch has one line per epoch. A micro-batch dropped for a non-finite loss
consumed its samples all the same: its line carries ``"skipped": true``.

On resume, rank 0 drops the lines past the checkpoint's step from every rank's file (those steps are
done again, perhaps by other ranks), so the audit of a run killed and resumed lists each step once.
A line cut short by a killed process is dropped with them. Lines are flushed as they are written
and fsynced with each checkpoint.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable


from videobert.trainer.run_folder import RunFolder


def read_audit(path: Path) -> list[dict]:
    """The whole lines of one rank's audit file (a line cut short by a killed writer is dropped)."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return [line for line in lines if isinstance(line, dict) and "step" in line]


def drop_after(folder: Path, step: int) -> None:
    """Cut every rank's file of ``folder`` before its first line past ``step`` (or cut short)."""
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("rank-*.jsonl")):
        with open(path, "r+b") as f:
            keep = _end_of_steps_up_to(f, step)
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())


def _end_of_steps_up_to(f, step: int) -> int:
    # Lines are appended in step order, so the first line past ``step`` ends what is kept.
    offset = 0
    for raw in f:
        try:
            line = json.loads(raw)
            later = int(line["step"]) > step
        except (ValueError, KeyError, TypeError):
            later = True
        if later or not raw.endswith(b"\n"):
            break
        offset += len(raw)
    return offset


class Audit:
    """One rank's audit file, appended to as steps complete."""

    def __init__(self, run: RunFolder, rank: int):
        self.path = run.audit(rank)
        self._file = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def record(self, step: int, consumed: Iterable[tuple], skipped: bool = False) -> None:
        """Lines for ``step`` from (keys, epochs) pairs, one line per epoch; from (keys, epochs, source)
        triples (a mix), one line per source and epoch."""
        by_epoch: dict[tuple[str | None, int], list[str]] = defaultdict(list)
        for keys, epochs, *source in consumed:
            for key, epoch in zip(keys.tolist(), epochs.tolist()):
                by_epoch[(source[0] if source else None, int(epoch))].append(str(key))
        extra = {"skipped": True} if skipped else {}
        for source, epoch in sorted(by_epoch, key=lambda k: (k[0] or "", k[1])):
            named = {"source": source} if source is not None else {}
            line = {"step": step, **named, "epoch": epoch, "keys": by_epoch[(source, epoch)], **extra}
            self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
