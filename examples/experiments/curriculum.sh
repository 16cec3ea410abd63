#!/usr/bin/env bash
# The democratization study's three-phase curriculum (Table 5.2: general text -> multi-language code -> Python,
# batch and lr stepping down) against one phase on the same tokens: the same number of samples from each source,
# blended, one cosine schedule. Sources: /usr/share/doc text, /usr/include C headers, the Python stdlib; validation
# on held-out Python files. Phases in experiments.py (PHASES).
#
#   bash examples/experiments/curriculum.sh [--work runs/experiments] [--iters 300] [--seeds 1 2 3] [--jobs 2] [--record]
# Arms, settings and the raw result: examples/experiments/experiments.py (EXPERIMENTS["curriculum"]); RESULTS.md shows
# the table rendered from examples/experiments/results/curriculum.json.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/experiments.py" run curriculum "$@"
