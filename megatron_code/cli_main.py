"""`pretrain_code.py` logic: parse, --print-config, or train; user errors end in one line, not a traceback."""

from __future__ import annotations

import sys

from .config.cli import parse_args
from .errors import UserError
from .training.guards import RunStopped


def print_config(job) -> None:
    """The resolved config as YAML that `--config` reads back; derived numbers follow as YAML comments."""
    from .model import count_parameters
    from .training.trainer import resolve_tokenizer
    from .training.formulas import apply_study_formulas
    resolve_tokenizer(job)
    job.resolve_units()
    t = job.training
    scheduled = t.global_batch_size or t.rampup_batch_size or t.step_batch_size_schedule or t.batch_size_schedule
    notes = apply_study_formulas(job)
    job.validate()
    print(job.to_yaml(), end="")
    if job.preset:
        from .config.presets import PRESETS
        print(f"# recipe source: {PRESETS[job.preset]['source']}")
    if scheduled:
        print(f"# batch schedule: {job.batch_schedule().describe()}")
    for note in notes:
        print("\n".join(f"# {line}" for line in str(note).splitlines()))
    print(f"# padded_vocab_size: {job.model.padded_vocab_size}")
    print(f"# parameters: {count_parameters(job.model)}")


USAGE = """\
usage: pretrain_code.py [--preset NAME] [--config FILE.yaml ...] [--section.key VALUE ...] [MEGATRON FLAGS ...]
                        [--print-config]

Pretrain a code language model. Layers apply in this order: --preset, then --config files in the order given, then
command-line overrides in the order given: dotted fields (--model.num_layers 6; --print-config lists every field)
and Megatron-LM / Megatron-DeepSpeed flags. Unknown flags are errors naming the closest known flag.

  python pretrain_code.py --preset tiny --tokenizer-type HuggingFaceTokenizer \\
      --tokenizer-model tok/tokenizer.json --data-path data/code_text_document --train-iters 300 --save ckpt/
  python pretrain_code.py --preset phi-1 --print-config       # resolved config and parameter count, no training
"""


def print_help() -> None:
    import textwrap

    from .config.cli import _STATEFUL_FLAGS, MEGATRON_FLAGS, NOOP_FLAGS
    from .config.presets import PRESETS
    print(USAGE)
    flags = sorted({*MEGATRON_FLAGS, *_STATEFUL_FLAGS})
    for label, items in (("presets", sorted(PRESETS)), ("Megatron flags", [f"--{f}" for f in flags]),
                         ("accepted, no effect here", [f"--{f}" for f in sorted(NOOP_FLAGS)])):
        print(textwrap.fill(", ".join(items), width=116, initial_indent=f"{label}: ", subsequent_indent="  ",
                            break_on_hyphens=False, break_long_words=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    """`pretrain_code.py` and the `megatron-code-train` console script; argv defaults to sys.argv[1:]."""
    if argv is None:
        argv = sys.argv[1:]
    if "--help" in argv or "-h" in argv:
        print_help()
        return 0
    try:
        args = parse_args(argv)
        for note in args.notes:
            print(f"note: {note}", file=sys.stderr)
        # After parsing (which imports neither torch nor DeepSpeed): a mistyped flag or value is answered without
        # torch's ~2 s import, and DeepSpeed is still named its accelerator before anything imports it.
        from .parallel.deepspeed_compat import name_cpu_accelerator
        name_cpu_accelerator()
        if args.print_config:
            print_config(args.job)
            return 0
        from .training.trainer import pretrain
        pretrain(args.job)
        return 0
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): the last complete checkpoint in --save, if any, is intact; resume with --load",
              file=sys.stderr)
        return 130
    except RunStopped as exc:
        # Training stopped on purpose (non-finite steps, a lost rank): every rank knows why; one line from each
        # rank would repeat it world-size times, so global rank 0 says it (the others exit with the same code).
        import os
        if os.environ.get("RANK", "0") == "0" or getattr(exc, "every_rank", False):
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        # A collective or the rendezvous store failed because a peer died or went away (torch's DistError family):
        # this rank cannot tell more than that, the dead rank's own log says why.
        dist = sys.modules.get("torch.distributed")
        if dist is None or not isinstance(exc, getattr(dist, "DistError", ())):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: communication with another rank failed ({type(exc).__name__}: {first[:300]}): a rank stopped "
              f"or died, see its log; the last complete checkpoint in --save is intact", file=sys.stderr)
        return 1
    except (UserError, FileNotFoundError) as exc:
        # User-fixable problems (megatron_code.errors.UserError, a missing file): one clear line naming the fix.
        print(f"error: {exc}", file=sys.stderr)
        return 2
