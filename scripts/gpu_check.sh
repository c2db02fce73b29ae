#!/usr/bin/env bash
# The GPU check in one command (README, "GPU check"): installs the cuda extra, runs the GPU and contract
# tests on the GPU and every benchmark there; JSON per step + summary.md under --out (default gpu_check/<time>).
#   scripts/gpu_check.sh [--quick] [--out DIR] [--skip-install] [--install-timeout S] [--dry-run]
# The logic is scripts/gpu_check.py (tested on CPU by tests/test_gpu_check.py); this only sets the stage.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" "$root/scripts/gpu_check.py" "$@"
