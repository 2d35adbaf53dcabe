#!/usr/bin/env bash
# Install with the test extras, then run the test suite (CPU; GPU tests skip without a GPU).
#   bash launch/test.sh [pytest options]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/install.sh" dev
cd "$root"
exec "${VIDEOBERT_VENV:-$root/.venv}/bin/python" -m pytest "$@"
