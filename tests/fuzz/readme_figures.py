"""Write a fuzz run's figures into the README's reliability section (the table after its marker).

    VIDEOBERT_FUZZ_FIGURES=fuzz-figures.json python -m pytest tests/fuzz     # the bounded run
    python tests/fuzz/readme_figures.py fuzz-figures.json [README.md]

A run at scale 1 (the bounded run) replaces the table after ``<!-- fuzz figures: bounded run -->``;
any other scale (``bash launch/fuzz.sh``) the one after ``<!-- fuzz figures: long run -->``. Figures
of a run with failures are refused: the README quotes passing runs only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fuzzing import Tally  # noqa: E402

MARKERS = {True: "<!-- fuzz figures: bounded run -->", False: "<!-- fuzz figures: long run -->"}


def table_of(figures: dict) -> str:
    tally = Tally()
    for row in figures["rows"]:
        for outcome, n in row.items():
            if outcome not in ("kind", "unit"):
                tally.add(row["kind"], row["unit"], outcome, n)
    return tally.markdown()


def with_table(readme: str, marker: str, table: str) -> str:
    """``readme`` with the table right after ``marker`` (a blank line between them) replaced."""
    if marker not in readme:
        raise SystemExit(f"the README has no {marker} line")
    head, _, rest = readme.partition(marker + "\n")
    lines = rest.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return head + marker + "\n" + "\n".join(lines[:start] + table.split("\n") + lines[end:])


def main(argv: list[str]) -> None:
    figures = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if not figures.get("passed"):
        raise SystemExit(f"{argv[0]}: that run had failures; the README quotes passing runs only")
    readme = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2] / "README.md"
    marker = MARKERS[int(figures["scale"]) == 1]
    readme.write_text(with_table(readme.read_text(encoding="utf-8"), marker, table_of(figures)), encoding="utf-8")
    print(f"{readme}: the table after {marker} now holds the figures of {argv[0]} (scale {figures['scale']})")


if __name__ == "__main__":
    main(sys.argv[1:])
