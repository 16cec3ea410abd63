"""CLI: preset < YAML files < command line (in order given), every Megatron flag from issue 2 lands in its field,
unknown flags are errors, the DeepSpeed launcher's --local_rank is accepted, and a Megatron-DeepSpeed launch line
parses to the expected JobConfig."""

import json

import pytest
import yaml

from megatron_code.config import ConfigError, JobConfig, get_preset
from megatron_code.config.cli import MEGATRON_DEFAULTS, MEGATRON_FLAGS, NOOP_FLAGS, parse_args


# Flags that set a second field by Megatron's own semantics.
ALSO_SETS = {"model.hidden_dropout": {("model", "embedding_dropout")}}


def megatron_baseline() -> JobConfig:
    """What a bare command line starts from: our defaults overlaid with Megatron-LM's."""
    job = JobConfig()
    job.update(MEGATRON_DEFAULTS)
    return job


def get(job: JobConfig, path: str):
    section, key = path.split(".")
    return getattr(getattr(job, section), key)


def write_yaml(tmp_path, name, values):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_defaults_without_arguments():
    out = parse_args([])
    assert out.job.to_dict() == megatron_baseline().to_dict()
    assert out.job.model.position_embedding == "learned" and out.job.optim.adam_beta2 == 0.999
    assert out.print_config is False and out.local_rank is None
    assert [n for n in out.notes if "Megatron-LM's defaults" in n]


def test_megatron_defaults_only_for_bare_command_lines(tmp_path):
    assert parse_args(["--preset", "tiny"]).job.model.position_embedding == "rope"
    cfg = write_yaml(tmp_path, "a.yaml", {"model": {"num_layers": 3}})
    job = parse_args(["--config", cfg]).job
    assert job.model.position_embedding == JobConfig().model.position_embedding
    assert job.model.hidden_dropout == 0.0


def test_precedence_preset_then_yaml_then_command_line(tmp_path):
    tiny = get_preset("tiny")
    first = write_yaml(tmp_path, "a.yaml", {"model": {"num_layers": 6, "hidden_size": 256},
                                              "training": {"train_iters": 11}})
    second = write_yaml(tmp_path, "b.yaml", {"model": {"num_layers": 7}})
    job = parse_args(["--preset", "tiny", "--config", first, "--config", second, "--num-layers", "8"]).job
    assert job.preset == "tiny"
    assert job.model.num_layers == 8                                    # command line beats both files
    assert job.model.hidden_size == 256                                 # file beats preset
    assert job.training.train_iters == 11
    assert job.model.ffn_hidden_size == tiny["model"]["ffn_hidden_size"]  # preset beats defaults
    assert job.optim.lr == tiny["optim"]["lr"]
    # Later files win over earlier ones.
    job = parse_args(["--preset", "tiny", "--config", first, "--config", second]).job
    assert job.model.num_layers == 7
    # Position on the command line does not matter for preset/config: they always apply first.
    job = parse_args(["--num-layers", "8", "--config", first, "--preset", "tiny"]).job
    assert job.model.num_layers == 8 and job.model.hidden_size == 256


def test_overrides_apply_in_order_given():
    assert parse_args(["--num-layers", "8", "--model.num_layers", "10"]).job.model.num_layers == 10
    assert parse_args(["--model.num_layers", "10", "--num-layers", "8"]).job.model.num_layers == 8
    # (--fp16 --bf16 together is refused: tests/unit/test_validation.py)
    assert parse_args(["--fp16", "--training.precision", "bf16"]).job.training.precision == "bf16"
    assert parse_args(["--training.precision", "bf16", "--fp16"]).job.training.precision == "fp16"
    assert parse_args(["--normalization", "RMSNorm", "--normalization", "LayerNorm"]).job.model.norm == "layernorm"
    job = parse_args(["--position-embedding-type", "learned_absolute", "--position-embedding-type", "rope"]).job
    assert job.model.position_embedding == "rope"


def test_dotted_overrides_any_field():
    job = parse_args(["--model.head_dim", "48", "--training.precision=bf16", "--data.data_path", "A", "B",
                      "--objective.objective", "fim", "--model.bias", "false"]).job
    assert job.model.head_dim == 48 and isinstance(job.model.head_dim, int)
    assert job.training.precision == "bf16"
    assert job.data.data_path == ["A", "B"]
    assert job.objective.objective == "fim"
    assert job.model.bias is False


