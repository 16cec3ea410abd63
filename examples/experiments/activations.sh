#!/usr/bin/env bash
# GELU vs ReLU vs ELU (the democratization study's activation ablation, its Table 3.2) on the standard-library
# corpus, equal compute: every run is the tiny preset for ITERS steps of 8 x 128 tokens, same data order, same LR
# schedule; only model.activation and the seed differ. SEEDS seeds per arm; the table reports the mean and the
# spread (min-max) of the final left-to-right validation loss, plus the commit the numbers come from.
#
#   bash examples/experiments/activations.sh        (WORK=runs/activations ITERS=100 SEEDS="1 2" by default)
# The runs, their corpus and the table come from ablation.sh (one arm per activation).
exec bash "$(dirname "$0")/ablation.sh" activation \
    "gelu=--model.activation gelu" \
    "relu=--model.activation relu" \
    "elu=--model.activation elu"
