"""Helpers of the fuzz suite (see ``conftest.py`` for the two runs and the figures)."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
from typing import Iterator

from hypothesis import HealthCheck, settings

SCALE = max(1, int(os.environ.get("VIDEOBERT_FUZZ_SCALE", "1")))
CASE_SECONDS = float(os.environ.get("VIDEOBERT_FUZZ_CASE_SECONDS", "20"))
TEST_SECONDS = 90 * SCALE
"""pytest-timeout's limit for one fuzz test (the bounded run takes well under a minute in all)."""

READ = "read"
"""The input (or the part of it a case checks) was used whole."""
LISTED = "listed"
"""A problem was listed (errors.jsonl line, on_error report) naming the input and what is wrong."""
REFUSED = "refused"
"""The input was refused with one clear error naming the file and what is wrong."""
CHANGED = "changed"
"""Read, but not as written: a flipped byte inside a caption or an array, which no check can tell."""
OUTCOMES = {READ: "read whole", LISTED: "problem listed", REFUSED: "refused, reason given", CHANGED: "read altered"}


def fuzz_settings(examples: int):
    """Hypothesis settings of a fuzz test drawing ``examples`` inputs in the bounded run."""
    return settings(
        max_examples=examples * SCALE, derandomize=SCALE == 1, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture],
    )


class CaseTimedOut(BaseException):
    """A case ran past ``CASE_SECONDS`` (a BaseException, so that no ``except Exception`` under test hides it)."""


@contextlib.contextmanager
def time_limit(seconds: float = CASE_SECONDS) -> Iterator[None]:
    """Fail the case with ``CaseTimedOut`` when its body runs longer than ``seconds``."""

    def expire(signum, frame):
        raise CaseTimedOut(f"the case ran longer than {seconds:g} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Tally:
    """Counts of (kind, unit, outcome): e.g. ("shard tars", "samples", "read")."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()

    def add(self, kind: str, unit: str, outcome: str, n: int = 1) -> None:
        self.counts[(kind, unit, outcome)] += n

    def rows(self) -> list[tuple[str, str, dict[str, int]]]:
        table: dict[tuple[str, str], dict[str, int]] = {}
        for (kind, unit, outcome), n in sorted(self.counts.items()):
            table.setdefault((kind, unit), {})[outcome] = n
        return [(kind, unit, outcomes) for (kind, unit), outcomes in table.items()]

    def markdown(self) -> str:
        shown = [o for o in OUTCOMES if any(o in outcomes for _, _, outcomes in self.rows())]
        lines = ["| input kind | tried | " + " | ".join(OUTCOMES[o] for o in shown) + " |",
                 "|---|---:|" + "---:|" * len(shown)]
        for kind, unit, outcomes in self.rows():
            cells = " | ".join(str(outcomes.get(o, 0)) for o in shown)
            lines.append(f"| {kind} | {sum(outcomes.values())} {unit} | {cells} |")
        return "\n".join(lines)


TALLY = Tally()