# (argv, field, expected) for every flag issue 2 lists. The base config is the default JobConfig
# (2 layers, hidden 128, 4 heads, ffn 512), so each value below validates on its own.
FLAG_TABLE = [
    (["--num-layers", "3"], "model.num_layers", 3),
    (["--hidden-size", "96"], "model.hidden_size", 96),
    (["--ffn-hidden-size", "300"], "model.ffn_hidden_size", 300),
    (["--num-attention-heads", "8"], "model.num_attention_heads", 8),
    (["--group-query-attention", "--num-query-groups", "2"], "model.num_kv_heads", 2),
    (["--num-key-value-heads", "2"], "model.num_kv_heads", 2),
    (["--seq-length", "512"], "data.seq_length", 512),
    (["--max-position-embeddings", "4096"], "model.max_position_embeddings", 4096),
    (["--position-embedding-type", "learned_absolute"], "model.position_embedding", "learned"),
    (["--position-embedding-type", "none"], "model.position_embedding", "none"),
    (["--rotary-percent", "0.5"], "model.rotary_percent", 0.5),
    (["--swiglu"], "model.activation", "swiglu"),
    (["--normalization", "RMSNorm"], "model.norm", "rmsnorm"),
    (["--untie-embeddings-and-output-weights"], "model.tie_embeddings", False),
    (["--disable-bias-linear"], "model.bias", False),
    (["--attention-dropout", "0.1"], "model.attention_dropout", 0.1),
    (["--hidden-dropout", "0.2"], "model.hidden_dropout", 0.2),
    (["--init-method-std", "0.006"], "model.init_std", 0.006),
    (["--micro-batch-size", "3"], "training.micro_batch_size", 3),
    (["--global-batch-size", "12"], "training.global_batch_size", 12),
    (["--train-iters", "7"], "training.train_iters", 7),
    (["--lr", "6e-4"], "optim.lr", 6e-4),
    (["--min-lr", "6e-5"], "optim.min_lr", 6e-5),
    (["--lr-decay-style", "linear"], "optim.lr_decay_style", "linear"),
    (["--lr-warmup-iters", "5"], "optim.lr_warmup_iters", 5),
    (["--lr-decay-iters", "50"], "optim.lr_decay_iters", 50),
    (["--weight-decay", "0.05"], "optim.weight_decay", 0.05),
    (["--clip-grad", "0.5"], "optim.clip_grad", 0.5),
    (["--adam-beta1", "0.8"], "optim.adam_beta1", 0.8),
    (["--adam-beta2", "0.99"], "optim.adam_beta2", 0.99),
    (["--adam-eps", "1e-6"], "optim.adam_eps", 1e-6),
    (["--seed", "42"], "training.seed", 42),
    (["--fp16"], "training.precision", "fp16"),
    (["--bf16"], "training.precision", "bf16"),
    (["--save", "out/ckpt"], "training.save", "out/ckpt"),
    (["--load", "in/ckpt"], "training.load", "in/ckpt"),
    (["--save-interval", "5"], "training.save_interval", 5),
    (["--eval-interval", "6"], "training.eval_interval", 6),
    (["--eval-iters", "3"], "training.eval_iters", 3),
    (["--log-interval", "2"], "training.log_interval", 2),
    (["--tensorboard-dir", "tb"], "training.tensorboard_dir", "tb"),
    (["--data-path", "0.3", "A", "0.7", "B"], "data.data_path", ["0.3", "A", "0.7", "B"]),
    (["--data-path", "only/prefix"], "data.data_path", ["only/prefix"]),
    (["--split", "949,50,1"], "data.split", "949,50,1"),
    (["--tokenizer-type", "GPT2BPETokenizer"], "data.tokenizer_type", "GPT2BPETokenizer"),
    (["--tokenizer-model", "tok.model"], "data.tokenizer_model", "tok.model"),
    (["--vocab-file", "vocab.json"], "data.vocab_file", "vocab.json"),
    (["--merge-file", "merges.txt"], "data.merge_file", "merges.txt"),
    (["--deepspeed_config", "ds.json"], "parallel.deepspeed_config", "ds.json"),
    (["--zero-stage", "2"], "parallel.zero_stage", 2),
    (["--tensor-model-parallel-size", "2"], "parallel.tensor_parallel", 2),
    (["--pipeline-model-parallel-size", "2"], "parallel.pipeline_parallel", 2),
]


