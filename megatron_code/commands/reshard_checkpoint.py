"""Convert a training checkpoint saved at one parallel layout into one that resumes at another.

    python tools/reshard_checkpoint.py --load SAVE_A --save SAVE_B --tensor-model-parallel-size 1 \\
        --pipeline-model-parallel-size 4 [--zero-stage 0] [--iteration N]
    python pretrain_code.py ... --load SAVE_B --save SAVE_B --pipeline-model-parallel-size 4   # any DP size

Reads every shard of the source (any TP x PP x DP x ZeRO layout; pipeline sources at ZeRO 0/1) into full fp32
weights and Adam moments and writes SAVE_B/iter_N/full_state.pt with the config (new layout), iteration, consumed
samples, RNG state and tokenizer. `pretrain_code.py --load SAVE_B` puts that state into the engine it builds,
whatever its TP, PP and DP sizes and ZeRO stage (0/1 with PP > 1), and continues exactly where the source run
stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--load", required=True, help="source: a --save directory or one SAVE/iter_XXXXXXX")
    ap.add_argument("--save", required=True, help="destination directory (new or empty)")
    ap.add_argument("--tensor-model-parallel-size", type=int, default=1)
    ap.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    ap.add_argument("--zero-stage", type=int, default=None, choices=(0, 1, 2, 3),
                    help="ZeRO stage recorded for the resumed run (default: the source's)")
    ap.add_argument("--iteration", type=int, default=None, help="convert this iteration instead of latest")
    args = ap.parse_args(argv)
    from megatron_code.config.base import ConfigError
    from megatron_code.parallel.reshard import reshard_to_full
    from megatron_code.training import checkpoint as ckpt
    try:
        tag = ckpt.tag_for(args.iteration) if args.iteration is not None else None
        root, tag = ckpt.resolve_checkpoint(args.load, tag)
        job = ckpt.load_job_config(root, tag)
        src = (f"TP {job.parallel.tensor_parallel} x PP {job.parallel.pipeline_parallel}, "
               f"ZeRO {job.parallel.zero_stage}")
        t0 = time.perf_counter()
        out = reshard_to_full(os.path.join(root, tag), job, args.save, args.tensor_model_parallel_size,
                              args.pipeline_model_parallel_size, args.zero_stage,
                              opt_order=ckpt.optimizer_param_names(job),
                              progress=lambda what: print(f"{what} ({time.perf_counter() - t0:.1f} s)", flush=True))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{root}/{tag} ({src}) -> {out} (TP {args.tensor_model_parallel_size} x PP "
          f"{args.pipeline_model_parallel_size}, ZeRO {job.parallel.zero_stage}); resume with --load {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
