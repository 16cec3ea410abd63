"""The Megatron / Megatron-DeepSpeed flag coverage, committed as tests/fixtures/megatron_flags.tsv (flag, status,
what it does or why not): implemented (sets a config field), note (accepted, no effect, with the reason), off-only
(accepted at the value meaning "off", refused otherwise), refused (with the reason). A flag whose status changes
or that disappears fails the test until the table is regenerated (UPDATE_FLAG_TABLE=1) in the same commit."""

from __future__ import annotations

import os

import pytest

from megatron_code.config import cli
from megatron_code.config.base import ConfigError
from megatron_code.config.megatron_flags import ERROR_FLAGS, NOOP_FLAGS, OFF_FLAGS

TABLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "megatron_flags.tsv")

# Flags in Megatron-LM's examples/{gpt3,llama,mixtral} and Megatron-DeepSpeed's examples_deepspeed pretraining
# scripts (launcher and plotting/eval-tool options left out); each must be in the table.
RECIPE_FLAGS = """
num-layers hidden-size ffn-hidden-size num-attention-heads group-query-attention num-query-groups kv-channels
seq-length max-position-embeddings position-embedding-type rotary-base rotary-percent attention-dropout
hidden-dropout swiglu normalization init-method-std attention-backend apply-layernorm-1p
untie-embeddings-and-output-weights disable-bias-linear micro-batch-size global-batch-size train-samples
lr-decay-samples lr-warmup-samples lr min-lr decoupled-lr decoupled-min-lr lr-decay-style clip-grad weight-decay
adam-beta1 adam-beta2 bf16 fp16 grad-reduce-in-bf16 cross-entropy-loss-fusion calculate-per-token-loss manual-gc
empty-unused-memory-level exit-duration-in-mins tensor-model-parallel-size pipeline-model-parallel-size
context-parallel-size sequence-parallel use-distributed-optimizer overlap-grad-reduce overlap-param-gather
log-interval eval-iters eval-interval save-interval log-throughput profile profile-step-start profile-step-end
ckpt-format distributed-timeout-minutes save load tensorboard-dir use-mcore-models train-iters lr-warmup-fraction
lr-decay-iters data-path vocab-file merge-file split step-batch-size-schedule override-opt_param-scheduler
moe-expert-parallel-size num-experts moe-loss-coeff moe-train-capacity-factor moe-eval-capacity-factor
moe-min-capacity create-moe-param-group disable-moe-token-dropping lr-decay-tokens lr-warmup-tokens train-tokens
hysteresis num-workers tensorboard-queue-size log-timers-to-tensorboard log-batch-size-to-tensorboard
log-validation-ppl-to-tensorboard checkpoint-activations deepspeed deepspeed_config zero-stage no-pipeline-parallel
deepspeed-activation-checkpointing seed no-async-tensor-model-parallel-allreduce log-optimizer-states-to-tensorboard
data-impl ds-sequence-parallel-size use-flash-attn-v2 use-rotary-position-embeddings no-query-key-layer-scaling
tokenizer-type tokenizer-model no-position-embedding attention-softmax-in-fp32 no-masked-softmax-fusion
no-bias-gelu-fusion no-bias-dropout-fusion no-gradient-accumulation-fusion normalization
universal-checkpoint exit-signal-handler wandb-project wandb-exp-name wandb-save-dir rampup-batch-size
moe-router-topk moe-aux-loss-coeff moe-grouped-gemm moe-token-dispatcher-type expert-model-parallel-size
recompute-granularity recompute-method recompute-num-layers use-flash-attn cpu-optimizer random-ltd
data-efficiency-curriculum-learning mos kd load-teacher rotary-position-embeddings-theta repeated-dataloader
no-load-lr-state reset-iteration train-data-exact-num-epochs use-flash-attn-triton enable-zbh1-pipeline
ds-sequence-parallel-fpdt vocab-size exit-signal
""".split()


# Flags being implemented by other work in flight (none now): until they land they are unknown flags.
PENDING: set[str] = set()


def _what(setter) -> str:
    target = getattr(setter, "target", None)
    if target:
        return f"sets {target}"
    return (setter.__doc__ or setter.__name__).strip().splitlines()[0]


def flag_table() -> list[tuple[str, str, str]]:
    rows = [(f, "implemented", _what(s)) for f, (_, s) in cli.MEGATRON_FLAGS.items()]
    rows += [(f, "implemented", "combines with other flags of the line (config/cli.py _LineState)")
             for f in cli._STATEFUL_FLAGS]
    rows.append(("num-query-groups", "implemented", "sets model.num_kv_heads with --group-query-attention"))
    rows += [(f, "note", why) for f, (_, why) in NOOP_FLAGS.items()]
    rows += [(f, "off-only", f"accepted as {' / '.join(off)}; otherwise refused: {why}")
             for f, (_, off, why) in OFF_FLAGS.items()]
    rows += [(f, "refused", why) for f, (_, why) in ERROR_FLAGS.items()]
    return sorted(rows)


def _render(rows) -> str:
    return "flag\tstatus\twhat / why\n" + "".join(f"--{f}\t{s}\t{w}\n" for f, s, w in rows)


def test_committed_flag_table_holds_in_the_code():
    """Every committed row still holds (same status; what/why may be reworded): no flag loses coverage unnoticed.
    Flags added since are allowed until the table is regenerated (UPDATE_FLAG_TABLE=1)."""
    rows = flag_table()
    if os.environ.get("UPDATE_FLAG_TABLE"):
        with open(TABLE, "w") as f:
            f.write(_render(rows))
    now = {f"--{flag}": status for flag, status, _ in rows}
    committed = [line.split("\t")[:2] for line in open(TABLE).read().splitlines()[1:]]
    changed = [f"{flag}: table says {status}, the code {now.get(flag, 'unknown flag')}"
               for flag, status in committed if now.get(flag) != status]
    assert not changed, "flag coverage changed (review, then regenerate with UPDATE_FLAG_TABLE=1):\n" + \
        "\n".join(changed)


def test_every_recipe_flag_is_in_the_table_and_no_flag_is_listed_twice():
    flags = [f for f, _, _ in flag_table()]
    assert len(flags) == len(set(flags))
    assert set(RECIPE_FLAGS) - set(flags) - PENDING == set()
    assert PENDING & set(flags) == set(), "a pending flag landed: drop it from PENDING"


@pytest.mark.parametrize("flag", sorted(NOOP_FLAGS))
def test_note_flags_are_accepted_with_their_reason(flag):
    argv = [f"--{flag}"] + (["1"] if NOOP_FLAGS[flag][0] else [])
    out = cli.parse_args(argv)
    assert any(n.startswith(f"--{flag}: accepted, no effect") for n in out.notes)


@pytest.mark.parametrize("flag", sorted(ERROR_FLAGS))
def test_refused_flags_say_why(flag):
    arity = ERROR_FLAGS[flag][0]
    argv = [f"--{flag}"] + (["1"] if arity == 1 else ["1", "2", "3"] if arity == "+" else [])
    with pytest.raises(ConfigError, match="^" + f"--{flag}: "):
        cli.parse_args(argv)


@pytest.mark.parametrize("flag", sorted(OFF_FLAGS))
def test_off_flags_accept_off_and_refuse_on(flag):
    _, off, why = OFF_FLAGS[flag]
    assert any("off value" in n for n in cli.parse_args([f"--{flag}", off[0]]).notes)
    with pytest.raises(ConfigError, match=why.split("(")[0][:40].replace(".", r"\.")):
        cli.parse_args([f"--{flag}", "8"])
