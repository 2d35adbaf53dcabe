"""The fuzz suite's settings, its per-case time limit, and the tally its figures come from.

Two runs of the same suite:

* the bounded run (the default, part of ``bash launch/test.sh``): every test draws a fixed number of
  inputs from a fixed seed (``derandomize``), so the figures are the same from run to run;
* the long run (``bash launch/fuzz.sh [SCALE]``): ``VIDEOBERT_FUZZ_SCALE`` times as many inputs per
  test, drawn at random (Hypothesis prints the seed of a failing case, and the case itself).

Each case runs under ``CASE_SECONDS``: a reader that hangs fails the case, it does not stall the suite.
What every case ended in is tallied by input kind and printed at the end of the session (and written
as JSON to ``VIDEOBERT_FUZZ_FIGURES`` when set): the README's reliability section quotes it.
"""

from __future__ import annotations

import json
import os

import pytest
from fuzzing import SCALE, TALLY, Tally


@pytest.fixture(scope="session")
def tally() -> Tally:
    return TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not TALLY.counts:
        return
    terminalreporter.section(f"fuzz figures (scale {SCALE}; no traceback, hang or lost good sample in any case)"
                             if exitstatus == 0 else f"fuzz figures (scale {SCALE}; some cases FAILED)")
    terminalreporter.write_line(TALLY.markdown())
    target = os.environ.get("VIDEOBERT_FUZZ_FIGURES")
    if target:
        rows = [{"kind": k, "unit": u, **o} for k, u, o in TALLY.rows()]
        with open(target, "w", encoding="utf-8") as f:
            json.dump({"scale": SCALE, "passed": exitstatus == 0, "rows": rows}, f, indent=1)
