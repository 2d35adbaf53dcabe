#!/usr/bin/env bash
# The main job: install, then run the end-to-end demo on the built-in synthetic corpus.
#   bash launch/demo.sh [videobert demo options, e.g. --out runs/demo]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/install.sh" demo
exec "${VIDEOBERT_VENV:-$root/.venv}/bin/videobert" demo "$@"
