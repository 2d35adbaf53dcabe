"""Parts: one shard stage spread over many processes and machines.

    videobert shards prepare --videos V --transcripts T --out OUT --part 3/100
    videobert shards status OUT        (shards.status)

A stage run with ``--part I/N`` (or, without it, under a launcher: a SLURM array task, an ``srun``
task, a torchrun or deepspeed rank; ``shards.ranks`` reads them) does part I of N of the work. The
scheduler is the engine: start the N parts however it starts processes (``launch/shards.sbatch``).

Assignment. ``prepare`` gives a video to part ``BLAKE2b(video id) mod N``; ``tokenize`` and the
feature pass of ``fit-codebook`` give input shard ``i`` (in the order the spec resolves to) to part
``i mod N``. A part thus always gets the same work, whichever machine runs it, and every input lands
in exactly one part. What belongs to no one video (a transcript file that cannot be read, files that
are neither videos nor transcripts) is part 0's to report and count.

Layout (``shards.schema``). The folder's ``run.json`` holds what every part shares: the stage, its
arguments and N; the first part to start writes it, and a part started with other arguments (or
another N) is refused, naming the difference. Each part writes its shards, ``run.json``,
``errors.jsonl`` and ``summary.json`` into ``part-NNNNN/`` and resumes on its own, exactly like a run
of one part: a killed part re-run with the same arguments continues where it stopped. ``--part 0/1``
(the default without a launcher) is a run of one part, laid out at the top of the folder.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videobert.models.errors import VideoBertError
from videobert.shards import schema, storage
from videobert.shards.folders import (
    claim_output_folder, create_json_once, read_json, record_differences, remove_outputs, write_json_atomic,
)
from videobert.shards.ranks import LauncherEnvironmentError, job_place

PARTS = "parts"
"""Field of a split run's ``run.json`` (and of the combined summary): the number of parts."""
PART = "part"
"""Field of a part's own ``run.json``: its index."""


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count``: this process's share of a stage's work."""

    index: int = 0
    count: int = 1
    source: str = "--part"
    """Where it was read from: the flag, or the launcher's variables."""
    local_rank: int | None = None
    """The process's index on its node when a launcher started it (its GPU)."""

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"part {self.index}/{self.count}: the part must be I/N with 0 <= I < N")

    @property
    def whole(self) -> bool:
        """A run of one part: all the work, written at the top of the output folder."""
        return self.count == 1

    @property
    def first(self) -> bool:
        """Part 0 reports what belongs to no one video (whole files, counts of ignored files)."""
        return self.index == 0

    def owns_video(self, video_id: str) -> bool:
        return self.whole or video_part(video_id, self.count) == self.index

    def owns_shard(self, index: int) -> bool:
        return index % self.count == self.index

    def folder(self, out: str | Path) -> Path:
        """Where this part writes: the output folder itself for a run of one part."""
        return Path(out) if self.whole else schema.part_folder(out, self.index)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True, kw_only=True)
class PartOption:
    """The stage option that picks a part (a base of the stages' config dataclasses)."""

    part: str | None = None
    """This process's share of the work, I/N: part I of N, counting from 0; default: from the launcher
    (SLURM array task, srun task, torchrun or deepspeed rank), else all of it (``videobert shards
    status OUT`` shows the parts of a split run)."""

    def part_problems(self) -> list[str]:
        if self.part is None:
            return []
        try:
            parse_part(self.part)
        except ValueError as e:
            return [f"--part: {e}"]
        return []

    def resolve_part(self, env: Mapping[str, str] | None = None) -> Part:
        """The part this process does (a ``VideoBertError`` names a bad ``--part`` or contradictory
        launcher variables)."""
        try:
            return resolve_part(self.part, os.environ if env is None else env)
        except ValueError as e:
            raise VideoBertError(str(e)) from None


_PART_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_part(text: str) -> Part:
    """``3/100`` -> part 3 of 100."""
    match = _PART_TEXT.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a part like 3/100 (part I of N, 0 <= I < N)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f"{text!r}: the part must be I/N with 0 <= I < N")
    return Part(index, count)


def resolve_part(given: str | None, env: Mapping[str, str]) -> Part:
    """The flag when given, else the launcher's place of this process, else the whole run."""
    if given is not None:
        return parse_part(given)
    try:
        place = job_place(env)
    except LauncherEnvironmentError as e:
        raise ValueError(f"cannot tell this process's part from the launcher: {e}; or give --part I/N") from None
    if place is None:
        return Part()
    return Part(place.index, place.count, source=place.source, local_rank=place.local_rank)


