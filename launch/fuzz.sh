#!/usr/bin/env bash
# The long fuzz run: SCALE times the inputs of the bounded run in the test suite, drawn at random.
#   bash launch/fuzz.sh [SCALE] [pytest options]       (default SCALE 50: some fifteen minutes on 2 cores)
# The figures (inputs tried by kind, and what happened to each) are printed at the end and written to
# fuzz-figures.json; a failing case is printed with the input that made it fail.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scale=${1:-50}
shift || true
bash "$root/launch/install.sh" dev
cd "$root"
VIDEOBERT_FUZZ_SCALE=$scale VIDEOBERT_FUZZ_FIGURES=${VIDEOBERT_FUZZ_FIGURES:-fuzz-figures.json} \
    exec "${VIDEOBERT_VENV:-$root/.venv}/bin/python" -m pytest tests/fuzz -p no:cacheprovider "$@"
