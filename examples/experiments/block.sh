#!/usr/bin/env bash
# Parallel (GPT-J/PaLM, two norms in the tiny preset) vs sequential transformer block, tiny preset, equal
# compute, the same seeds.
#
#   bash examples/experiments/block.sh [--work runs/experiments] [--iters 300] [--seeds 1 2 3] [--jobs 2] [--record]
# Arms, settings and the raw result: examples/experiments/experiments.py (EXPERIMENTS["block"]); RESULTS.md shows
# the table rendered from examples/experiments/results/block.json.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/experiments.py" run block "$@"
