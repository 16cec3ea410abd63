#!/usr/bin/env bash
# RoPE vs learned absolute positions vs T5 relative position bias (the democratization study's Fig. 3.1) on the
# standard-library corpus, equal compute: every run is the tiny preset for ITERS steps of 8 x 128 tokens, same data
# order, same LR schedule; only the position encoding and the seed differ. SEEDS seeds per arm; the table reports
# the mean and the spread (min-max) of the final left-to-right validation loss, plus the commit of the numbers.
#
#   bash examples/experiments/positions.sh   (WORK=runs/activations ITERS=100 SEEDS="1 2" by default)
# The runs, their corpus and the table come from ablation.sh (one arm per position_embedding).
exec bash "$(dirname "$0")/ablation.sh" positions \
    "rope=--model.position_embedding rope" \
    "learned=--model.position_embedding learned" \
    "t5=--model.position_embedding t5"
