#!/usr/bin/env bash
# GELU vs ReLU vs ELU (the democratization study's activation ablation, its Table 3.2), tiny preset on the
# standard-library corpus, equal compute, the same seeds for every arm.
#
#   bash examples/experiments/activations.sh [--work runs/experiments] [--iters 300] [--seeds 1 2 3] [--jobs 2] [--record]
# Arms, settings and the raw result: examples/experiments/experiments.py (EXPERIMENTS["activations"]); RESULTS.md shows
# the table rendered from examples/experiments/results/activations.json.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/experiments.py" run activations "$@"
