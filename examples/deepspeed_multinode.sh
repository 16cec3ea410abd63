#!/usr/bin/env bash
# Multi-node training with the `deepspeed` launcher and a hostfile (examples/hostfile.example: 8 nodes x 8 GPUs),
# phi-1 as TP 1 x PP 1 x DP 64 with ZeRO-1 (the layout is explained in examples/slurm/phi1_8x8.sbatch).
# Two ways to start it:
#
# 1. From the first node, with passwordless ssh to every host and pdsh installed: DeepSpeed's runner starts one
#    launcher per node over pdsh.
#      DATA_PREFIX=... TOKENIZER=... bash examples/deepspeed_multinode.sh
#
# 2. Without ssh: run the same command on every node yourself (or from your scheduler), each with its rank in
#    the hostfile and the first node's address; the launchers meet at MASTER_ADDR:MASTER_PORT.
#      node k:  NODE_RANK=k MASTER_ADDR=gpu-node01 DATA_PREFIX=... TOKENIZER=... bash examples/deepspeed_multinode.sh
#    (Under SLURM, `srun python pretrain_code.py` needs no launcher at all: see examples/slurm/.)
#
# Try mode 2 on one CPU machine: LOCAL_DEMO=1 bash examples/deepspeed_multinode.sh starts two "nodes" of one
# process each on this machine (the tiny preset on mock data, gloo) and trains data-parallel across them.
#
# Knobs: HOSTFILE (default examples/hostfile.example), MASTER_ADDR (default: the hostfile's first host),
# MASTER_PORT (default 29500), NODE_RANK, SAVE, PYTHON, DRY_RUN=1 (print the command instead of running it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DEEPSPEED=(${DEEPSPEED:-deepspeed})
MASTER_PORT=${MASTER_PORT:-29500}

if [[ -n "${LOCAL_DEMO:-}" ]]; then
  work=$(mktemp -d)
  printf 'node-a slots=1\nnode-b slots=1\n' >"$work/hostfile"
  args=(pretrain_code.py --preset tiny --model.vocab_size 256 --mock-data --seq-length 64 --micro-batch-size 2
        --global-batch-size 8 --train-iters "${ITERS:-10}" --log-interval 1 --eval-interval 0
        --training.progress_bar false --save "${SAVE:-$work/ckpt}")
  export OMP_NUM_THREADS=1
  echo "== two nodes on this machine (logs: $work/node-{0,1}.log)"
  for rank in 1 0; do
    "${DEEPSPEED[@]}" --hostfile "$work/hostfile" --no_ssh --node_rank "$rank" --master_addr 127.0.0.1 \
        --master_port "$MASTER_PORT" "${args[@]}" >"$work/node-$rank.log" 2>&1 &
    pids[$rank]=$!
  done
  status=0
  wait "${pids[0]}" || status=$?
  wait "${pids[1]}" || status=$?
  grep -E "world|^iter|saved" "$work/node-0.log" || true
  (( status == 0 )) || { echo "a node failed; see $work/node-*.log" >&2; exit "$status"; }
  echo "== done: checkpoint in ${SAVE:-$work/ckpt}"
  exit 0
fi

HOSTFILE=${HOSTFILE:-examples/hostfile.example}
[[ -f "$HOSTFILE" ]] || { echo "hostfile $HOSTFILE not found (see examples/hostfile.example)" >&2; exit 2; }
: "${DATA_PREFIX:?set DATA_PREFIX to a tokenized .bin/.idx prefix (tools/preprocess_data.py)}"
: "${TOKENIZER:?set TOKENIZER to the tokenizer.json the data was tokenized with}"
MASTER_ADDR=${MASTER_ADDR:-$(awk '!/^#/ && NF {print $1; exit}' "$HOSTFILE")}
SAVE=${SAVE:-runs/phi1-deepspeed}

LAUNCH=("${DEEPSPEED[@]}" --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
if [[ -n "${NODE_RANK:-}" ]]; then
  LAUNCH+=(--no_ssh --node_rank "$NODE_RANK")
fi
CMD=("${LAUNCH[@]}" pretrain_code.py
  --preset phi-1
  --data-path "$DATA_PREFIX" --split 998,2,0
  --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$TOKENIZER"
  --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 --zero-stage 1 --bf16
  --micro-batch-size 4 --global-batch-size 1024 --train-iters 36000 --lr-decay-style cosine --min-lr 1e-4
  --log-interval 10 --eval-interval 1000 --eval-iters 20
  --save "$SAVE" --save-interval 1000 --tensorboard-dir "$SAVE/tensorboard")
[[ -f "$SAVE/latest" ]] && CMD+=(--load "$SAVE")

if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
export PYTHONUNBUFFERED=1
"${CMD[@]}"
