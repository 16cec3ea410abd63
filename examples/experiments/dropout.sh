#!/usr/bin/env bash
# Dropout variants at p = 0.1: none vs hidden (+ embedding, as Megatron's --hidden-dropout) vs LayerDrop vs
# DropHead (the study's Fig. 3.4 "structure dropout"), tiny preset, equal compute, the same seeds.
#
#   bash examples/experiments/dropout.sh [--work runs/experiments] [--iters 300] [--seeds 1 2 3] [--jobs 2] [--record]
# Arms, settings and the raw result: examples/experiments/experiments.py (EXPERIMENTS["dropout"]); RESULTS.md shows
# the table rendered from examples/experiments/results/dropout.json.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/experiments.py" run dropout "$@"
