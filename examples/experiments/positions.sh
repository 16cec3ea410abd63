#!/usr/bin/env bash
# RoPE (half of each head) vs learned absolute positions vs T5 relative position bias (32 buckets up to distance
# 128, a table per layer): the democratization study's Fig. 3.1, tiny preset, equal compute, the same seeds.
#
#   bash examples/experiments/positions.sh [--work runs/experiments] [--iters 300] [--seeds 1 2 3] [--jobs 2] [--record]
# Arms, settings and the raw result: examples/experiments/experiments.py (EXPERIMENTS["positions"]); RESULTS.md shows
# the table rendered from examples/experiments/results/positions.json.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/experiments.py" run positions "$@"
