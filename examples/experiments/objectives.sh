#!/usr/bin/env bash
# AR vs FIM (rate 0.5, half of it SPM) vs MIM (TV agreement, beta 1) at equal trained token positions: AR and FIM
# read 8 samples per step, MIM reads 4 and trains each in both directions (8 rows), so every arm has the same
# compute and MIM sees half as many distinct tokens. Validation is left-to-right loss for every arm (MIM: its
# forward direction). The infilling benchmark (tools/evaluate_infilling.py) can be run on the saved checkpoints.
#
#   bash examples/experiments/objectives.sh [--work runs/experiments] [--iters 300] [--seeds 1 2 3] [--jobs 2] [--record]
# Arms, settings and the raw result: examples/experiments/experiments.py (EXPERIMENTS["objectives"]); RESULTS.md shows
# the table rendered from examples/experiments/results/objectives.json.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/experiments.py" run objectives "$@"