def video_part(video_id: str, count: int) -> int:
    """The part a video belongs to: a stable hash of its id (the same on every machine and Python)."""
    digest = hashlib.blake2b(video_id.encode("utf-8", errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def in_sample(video_id: str, share: float) -> bool:
    """Whether a video is in a sample of ``share`` of the videos (``prepare --sample``): a stable hash of
    its id, other than the parts' (a sample takes its share from every part)."""
    digest = hashlib.blake2b(video_id.encode("utf-8", errors="surrogatepass"), digest_size=8, person=b"sample").digest()
    return int.from_bytes(digest, "big") < share * 2**64


# ---------------------------------------------------------------------------------------------------
# Claiming a part's folder


def claim_part(
    out: Path, record: dict[str, Any], part: Part, *, overwrite: bool, stage: str,
    argument_differences: Callable[[dict[str, Any], dict[str, Any]], list[str]],
    error: type[Exception], extra_patterns: Sequence[str] = (),
) -> tuple[Path, bool]:
    """Claim the folder this part writes into (``claim_output_folder``): the output folder for a run
    of one part, else the part's folder once the split run's shared record agrees. Returns (folder,
    whether this part had finished already)."""
    out.mkdir(parents=True, exist_ok=True)
    options = dict(overwrite=overwrite, stage=stage, argument_differences=argument_differences, error=error,
                   extra_patterns=extra_patterns)
    if part.whole:
        _refuse_split(out, overwrite, error)
        return out, claim_output_folder(out, record, **options)
    shared = {key: record[key] for key in ("stage", "format_version", "arguments")} | {PARTS: part.count}
    _claim_split(out, shared, overwrite, stage, argument_differences, error)
    folder = part.folder(out)
    folder.mkdir(exist_ok=True)
    return folder, claim_output_folder(folder, {**record, PART: part.index, PARTS: part.count}, **options)


def _refuse_split(out: Path, overwrite: bool, error: type[Exception]) -> None:
    count = split_count(out)
    if count is None:
        return
    if not overwrite:
        raise error(f"{out} holds a run split into {count} parts; give each process its --part I/{count} (or run "
                    f"`videobert shards status {out}`), write elsewhere, or add --overwrite to start over")
    for _, folder in schema.part_folders(out):
        storage.remove_published(folder)  # in a bucket, the part's objects too
    remove_outputs(out)


def _claim_split(out: Path, shared: dict[str, Any], overwrite: bool, stage: str,
                 argument_differences: Callable, error: type[Exception]) -> None:
    """Agree on the split run's record with the parts that started before (or write it, first)."""
    run_file = out / schema.RUN_FILE
    while True:
        if run_file.exists():
            previous = read_json(run_file)
            if previous.get(PARTS, 1) == 1 and overwrite:
                remove_outputs(out)
                continue
            differences = _split_differences(previous, shared, stage, argument_differences)
            if not differences:
                return
            if overwrite:
                write_json_atomic(run_file, shared)
                (out / schema.SUMMARY_FILE).unlink(missing_ok=True)
                return
            raise error(
                f"{out} is split into parts that run with other arguments ({'; '.join(differences)}); start every "
                "part with the same arguments, or add --overwrite to start this part over with these"
            )
        if any(out.glob(f"{schema.SHARD_PREFIX}*")):
            raise error(f"{out} holds shards of a run of one part; write the parts elsewhere, or add --overwrite")
        if create_json_once(run_file, shared):
            return


def _split_differences(previous: dict[str, Any], shared: dict[str, Any], stage: str,
                       argument_differences: Callable) -> list[str]:
    if previous.get(PARTS, 1) == 1:
        return ["it holds a run of one part (no --part)"]
    differences = record_differences(previous, shared, stage, argument_differences)
    if previous[PARTS] != shared[PARTS]:
        differences.insert(0, f"it is split into {previous[PARTS]} parts, this part is one of {shared[PARTS]}")
    return differences


def split_count(out: Path) -> int | None:
    """N for a folder holding a run split into N parts; None otherwise (a run of one part, a part's own
    folder, or no run)."""
    run_file = Path(out) / schema.RUN_FILE
    if not run_file.exists():
        return None
    record = read_json(run_file)
    count = record.get(PARTS, 1)
    return count if count > 1 and PART not in record else None


# ---------------------------------------------------------------------------------------------------
# The combined view


@dataclass(frozen=True)
class SummaryRules:
    """How a stage's part summaries combine (each stage module defines its ``SUMMARY_RULES``)."""

    accounting: tuple[str, str, str]
    """The fields (read, written, skipped) that must add up: read = written + skipped."""
    throughput: tuple[str, str]
    """The rate shown per part, and its unit (``frames_per_second``, ``frames/s``)."""
    rates: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Field -> (numerator, denominator): recomputed from the summed fields."""
    same: tuple[str, ...] = ()
    """Numeric fields every part shares (taken once, not summed)."""


@dataclass
class PartState:
    index: int
    folder: Path
    summary: dict[str, Any] | None = None
    """The part's summary.json (None: not finished)."""
    started: bool = False
    other_arguments: list[str] = field(default_factory=list)
    """How the part's own run.json differs from the shared record (a part restarted with --overwrite)."""
    shards: int = 0
    samples: int = 0
    """Complete shards (and their samples) so far."""


@dataclass
class SplitStatus:
    out: Path
    stage: str
    count: int
    parts: list[PartState]

    @property
    def finished(self) -> list[PartState]:
        return [p for p in self.parts if p.summary is not None and not p.other_arguments]

    @property
    def unfinished(self) -> list[PartState]:
        return [p for p in self.parts if p.started and p.summary is None and not p.other_arguments]

    @property
    def missing(self) -> list[PartState]:
        return [p for p in self.parts if not p.started]

    @property
    def complete(self) -> bool:
        return len(self.finished) == self.count


def split_status(out: str | Path) -> SplitStatus:
    """Read every part of a split run (raises ``ValueError`` when ``out`` holds none)."""
    out = Path(out)
    count = split_count(out)
    if count is None:
        raise ValueError(f"{out} holds no run split into parts (no {schema.RUN_FILE} naming its {PARTS})")
    shared = read_json(out / schema.RUN_FILE)
    parts = [_part_state(out, index, shared) for index in range(count)]
    return SplitStatus(out, shared.get("stage", "?"), count, parts)


def _part_state(out: Path, index: int, shared: dict[str, Any]) -> PartState:
    folder = schema.part_folder(out, index)
    state = PartState(index, folder)
    run_file = folder / schema.RUN_FILE
    if not run_file.exists():
        return state
    state.started = True
    own = read_json(run_file)
    if own.get("arguments") != shared.get("arguments") or own.get(PARTS) != shared.get(PARTS):
        state.other_arguments = [f"{folder / schema.RUN_FILE} has other arguments than {out / schema.RUN_FILE}"]
    summary = folder / schema.SUMMARY_FILE
    state.summary = read_json(summary) if summary.exists() else None
    for tar in schema.complete_shards(folder, with_parts=False):
        stats = read_json(schema.stats_path(tar))
        state.shards += 1
        state.samples += int(stats.get("samples", 0))
    return state


def combine(summaries: Sequence[dict[str, Any]], rules: SummaryRules) -> dict[str, Any]:
    """One summary from the parts' summaries (see ``SummaryRules``)."""
    combined: dict[str, Any] = {}
    for key in dict.fromkeys(k for s in summaries for k in s):
        values = [s[key] for s in summaries if key in s]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and key not in rules.same and key not in rules.rates:
            combined[key] = sum(values)
        elif all(v == values[0] for v in values):
            combined[key] = values[0]
        else:
            combined[key] = values  # differs between parts (e.g. a per-part time): kept per part
    for key, (numerator, denominator) in rules.rates.items():
        total = combined.get(denominator) or 0
        combined[key] = combined.get(numerator, 0) / total if total else 0.0
    return combined


def combined_summary(status: SplitStatus, rules: SummaryRules) -> dict[str, Any]:
    """The summary.json of a split run: the finished parts combined, and where every part stands."""
    combined = combine([p.summary for p in status.finished], rules)
    combined[PARTS] = {
        "count": status.count, "finished": [p.index for p in status.finished],
        "unfinished": [p.index for p in status.unfinished], "missing": [p.index for p in status.missing],
        "other_arguments": [p.index for p in status.parts if p.other_arguments], "complete": status.complete,
    }
    return {"stage": status.stage, **{k: v for k, v in combined.items() if k != "stage"}}


def write_combined_summary(out: Path, rules: SummaryRules) -> dict[str, Any]:
    """Write (and return) the combined summary.json of a split run."""
    summary = combined_summary(split_status(out), rules)
    write_json_atomic(Path(out) / schema.SUMMARY_FILE, summary)
    return summary


def finish_part(out: Path, part: Part, rules: SummaryRules) -> None:
    """Called by a part that finished: the last one writes the combined summary."""
    if part.whole:
        return
    storage.pull_records(out)  # a bucket's folder: what the other parts have committed since this one started
    if split_status(out).complete:
        write_combined_summary(out, rules)


PART_STAGES = {
    "prepare": "videobert.shards.prepare",
    "fit-codebook": "videobert.shards.fit_features",
    "tokenize": "videobert.shards.tokenize_clips",
    "tokenize-videos": "videobert.shards.tokenize_videos",
}
"""Stage run in parts -> the module whose ``SUMMARY_RULES`` combine its parts' summaries (the
feature pass is the part of ``fit-codebook`` that runs in parts)."""


def rules_of(stage: str) -> SummaryRules:
    """The ``SUMMARY_RULES`` of a stage run in parts (its module imported by name: only the stage
    asked about, which imports this module)."""
    if stage not in PART_STAGES:
        raise VideoBertError(f"stage {stage!r} is not run in parts (those are: {', '.join(PART_STAGES)})")
    return importlib.import_module(PART_STAGES[stage]).SUMMARY_RULES