# Flags beyond issue 2's list that real Megatron / Megatron-DeepSpeed launch scripts carry, each with its meaning.
MORE_FLAGS = [
    (["--loss-scale", "4096"], "training.loss_scale", 4096.0),
    (["--hysteresis", "4"], "training.hysteresis", 4),
    (["--loss-scale-window", "500"], "training.loss_scale_window", 500),
    (["--min-loss-scale", "0.5"], "training.min_loss_scale", 0.5),
    (["--train-samples", "1000"], "training.train_samples", 1000),
    (["--train-tokens", "65536"], "training.train_tokens", 65536),
    (["--lr-decay-samples", "800"], "optim.lr_decay_samples", 800),
    (["--lr-warmup-samples", "16"], "optim.lr_warmup_samples", 16),
    (["--lr-decay-tokens", "51200"], "optim.lr_decay_tokens", 51200),
    (["--lr-warmup-tokens", "1024"], "optim.lr_warmup_tokens", 1024),
    (["--exit-duration-in-mins", "30"], "training.exit_duration_mins", 30.0),
    (["--no-save-optim"], "training.save_optim", False),
    (["--no-load-optim"], "training.load_optim", False),
    (["--no-load-rng"], "training.load_rng", False),
    (["--finetune"], "training.finetune", True),
    (["--reset-attention-mask"], "data.reset_attention_mask", True),
    (["--reset-position-ids"], "data.reset_position_ids", True),
    (["--eod-mask-loss"], "data.eod_mask_loss", True),
    (["--model-parallel-size", "2"], "parallel.tensor_parallel", 2),
    (["--no-position-embedding"], "model.position_embedding", "none"),
    (["--tokenizer-type", "HFTokenizer"], "data.tokenizer_type", "HuggingFaceTokenizer"),
    (["--tokenizer-type", "GPTSentencePieceTokenizer"], "data.tokenizer_type", "SentencePieceTokenizer"),
    (["--tokenizer-type", "SentencePieceTokenizer"], "data.tokenizer_type", "SentencePieceTokenizer"),
    (["--normalization", "rmsnorm"], "model.norm", "rmsnorm"),
    (["--checkpoint-activations"], "parallel.activation_checkpoint_interval", 1),
    (["--checkpoint-activations", "--checkpoint-num-layers", "2"], "parallel.activation_checkpoint_interval", 2),
    (["--checkpoint-num-layers", "3", "--checkpoint-activations"], "parallel.activation_checkpoint_interval", 3),
    (["--recompute-activations"], "parallel.activation_checkpoint_interval", 1),
    (["--recompute-granularity", "selective"], "parallel.activation_checkpoint_interval", 1),
    (["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "2"],
     "parallel.activation_checkpoint_interval", 2),
]


@pytest.mark.parametrize("argv, path, expected", FLAG_TABLE + MORE_FLAGS,
                         ids=[" ".join(a) for a, _, _ in FLAG_TABLE + MORE_FLAGS])
def test_megatron_flag_lands_in_field(argv, path, expected):
    job = parse_args(argv).job
    value = get(job, path)
    assert value == expected
    assert type(value) is type(expected)
    # Nothing else changed: the rest of the config equals the bare-command-line defaults.
    default = megatron_baseline().to_dict()
    changed = {(s, k) for s, sub in job.to_dict().items() if isinstance(sub, dict)
               for k, v in sub.items() if default[s][k] != v}
    section, key = path.split(".")
    changed -= ALSO_SETS.get(path, set())
    assert changed == ({(section, key)} if default[section][key] != expected else set())


def test_flag_table_covers_every_listed_flag():
    listed = ("num-layers hidden-size ffn-hidden-size num-attention-heads num-query-groups num-key-value-heads "
              "seq-length max-position-embeddings position-embedding-type rotary-percent swiglu normalization "
              "untie-embeddings-and-output-weights disable-bias-linear attention-dropout hidden-dropout "
              "init-method-std micro-batch-size global-batch-size train-iters lr min-lr lr-decay-style "
              "lr-warmup-iters lr-decay-iters weight-decay clip-grad adam-beta1 adam-beta2 adam-eps seed fp16 bf16 "
              "save load save-interval eval-interval eval-iters log-interval tensorboard-dir data-path split "
              "tokenizer-type tokenizer-model vocab-file merge-file deepspeed_config zero-stage "
              "tensor-model-parallel-size pipeline-model-parallel-size").split()
    tested = {a[2:] for argv, _, _ in FLAG_TABLE for a in argv if a.startswith("--")}
    assert set(listed) - tested == set()
    for flag in listed:
        assert flag in MEGATRON_FLAGS or flag == "num-query-groups"


def test_deepspeed_switch_selects_megatron_deepspeed_tensorboard_names():
    out = parse_args(["--deepspeed"])
    expected = megatron_baseline()
    expected.training.tensorboard_style = "megatron-deepspeed"
    assert out.job.to_dict() == expected.to_dict()


def test_num_query_groups_needs_group_query_attention():
    out = parse_args(["--num-query-groups", "2"])
    assert out.job.model.given("num_kv_heads") is None
    assert any("--num-query-groups ignored" in n for n in out.notes)
    # The switch may come after the value, as in many scripts.
    assert parse_args(["--num-query-groups", "2", "--group-query-attention"]).job.model.num_kv_heads == 2


@pytest.mark.parametrize("argv, pattern", [
    (["--num-layer", "3"], r"unknown flag --num-layer; did you mean --num-layers"),
    (["--frobnicate"], r"unknown flag --frobnicate"),
    (["--model.num_layer", "3"], r"unknown option --model.num_layer \(did you mean --model.num_layers"),
    (["--modle.num_layers", "3"], r"unknown section 'modle'"),
    (["positional"], r"unexpected argument 'positional'"),
    (["--num-layers"], r"--num-layers needs a value"),
    (["--num-layers", "--fp16"], r"--num-layers needs a value"),
    (["--normalization", "BatchNorm"], r"--normalization: unknown value 'BatchNorm'"),
    (["--position-embedding-type", "alibi"], r"unknown value 'alibi'"),
    (["--num-layers", "two"], r"expected int, got 'two'"),
    (["--preset", "nope"], r"unknown preset 'nope'"),
    (["--config", "/nonexistent/x.yaml"], r"--config /nonexistent/x.yaml: file not found"),
    (["--hidden-size", "100", "--num-attention-heads", "3"], r"does not divide hidden_size"),
    (["--pipeline-model-parallel-size", "2", "--zero-stage", "3"], r"--zero-stage 1"),
])
def test_user_errors_are_config_errors(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_args(argv)


def test_bad_yaml_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_args(["--config", str(bad)])
    typo = write_yaml(tmp_path, "typo.yaml", {"model": {"num_layer": 3}})
    with pytest.raises(ConfigError, match="did you mean num_layers"):
        parse_args(["--config", typo])


@pytest.mark.parametrize("argv, rank", [(["--local_rank=0"], 0), (["--local_rank", "3"], 3),
                                        (["--local-rank=1"], 1), ([], None)])
def test_local_rank_from_launcher(argv, rank):
    out = parse_args(argv + ["--num-layers", "3"])
    assert out.local_rank == rank
    assert out.job.model.num_layers == 3


def test_print_config_switch_and_inline_values():
    out = parse_args(["--print-config", "--num-layers=5", "--lr=1e-3"])
    assert out.print_config is True
    assert out.job.model.num_layers == 5 and out.job.optim.lr == 1e-3


def test_negative_and_exponent_values_are_values():
    job = parse_args(["--model.rotary_base", "1e4", "--training.seed", "7"]).job
    assert job.model.rotary_base == 1e4 and job.training.seed == 7
    # "-1" is read as the value (not as a flag): the error is about the seed's range, not a missing value
    with pytest.raises(ConfigError, match=r"training.seed must be in \[0, "):
        parse_args(["--model.rotary_base", "1e4", "--training.seed", "-1"])


def test_data_impl_does_not_clobber_cache_path():
    job = parse_args(["--data-cache-path", "/cache", "--data-impl", "mmap"]).job
    assert job.data.data_cache_path == "/cache"
    with pytest.raises(ConfigError, match="--data-impl"):
        parse_args(["--data-impl", "lazy"])


MEGATRON_DS_LAUNCH = """
--local_rank=0
--tensor-model-parallel-size 1 --pipeline-model-parallel-size 1
--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --max-position-embeddings 64
--micro-batch-size 2 --global-batch-size 4
--lr 6e-4 --min-lr 6e-5 --lr-decay-style cosine --lr-warmup-iters 5 --train-iters 10
--weight-decay 0.1 --clip-grad 1.0 --adam-beta1 0.9 --adam-beta2 0.95 --init-method-std 0.02
--data-path /data/code_text_document --vocab-file /tok/gpt2-vocab.json --merge-file /tok/gpt2-merges.txt
--tokenizer-type GPT2BPETokenizer
--split 949,50,1 --log-interval 1 --save-interval 5 --eval-interval 5 --eval-iters 2
--save /ckpt --load /ckpt --tensorboard-dir /tb
--fp16 --data-impl mmap --distributed-backend gloo --no-query-key-layer-scaling
--attention-dropout 0.1 --hidden-dropout 0.1 --seed 1234
--deepspeed --deepspeed_config ds.json --zero-stage 1
--checkpoint-activations --deepspeed-activation-checkpointing --no-masked-softmax-fusion
--log-timers-to-tensorboard --log-batch-size-to-tensorboard --log-validation-ppl-to-tensorboard
""".split()


def test_megatron_deepspeed_launch_line():
    out = parse_args(MEGATRON_DS_LAUNCH)
    expected = megatron_baseline()
    expected.update({
        "model": dict(num_layers=2, hidden_size=64, num_attention_heads=4, max_position_embeddings=64,
                      init_std=0.02, attention_dropout=0.1, hidden_dropout=0.1),
        "data": dict(seq_length=64, split="949,50,1", data_path=["/data/code_text_document"],
                     vocab_file="/tok/gpt2-vocab.json", merge_file="/tok/gpt2-merges.txt",
                     tokenizer_type="GPT2BPETokenizer"),
        "optim": dict(lr=6e-4, min_lr=6e-5, lr_decay_style="cosine", lr_warmup_iters=5, weight_decay=0.1,
                      clip_grad=1.0, adam_beta1=0.9, adam_beta2=0.95),
        "training": dict(micro_batch_size=2, global_batch_size=4, train_iters=10, log_interval=1, save_interval=5,
                         eval_interval=5, eval_iters=2, precision="fp16", save="/ckpt", load="/ckpt",
                         tensorboard_dir="/tb", seed=1234, tensorboard_style="megatron-deepspeed"),
        "parallel": dict(tensor_parallel=1, pipeline_parallel=1, zero_stage=1, deepspeed_config="ds.json",
                         activation_checkpoint_interval=1, backend="gloo"),
    })
    assert out.job.to_dict() == expected.to_dict()
    assert out.local_rank == 0
    assert out.print_config is False
    noted = {n.split(":")[0] for n in out.notes}
    assert {"--no-query-key-layer-scaling", "--log-timers-to-tensorboard"} <= noted
    assert out.job.resolve_batch(data_parallel_size=1) == 2


def test_no_pipeline_parallel_wins_wherever_it_stands():
    assert parse_args(["--pipeline-model-parallel-size", "2"]).job.parallel.pipeline_parallel == 2
    for argv in (["--no-pipeline-parallel", "--pipeline-model-parallel-size", "2"],
                 ["--pipeline-model-parallel-size", "2", "--no-pipeline-parallel"]):
        assert parse_args(argv).job.parallel.pipeline_parallel == 1


@pytest.mark.parametrize("argv", [["--checkpoint-num-layers", "2"], ["--recompute-num-layers", "4"]])
def test_checkpoint_layer_count_alone_does_not_checkpoint(argv):
    out = parse_args(argv)
    assert out.job.parallel.activation_checkpoint_interval == 0
    assert any("no effect without --checkpoint-activations" in n for n in out.notes)


def test_no_position_embedding_keeps_requested_rope():
    # Megatron-DeepSpeed's Llama scripts: rotary on, learned absolute table off, in either order.
    base = ["--position-embedding-type", "learned_absolute"]
    for argv in (["--use-rotary-position-embeddings", "--no-position-embedding"],
                 ["--no-position-embedding", "--use-rotary-position-embeddings"]):
        assert parse_args(base + argv).job.model.position_embedding == "rope"
    assert parse_args(base + ["--no-position-embedding"]).job.model.position_embedding == "none"


def test_sequence_parallel_follows_tensor_parallel_size():
    out = parse_args(["--sequence-parallel"])
    assert out.job.parallel.sequence_parallel is False
    assert any(n.startswith("--sequence-parallel: no effect with tensor parallel size 1") for n in out.notes)
    job = parse_args(["--sequence-parallel", "--tensor-model-parallel-size", "2"]).job
    assert job.parallel.sequence_parallel is True and job.parallel.tensor_parallel == 2


def test_gpt2_tokenizer_is_the_default_with_vocab_and_merges():
    out = parse_args(["--vocab-file", "v.json", "--merge-file", "m.txt"])
    assert out.job.data.tokenizer_type == "GPT2BPETokenizer"
    assert any("GPT2BPETokenizer" in n for n in out.notes)
    job = parse_args(["--vocab-file", "v.json", "--merge-file", "m.txt", "--tokenizer-type", "HFTokenizer"]).job
    assert job.data.tokenizer_type == "HuggingFaceTokenizer"


@pytest.mark.parametrize("name", sorted(NOOP_FLAGS))
def test_every_noop_flag_is_accepted_with_a_note(name):
    arity = NOOP_FLAGS[name][0]
    out = parse_args([f"--{name}"] + (["1"] if arity == 1 else []))
    assert out.job.to_dict() == megatron_baseline().to_dict()
    assert [n for n in out.notes if n.startswith(f"--{name}: accepted, no effect")]


@pytest.mark.parametrize("argv, pattern", [
    (["--rampup-batch-size", "32", "32", "2000"], r"--rampup-batch-size ramps up to --global-batch-size: give "
                                                  r"--global-batch-size"),
    (["--global-batch-size", "64", "--rampup-batch-size", "8", "16", "2000"],
     r"--global-batch-size \(64\) - START \(8\) must be a non-negative multiple of INCREMENT \(16\)"),
    (["--global-batch-size", "64", "--rampup-batch-size", "8", "8", "0"],
     r"--rampup-batch-size: START, INCREMENT and SAMPLES must be positive, got 8 8 0"),
    (["--batch-size-schedule", "8:10,16:20"], r"--batch-size-schedule: the first step must be 0"),
    (["--batch-size-schedule", "8:0,16:0"], r"--batch-size-schedule: steps must be strictly increasing"),
    (["--batch-size-schedule", "8:0,16:20", "--global-batch-size", "8"],
     r"--batch-size-schedule ends at batch 16 but --global-batch-size is 8"),
    (["--step-batch-size-schedule", "0:8 x:16"], r"--step-batch-size-schedule: 'x' is not a number"),
    (["--batch-size-schedule", "8:0", "--step-batch-size-schedule", "0:8"], r"give one batch-size schedule"),
    (["--lr-decay-style", "WSD"], r"--lr-decay-style WSD needs the annealing length"),
    (["--lr-decay-style", "exponential"], r"give a positive --min-lr"),
    (["--num-layers-per-virtual-pipeline-stage", "2"], r"interleaved .* DeepSpeed's pipeline engine"),
    (["--recompute-granularity", "partial"], r"--recompute-granularity: unknown value 'partial'"),
    (["--recompute-method", "random"], r"--recompute-method: unknown value 'random'"),
    (["--checkpoint-num-layers", "0"], r"--checkpoint-num-layers must be a positive number of layers"),
    (["--tokenizer-type", "BertWordPieceCase"], r"--tokenizer-type: unknown value 'BertWordPieceCase'"),
    (["--train-iters", "10", "--train-samples", "100"],
     r"the command line: the run length is given both in iterations \(--train-iters\) and in samples/tokens "
     r"\(--train-samples\): give it in one unit"),
    (["--lr-decay-iters", "10", "--lr-decay-tokens", "640"], r"LR decay length is given both"),
    (["--lr-warmup-fraction", "0.1", "--lr-warmup-samples", "8"], r"LR warmup length is given both"),
    (["--training.train_iters", "10", "--train-tokens", "640"], r"run length is given both"),
    (["--loss-scale", "-1"], r"--loss-scale must be >= 0"),
    (["--train-samples", "0"], r"--train-samples must be positive"),
])
def test_unsupported_and_conflicting_flags(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_args(argv)


def test_later_layer_replaces_a_length_given_in_another_unit(tmp_path):
    in_iters = write_yaml(tmp_path, "iters.yaml", {"training": {"train_iters": 50},
                                                   "optim": {"lr_warmup_iters": 5, "lr_decay_iters": 40}})
    job = parse_args(["--config", in_iters, "--train-samples", "100", "--lr-warmup-samples", "16",
                      "--global-batch-size", "8", "--micro-batch-size", "8"]).job
    assert job.optim.lr_decay_iters == 40  # not mentioned on the command line: the file's value stays
    job.resolve_batch(data_parallel_size=1)
    assert (job.training.train_iters, job.optim.lr_warmup_iters) == (13, 2)  # ceil(100/8), ceil(16/8)
    in_samples = write_yaml(tmp_path, "samples.yaml", {"training": {"train_samples": 100, "train_tokens": 6400}})
    job = parse_args(["--config", in_samples, "--train-iters", "7", "--global-batch-size", "8",
                      "--micro-batch-size", "8"]).job
    assert job.training.train_samples is None and job.training.train_tokens is None
    job.resolve_batch(data_parallel_size=1)
    assert job.training.train_iters == 7
    # A file may hold both (saved configs do): the samples win, as resolve_units derives iterations from them.
    both = write_yaml(tmp_path, "both.yaml", {"training": {"train_iters": 3, "train_samples": 100,
                                                           "global_batch_size": 8, "micro_batch_size": 8}})
    job = parse_args(["--config", both]).job
    job.resolve_batch(data_parallel_size=1)
    assert job.training.train_iters == 13


def test_preset_run_length_replaced_by_samples():
    assert get_preset("tiny")["training"]["train_iters"] == 300
    job = parse_args(["--preset", "tiny", "--train-samples", "64", "--global-batch-size", "16"]).job
    job.resolve_batch(data_parallel_size=1)
    assert job.training.train_iters == 4


def test_yaml_preset_applies_before_the_file(tmp_path):
    tiny, phi = get_preset("tiny"), get_preset("phi-1-small")
    path = write_yaml(tmp_path, "run.yaml", {"preset": "tiny", "model": {"num_layers": 7}})
    job = parse_args(["--config", path]).job
    assert job.preset == "tiny"
    assert job.model.num_layers == 7                                       # the file beats its own preset
    assert job.model.ffn_hidden_size == tiny["model"]["ffn_hidden_size"]   # the preset beats the defaults
    assert job.optim.lr == tiny["optim"]["lr"]
    # The file's preset, at the file's position, overrides the command line's --preset (applied first) ...
    job = parse_args(["--preset", "phi-1-small", "--config", path]).job
    assert job.preset == "tiny" and job.model.hidden_size == tiny["model"]["hidden_size"] != phi["model"]["hidden_size"]
    # ... and command-line flags still override everything.
    assert parse_args(["--config", path, "--num-layers", "3"]).job.model.num_layers == 3


def test_saved_config_parses_back_identically(tmp_path):
    job = parse_args(["--preset", "tiny", "--train-samples", "100", "--lr-decay-tokens", "6400", "--fp16",
                      "--loss-scale-window", "200", "--global-batch-size", "8", "--micro-batch-size", "8"]).job
    job.resolve_batch(data_parallel_size=1)
    path = str(tmp_path / "config.yaml")
    job.save(path)  # what every checkpoint holds: preset name plus every field, resolved
    again = parse_args(["--config", path]).job
    assert again.to_dict() == job.to_dict()


# Megatron-DeepSpeed's GPT-3 125M recipe (examples_deepspeed ds_pretrain_gpt_125M-style), paths swapped: lengths
# in tokens, train_samples deliberately larger than the token budget, fp16 knobs, DeepSpeed JSON.
MEGATRON_DS_125M = """
--override-opt_param-scheduler --adam-beta1 0.9 --adam-beta2 0.95 --tensor-model-parallel-size 1
--init-method-std 0.02 --lr-decay-tokens 300000000000 --lr-warmup-tokens 3000000000 --micro-batch-size 2
--exit-duration-in-mins 30000000 --global-batch-size 256 --num-layers 12 --hidden-size 768
--num-attention-heads 12 --seq-length 2048 --max-position-embeddings 2048 --train-tokens 300000000000
--train-samples 292968750 --lr 6.0e-4 --min-lr 1.0e-6 --lr-decay-style cosine --split 949,50,1
--log-interval 100 --eval-interval 1000 --eval-iters 100 --save-interval 1000 --weight-decay 0.1 --clip-grad 1.0
--hysteresis 2 --num-workers 0 --fp16 --seed 1234 --load /ckpt --save /ckpt --no-async-tensor-model-parallel-allreduce
--tensorboard-queue-size 1 --log-timers-to-tensorboard --log-batch-size-to-tensorboard
--log-validation-ppl-to-tensorboard --tensorboard-dir /tb --checkpoint-activations --log-optimizer-states-to-tensorboard
--vocab-file /tok/gpt2-vocab.json --merge-file /tok/gpt2-merges.txt --data-path /data/my-gpt2_text_document
--data-impl mmap --deepspeed --deepspeed_config ds.json --zero-stage 0 --pipeline-model-parallel-size 1
--no-pipeline-parallel --deepspeed-activation-checkpointing
""".split()


def test_megatron_deepspeed_125m_recipe_resolves_tokens_to_iterations():
    out = parse_args(["--local_rank=0"] + MEGATRON_DS_125M)
    job = out.job
    assert job.data.tokenizer_type == "GPT2BPETokenizer"
    assert job.training.precision == "fp16" and job.training.hysteresis == 2 and job.training.loss_scale == 0
    assert job.training.exit_duration_mins == 30000000.0
    assert job.parallel.activation_checkpoint_interval == 1 and job.parallel.pipeline_parallel == 1
    assert job.resolve_batch(data_parallel_size=1) == 128
    # 300e9 tokens / 2048 = 146,484,375 samples (< train_samples 292,968,750, so tokens end the run);
    # / 256 = 572,204.6 -> 572,205 iterations. Warmup: 3e9 / 2048 = 1,464,843.75 -> 1,464,844 samples;
    # / 256 = 5,722.05 -> 5,723 iterations.
    assert job.training.train_iters == 572_205
    assert job.optim.lr_decay_iters == 572_205
    assert job.optim.lr_warmup_iters == 5_723


def test_fp16_scaler_flags_reach_the_deepspeed_config():
    from megatron_code.parallel.engine import deepspeed_config

    job = parse_args(["--fp16", "--loss-scale", "0", "--initial-loss-scale", "4096", "--hysteresis", "3",
                      "--loss-scale-window", "500", "--min-loss-scale", "0.25", "--micro-batch-size", "2"]).job
    fp16 = deepspeed_config(job, job.resolve_batch(data_parallel_size=1))["fp16"]
    assert fp16 == {"enabled": True, "loss_scale": 0.0, "initial_scale_power": 12, "loss_scale_window": 500,
                    "hysteresis": 3, "min_loss_scale": 0.25}
    static = parse_args(["--fp16", "--loss-scale", "1024"]).job
    assert deepspeed_config(static, static.resolve_batch(data_parallel_size=1))["fp16"]["loss_scale"] == 1024.0


# Megatron-DeepSpeed's Llama-2 example (pretrain_llama2_distributed.sh), sizes shrunk, paths swapped.
MEGATRON_DS_LLAMA2 = """
--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --num-layers 4 --hidden-size 128
--ffn-hidden-size 344 --num-attention-heads 8 --micro-batch-size 4 --global-batch-size 32 --seq-length 256
--max-position-embeddings 256 --train-iters 100 --save /ckpt --load /ckpt --data-path 1 /data/books_text_sentence
--data-impl mmap --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model /tok/tokenizer.model --split 949,50,1
--distributed-backend gloo --lr 3e-4 --lr-decay-style cosine --min-lr 3e-5 --weight-decay 0.1 --clip-grad 1
--lr-warmup-iters 20 --optimizer adam --adam-beta1 0.9 --adam-beta2 0.95 --log-interval 1 --save-interval 10000
--eval-interval 1000 --eval-iters 10 --bf16 --no-query-key-layer-scaling --attention-dropout 0 --hidden-dropout 0
--use-rotary-position-embeddings --untie-embeddings-and-output-weights --swiglu --normalization rmsnorm
--disable-bias-linear --num-key-value-heads 2
--recompute-granularity full --recompute-method uniform --deepspeed-activation-checkpointing
--zero-stage=0 --deepspeed_config=/ds.json --deepspeed
""".split()


def test_megatron_deepspeed_llama2_line():
    job = parse_args(MEGATRON_DS_LLAMA2).job
    m = job.model
    assert (m.norm, m.activation, m.position_embedding, m.bias, m.tie_embeddings) == (
        "rmsnorm", "swiglu", "rope", False, False)
    assert (m.num_kv_heads, m.ffn_hidden_size, m.attention_dropout) == (2, 344, 0.0)
    assert job.data.tokenizer_type == "SentencePieceTokenizer"
    assert job.data.data_path == ["1", "/data/books_text_sentence"]
    assert (job.parallel.tensor_parallel, job.parallel.pipeline_parallel) == (2, 2)
    assert job.parallel.activation_checkpoint_interval == 1 and job.training.precision == "bf16"


# Megatron-LM's GPT-3 175B example (examples/gpt3), sizes shrunk; with its batch-size ramp-up (older versions) or
# its step schedule (current).
MEGATRON_LM_GPT3 = """
--num-layers 4 --hidden-size 128 --num-attention-heads 8 --seq-length 256 --max-position-embeddings 256
--attention-backend auto --micro-batch-size 1 --global-batch-size 16 --train-iters 500 --weight-decay 0.1
--adam-beta1 0.9 --adam-beta2 0.95 --init-method-std 0.006 --clip-grad 1.0 --fp16 --lr 6.0e-5
--lr-decay-style cosine --min-lr 6.0e-6 --lr-warmup-fraction .001 --lr-decay-iters 430 --tensor-model-parallel-size 2
--pipeline-model-parallel-size 2 --data-path /data/gpt_text_document --vocab-file /tok/vocab.json
--merge-file /tok/merges.txt --split 949,50,1 --log-interval 100 --save-interval 10000 --eval-interval 1000
--save /ckpt --load /ckpt --eval-iters 10 --tensorboard-dir /tb --use-mcore-models --transformer-impl local
""".split()


def test_megatron_lm_gpt3_line():
    out = parse_args(MEGATRON_LM_GPT3)
    job = out.job
    assert job.optim.lr_warmup_fraction == 0.001 and job.optim.lr_decay_iters == 430
    assert job.data.tokenizer_type == "GPT2BPETokenizer" and job.parallel.tensor_parallel == 2
    assert {"--attention-backend", "--use-mcore-models", "--transformer-impl"} <= {n.split(":")[0] for n in out.notes}
    ramp = parse_args(MEGATRON_LM_GPT3 + ["--rampup-batch-size", "4", "4", "5859"]).job
    assert ramp.training.rampup_batch_size == [4, 4, 5859] and ramp.batch_schedule().kind == "rampup"
    steps = parse_args([a for a in MEGATRON_LM_GPT3 if a not in ("--global-batch-size", "16")]
                       + ["--step-batch-size-schedule", "0:4 2.4M:8 4.8M:16"]).job
    sched = steps.batch_schedule()
    assert sched.final == 16 and sched.points == ((0, 4), (2_400_000 // 256, 8), (4_800_000 // 256, 16))


def test_hidden_dropout_also_sets_embedding_dropout():
    job = parse_args(["--hidden-dropout", "0.0"]).job  # Megatron: one flag for both
    assert job.model.hidden_dropout == 0.0 and job.model.embedding_dropout == 0.0


# --- Megatron-LM's data-args files: blends too long for a command line ---------------------------------------

def test_data_args_path_reads_the_data_path_list(tmp_path):
    f = tmp_path / "blend.txt"
    f.write_text("0.3 /data/a_text_document\n0.7\t/data/b_text_document\n")
    out = parse_args(["--preset", "tiny", "--data-args-path", str(f)])
    assert out.job.data.data_path == ["0.3", "/data/a_text_document", "0.7", "/data/b_text_document"]
    assert any("data-args-path" in n and "4" in n for n in out.notes)


def test_per_split_data_args_path_lists_and_strings(tmp_path):
    f = tmp_path / "splits.json"
    f.write_text(json.dumps({"train": ["1", "/d/a", 2, "/d/b"], "valid": "/d/v", "test": None}))
    d = parse_args(["--preset", "tiny", "--per-split-data-args-path", str(f)]).job.data
    assert d.train_data_path == ["1", "/d/a", "2", "/d/b"]
    assert d.valid_data_path == ["/d/v"]
    assert not d.test_data_path and not d.data_path


@pytest.mark.parametrize("content,argv_extra,match", [
    (None, [], "cannot read it"),
    ("", [], "the file is empty"),
    ("A", ["--data-path", "B"], "both given"),
])
def test_data_args_path_errors(tmp_path, content, argv_extra, match):
    f = tmp_path / "blend.txt"
    if content is not None:
        f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        parse_args(["--preset", "tiny", "--data-args-path", str(f)] + argv_extra)


@pytest.mark.parametrize("content,argv_extra,match", [
    ("{not json", [], "not valid JSON"),
    (json.dumps({"valid": ["A"]}), [], 'a "train" entry'),
    (json.dumps({"train": ["A"], "eval": ["B"]}), [], "unknown key"),
    (json.dumps({"train": []}), [], "non-empty list"),
    (json.dumps({"train": [{"path": "A"}]}), [], "non-empty list"),
    (json.dumps({"train": ["A"]}), ["--valid-data-path", "B"], "both given"),
    (json.dumps({"train": ["A"]}), ["--data-args-path", "x"], "use one"),
])
def test_per_split_data_args_path_errors(tmp_path, content, argv_extra, match):
    f = tmp_path / "splits.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        parse_args(["--preset", "tiny", "--per-split-data-args-path", str(f)] + argv_extra)


def test_load_alone_takes_the_checkpoints_config_and_flags_override_it(tmp_path):
    # Megatron's --use-checkpoint-args, always on: `--load DIR` without --preset/--config resumes the saved run.
    saved = parse_args(["--preset", "tiny", "--model.vocab_size", "96", "--train-iters", "5", "--lr", "3e-4",
                        "--save", str(tmp_path)]).job
    (tmp_path / "iter_0000005").mkdir()
    saved.save(str(tmp_path / "iter_0000005" / "config.yaml"))
    (tmp_path / "latest").write_text("iter_0000005")
    for load in (tmp_path, tmp_path / "iter_0000005"):  # SAVE, or one tag directory
        out = parse_args(["--load", str(load), "--train-iters", "9"])
        job = out.job
        assert job.training.train_iters == 9 and job.training.load == str(load)  # the command line wins
        assert job.optim.lr == 3e-4 and job.model.to_dict() == saved.model.to_dict()  # the rest is the saved run's
        assert job.training.save == str(tmp_path)
        assert any("checkpoint's" in n for n in out.notes)
    # An explicit preset or config is the user's base: the checkpoint's config is not consulted.
    assert parse_args(["--preset", "tiny", "--load", str(tmp_path)]).job.optim.lr != 3e-4
    # The model-parallel layout is the launch's, not the checkpoint's (Megatron copies it only with
    # --use-mp-args-from-checkpoint-args): a TP2 x PP2 run's config read back at the default layout.
    saved.parallel.tensor_parallel = saved.parallel.pipeline_parallel = 2
    saved.save(str(tmp_path / "iter_0000005" / "config.yaml"))
    job = parse_args(["--load", str(tmp_path)]).job
    assert (job.parallel.tensor_parallel, job.parallel.pipeline_parallel) == (1, 1)
    assert job.model.to_dict() == saved.model.to_dict() and job.optim.lr == 3e-4
    assert parse_args(["--load", str(tmp_path), "--tensor-model-parallel-size", "2"]).job.parallel.tensor_parallel == 2
    # --load naming the --save directory of a run that has not saved yet (Megatron's first launch): defaults.
    fresh = parse_args(["--load", str(tmp_path / "new"), "--save", str(tmp_path / "new"), "--num-layers", "2",
                        "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
                        "--max-position-embeddings", "16", "--micro-batch-size", "1", "--train-iters", "1"])
    assert any("Megatron-LM's defaults" in n for n in fresh.notes)


def test_print_config_output_reads_back_as_config(tmp_path):
    import contextlib
    import io

    from megatron_code.cli_main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--preset", "tiny", "--model.vocab_size", "96", "--print-config"]) == 0
    printed = buf.getvalue()
    assert printed.startswith("preset: tiny") and "# padded_vocab_size: 128" in printed
    (tmp_path / "c.yaml").write_text(printed)
    again = parse_args(["--config", str(tmp_path / "c.yaml")]).job
    assert again.to_dict() == parse_args(["--preset", "tiny", "--model.vocab_size", "96"]).job.to_dict()
