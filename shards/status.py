"""``videobert shards status OUT``: where a shard stage run in parts stands.

``videobert shards status OUT`` prints each part (finished with its throughput, unfinished
with the shards it has so far, or missing), the combined accounting of the finished parts (read =
written + skipped), and writes it as OUT's ``summary.json``: the stage's summary fields combined
(counts summed, rates recomputed from the sums, what every part shares once) plus ``parts``. The
last part to finish writes the same file. Exit status: 0 when every part is finished, 1 when some
are missing or unfinished, 2 when OUT holds no run of a shard stage.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from videobert.models.errors import VideoBertError
from videobert.shards import schema, storage
from videobert.shards.folders import read_json, write_json_atomic
from videobert.shards.parts import (
    PART, PARTS, SplitStatus, SummaryRules, combined_summary, rules_of, split_count, split_status,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="FOLDER", help="output folder of a shard stage (run in parts or not)")
    parser.add_argument("--no-write", dest="write", action="store_false",
                        help="only print; do not write the combined summary.json")


def run(args: argparse.Namespace) -> int:
    with storage.working_folder(args.out) as out:  # a bucket's prefix: its records, read through a local copy
        return _status(Path(out), args)


def _status(out: Path, args: argparse.Namespace) -> int:
    if split_count(out) is None:
        return _single_status(out)
    status = split_status(out)
    rules = rules_of(status.stage)
    summary = combined_summary(status, rules)
    print(format_status(status, rules, summary, name=storage.named(out)))
    if args.write:
        write_json_atomic(out / schema.SUMMARY_FILE, summary)
        print(f"wrote {storage.named(out / schema.SUMMARY_FILE)}")
    return 0 if status.complete else 1


def _single_status(folder: Path) -> int:
    run_file = folder / schema.RUN_FILE
    out = storage.named(folder)  # the bucket's URL for a bucket's prefix
    if not run_file.exists():
        raise VideoBertError(f"{out} holds no run of a shard stage (no {schema.RUN_FILE})")
    record = read_json(run_file)
    stage = record.get("stage", "?")
    if PART in record:
        print(f"{out} is part {record[PART]} of a {stage} run in {record.get(PARTS)} parts: "
              f"videobert shards status {storage.named(folder.parent)}")
        return 2
    summary = folder / schema.SUMMARY_FILE
    if summary.exists():
        print(f"{out}: a {stage} run of one part, finished; its summary is {storage.named(summary)}")
        return 0
    shards = schema.complete_shards(folder, with_parts=False)
    print(f"{out}: a {stage} run of one part, unfinished: {len(shards)} complete shards so far")
    return 1


def format_status(status: SplitStatus, rules: SummaryRules, summary: dict[str, Any], name: str | None = None) -> str:
    """The printed view: one line per part, the parts missing or unfinished, the combined accounting
    (``name``: how to call the folder, default ``status.out``)."""
    read, written, skipped = rules.accounting
    rate, unit = rules.throughput
    lines = [f"{name or status.out}: {status.stage} in {status.count} parts: {len(status.finished)} finished, "
             f"{len(status.unfinished)} unfinished, {len(status.missing)} missing"]
    for p in status.parts:
        if p.other_arguments:
            lines.append(f"  part {p.index:>5}  OTHER ARGUMENTS: {p.other_arguments[0]}")
        elif p.summary is not None:
            s = p.summary
            lines.append(f"  part {p.index:>5}  finished    {read.split('_')[0]} {s.get(read)} = {s.get(written)} "
                         f"written + {s.get(skipped)} skipped  {s.get(rate, 0):.1f} {unit}")
        elif p.started:
            lines.append(f"  part {p.index:>5}  unfinished  {p.shards} complete shards, {p.samples} samples so far")
    if status.missing:
        lines.append(f"  missing (never started): parts {_ranges([p.index for p in status.missing])}")
    lines.append(_accounting_line(summary, rules, len(status.finished), status.count))
    if not status.complete:
        todo = [p.index for p in status.parts if p.summary is None or p.other_arguments]
        lines.append(f"  to finish: re-run parts {_ranges(todo)} with the same arguments (each resumes where it stopped)")
    return "\n".join(lines)


def _accounting_line(summary: dict[str, Any], rules: SummaryRules, finished: int, count: int) -> str:
    read, written, skipped = rules.accounting
    r, w, k = (summary.get(name, 0) for name in rules.accounting)
    check = "adds up" if r == w + k else "DOES NOT ADD UP"
    return (f"  combined ({finished} of {count} parts): {read.replace('_', ' ')} {r} = {w} written + {k} "
            f"skipped ({check}); {summary.get(rules.throughput[0], 0):.1f} {rules.throughput[1]} per part")


def _ranges(indices: Sequence[int]) -> str:
    """``0-3, 7, 9-10``: indices as a short list of ranges (what ``sbatch --array`` takes)."""
    groups: list[list[int]] = []
    for i in indices:
        if groups and i == groups[-1][-1] + 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    return ",".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)
