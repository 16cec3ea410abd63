#!/usr/bin/env python
"""RESULTS.md's experiments: run them, keep every run's raw result, render RESULTS.md's tables from those.

    python examples/experiments/experiments.py run activations --work runs/exp          # all arms, 3 seeds
    python examples/experiments/experiments.py run activations --work runs/exp --record # + results/activations.json
    python examples/experiments/experiments.py render          # RESULTS.md's tables from results/*.json
    python examples/experiments/experiments.py render --check  # exit 1 if RESULTS.md differs from what it renders

One script per experiment (activations.sh, positions.sh, dropout.sh, block.sh, objectives.sh, curriculum.sh) calls
`run NAME`. Every run is the `tiny` preset on this machine's Python standard library (tools/prepare_stdlib_corpus.py,
a 4,096-token byte-level BPE trained on 5M characters of it), ITERS steps of 8 x 128 tokens, AdamW 2e-3 -> 2e-4
cosine with 20 warm-up steps, one thread per run; the arms of an experiment differ only in their flags, and every
arm runs on the same seeds (the seed sets the initialisation and the data order). The corpus, tokenizer and data
are prepared once per WORK and shared by all experiments in it.

The raw result of an experiment (`--record` writes it to examples/experiments/results/NAME.json; without it, only
to WORK/NAME.json) holds the commit, the machine (CPU, torch's CPU capability, versions), the hashes of the corpus
and data, the full argument list of every run and, per run, the validation losses, the first training losses and
the wall time. `render` turns them into the tables between the `<!-- table NAME -->` markers of RESULTS.md;
tests/unit/test_results_tables.py checks that RESULTS.md equals what `render` makes of the committed results.

Determinism: a run is a pure function of its arguments, the data and the machine's arithmetic: the same command on
the same machine gives bitwise the same losses (single-threaded, fp32; checked by the test that re-runs a cell).
Another CPU type may pick other fp32 kernels (AVX2 vs AVX-512 vs AMX paths in oneDNN/MKL) and other summation
orders, so results agree only to rounding and drift apart slowly with training; another Python version has another
standard library, hence another corpus (the data hashes in the raw results say which).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(ROOT, "examples", "experiments", "results")
RESULTS_MD = os.path.join(ROOT, "RESULTS.md")

SEQ, BATCH, WARMUP, EVAL_ITERS = 128, 8, 20, 64
VOCAB, TOKENIZER_CHARS = 4096, 5_000_000
FIRST_TRAIN_LOSSES = 5  # recorded per run: what a cheap re-run of a cell compares against

MIM = "--micro-batch-size 4 --global-batch-size 4 --mim --mim-beta 1.0 --mim-divergence tv"

# name -> (column header, [(arm, label, flags)]); the first arm is the baseline every gap is measured against. The
# baselines are the tiny preset as it is (empty flags), so all tables share their runs: a run is keyed by its
# arguments (WORK/runs/HASH), and a run that exists is not repeated.
EXPERIMENTS: dict[str, dict] = {
    "activations": {"header": "activation", "arms": [
        ("gelu", "GELU", ""),  # the tiny preset's defaults: gelu, RoPE on half the head, no dropout, parallel
        ("relu", "ReLU", "--model.activation relu"),
        ("elu", "ELU", "--model.activation elu")]},
    "positions": {"header": "positions", "arms": [
        ("rope", "RoPE (half the head)", ""),
        ("learned", "learned absolute", "--model.position_embedding learned"),
        ("t5", "T5 relative bias", "--model.position_embedding t5")]},
    "dropout": {"header": "dropout (p = 0.1)", "arms": [
        ("none", "none", ""),
        ("hidden", "hidden + embedding", "--hidden-dropout 0.1"),
        ("layerdrop", "LayerDrop", "--model.layerdrop 0.1"),
        ("drophead", "DropHead", "--model.drophead 0.1")]},
    "block": {"header": "block", "arms": [
        ("parallel", "parallel", ""),
        ("sequential", "sequential", "--model.block sequential")]},
    "objectives": {"header": "objective", "arms": [
        ("ar", "AR", ""),
        ("fim", "FIM (rate 0.5, half SPM)", "--fim-rate 0.5 --fim-spm-rate 0.5"),
        ("mim", "MIM (4 samples x 2 directions)", MIM)]},
    "curriculum": {"header": "schedule", "arms": [
        ("one-phase", "one phase, blend", None),
        ("three-phase", "three phases", None)]},
}

# The curriculum: the study's Table 5.2 shape (The Pile -> multi-language code -> Python; batch 2M -> 1.5M -> 0.75M
# tokens; lr 1.2e-4 then 0.4e-4 for 6B) scaled to this model: the phases' token shares follow the study's 6B run
# (300B : 150B : 37.5B tokens), batches 8 -> 6 -> 3 samples, the later phases at a third of the first phase's lr.
# Shares here: 1,472 : 720 : 192 samples = 61.7 : 30.2 : 8.1 % (the study: 61.5 : 30.8 : 7.7 %).
PHASES = [  # (name, source, steps, batch, lr, warmup)
    ("text", "text", 184, 8, 2.0e-3, WARMUP),
    ("code", "code", 120, 6, 6.7e-4, 0),
    ("python", "stdlib", 64, 3, 6.7e-4, 0),
]
CURRICULUM_SAMPLES = sum(steps * batch for _, _, steps, batch, _, _ in PHASES)  # 2,384
CURRICULUM_ONE_PHASE_ITERS = CURRICULUM_SAMPLES // BATCH  # 298 steps of 8

# Sources of the two non-Python phases: files of this machine, read in sorted order up to a character budget.
CURRICULUM_SOURCES = {
    "text": (["/usr/share/doc"], ("README", ".txt", ".md", ".rst", "copyright")),
    "code": (["/usr/include"], (".h", ".c", ".hpp", ".cc")),
}
CURRICULUM_CHARS = 3_000_000


def sh(cmd: list[str], log: str | None = None) -> None:
    if log:
        with open(log, "w") as f:
            subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    else:
        subprocess.run(cmd, check=True, cwd=ROOT)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare(work: str, curriculum: bool = False) -> dict:
    """The corpus, tokenizer and Megatron data under WORK (each step skipped when its output exists)."""
    py = sys.executable
    os.makedirs(work, exist_ok=True)
    corpus, tok, data = (os.path.join(work, d) for d in ("corpus", "tokenizer", "data"))
    if not os.path.exists(os.path.join(corpus, "test.jsonl")):
        sh([py, "tools/prepare_stdlib_corpus.py", "--output-dir", corpus])
    if not os.path.exists(os.path.join(tok, "tokenizer.json")):
        sh([py, "tools/train_tokenizer.py", "--input", os.path.join(corpus, "train.jsonl"), "--vocab-size",
            str(VOCAB), "--output-dir", tok, "--max-chars", str(TOKENIZER_CHARS)])
    splits = [("stdlib_train", os.path.join(corpus, "train.jsonl")),
              ("stdlib_valid", os.path.join(corpus, "valid.jsonl"))]
    if curriculum:
        for source in CURRICULUM_SOURCES:
            path = os.path.join(corpus, f"{source}.jsonl")
            if not os.path.exists(path):
                write_source_corpus(source, path)
            splits.append((source, path))
    for prefix, path in splits:
        out = os.path.join(data, prefix)
        if not os.path.exists(out + "_text_document.idx"):
            sh([py, "tools/preprocess_data.py", "--input", path, "--output-prefix", out, "--json-keys", "text",
                "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", os.path.join(tok, "tokenizer.json"),
                "--append-eod", "--workers", "2", "--no-progress"])
    hashes = {os.path.relpath(p, work): sha256(p) for p in
              [os.path.join(corpus, "train.jsonl"), os.path.join(corpus, "valid.jsonl"),
               os.path.join(tok, "tokenizer.json")] +
              [os.path.join(data, prefix + "_text_document.bin") for prefix, _ in splits]}
    return hashes


def write_source_corpus(source: str, path: str) -> None:
    """JSONL of this machine's files of one kind, in sorted path order, up to CURRICULUM_CHARS characters."""
    roots, suffixes = CURRICULUM_SOURCES[source]
    files = sorted(os.path.join(d, f) for root in roots for d, _, fs in os.walk(root) for f in fs
                   if f.endswith(suffixes) or f.startswith(suffixes))
    total = 0
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        for f in files:
            if os.path.islink(f) or not 100 <= os.path.getsize(f) <= 200_000:
                continue
            try:
                text = open(f, encoding="utf-8").read()
            except (UnicodeDecodeError, OSError):
                continue
            out.write(json.dumps({"text": text, "path": f}) + "\n")
            total += len(text)
            if total >= CURRICULUM_CHARS:
                break
    if total < CURRICULUM_CHARS:
        raise SystemExit(f"error: {roots} hold only {total:,} characters of {source} files here; the curriculum "
                         f"needs {CURRICULUM_CHARS:,}")
    os.replace(tmp, path)


def common_args(work: str, iters: int) -> list[str]:
    data = os.path.join(work, "data")
    return ["--preset", "tiny", "--tokenizer-type", "HuggingFaceTokenizer",
            "--tokenizer-model", os.path.join(work, "tokenizer", "tokenizer.json"),
            "--train-data-path", os.path.join(data, "stdlib_train_text_document"),
            "--valid-data-path", os.path.join(data, "stdlib_valid_text_document"),
            "--seq-length", str(SEQ), "--train-iters", str(iters), "--micro-batch-size", str(BATCH),
            "--global-batch-size", str(BATCH), "--lr-warmup-iters", str(WARMUP), "--eval-interval", str(iters),
            "--eval-iters", str(EVAL_ITERS), "--log-interval", "50", "--training.progress_bar", "false"]


def curriculum_config(work: str) -> str:
    """The three-phase YAML (written under WORK; the raw result keeps its text)."""
    data = os.path.join(work, "data")
    lines = ["phases:"]
    for name, source, steps, batch, lr, warmup in PHASES:
        prefix = os.path.join(data, f"{'stdlib_train' if source == 'stdlib' else source}_text_document")
        lines += [f"  - name: {name}", "    optimizer_state: keep",
                  f"    data: {{train_data_path: [{prefix}]}}",
                  f"    training: {{train_iters: {steps}, global_batch_size: {batch}, micro_batch_size: {batch}, "
                  f"eval_interval: {steps}}}",
                  f"    optim: {{lr: {lr}, lr_warmup_iters: {warmup}, lr_decay_style: cosine}}"]
    path = os.path.join(work, "curriculum-three-phases.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run_args(name: str, arm: str, flags: str | None, work: str, iters: int, seed: int, save: str) -> list[str]:
    if name != "curriculum":
        return common_args(work, iters) + shlex.split(flags) + ["--seed", str(seed), "--save", save]
    data = os.path.join(work, "data")
    if arm == "one-phase":  # the same samples per source as the phases read, blended, one schedule
        blend = []
        for _, source, steps, batch, _, _ in PHASES:
            prefix = "stdlib_train" if source == "stdlib" else source
            blend += [str(steps * batch), os.path.join(data, f"{prefix}_text_document")]
        args = common_args(work, CURRICULUM_ONE_PHASE_ITERS)
        i = args.index("--train-data-path")
        return args[:i + 1] + blend + args[i + 2:] + ["--seed", str(seed), "--save", save]
    return common_args(work, PHASES[0][2]) + ["--config", curriculum_config(work), "--seed", str(seed),
                                              "--save", save]


def metrics_files(save: str) -> list[str]:
    if os.path.exists(os.path.join(save, "metrics.jsonl")):
        return [os.path.join(save, "metrics.jsonl")]
    return [os.path.join(save, f"phase-{i}-{p[0]}", "metrics.jsonl") for i, p in enumerate(PHASES)]


def summarize(save: str) -> dict:
    """The raw result of one run from its metrics.jsonl (per phase for the curriculum)."""
    files = metrics_files(save)
    recs = [[json.loads(line) for line in open(f)] for f in files]
    train = [r for rs in recs for r in rs if r["kind"] == "train"]
    valid = [[i, r["iteration"], r["loss"]] for i, rs in enumerate(recs) for r in rs if r["kind"] == "valid"]
    out = {"final_valid": valid[-1][2],
           "valid": [v[1:] if len(files) == 1 else v for v in valid],
           "first_train_losses": [r["loss"] for r in train[:FIRST_TRAIN_LOSSES]],
           "trained_samples": sum(r["global_batch_size"] for r in train),
           "last50_train_loss": sum(r["loss"] for r in train[-50:]) / len(train[-50:])}
    for part in ("fwd_ce", "bwd_ce", "agreement"):
        if part in train[-1]:
            out[f"last50_{part}"] = sum(r[part] for r in train[-50:]) / len(train[-50:])
    return out


def machine() -> dict:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    return {"cpu": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "amx": "amx_tile" in flags,
            "torch": torch.__version__, "python": platform.python_version(), "omp_num_threads": 1}


def git_commit() -> str:
    # the code a run executes; not the raw results this script writes (results/), or a second experiment started
    # after a first one recorded would refuse to run
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "megatron_code", "tools", "examples/experiments",
                            "pretrain_code.py", ":!examples/experiments/results"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def cmd_run(args) -> int:
    spec = EXPERIMENTS[args.name]
    work = os.path.abspath(args.work)
    commit = git_commit()
    if args.record and commit.endswith("-dirty"):
        print(f"error: {ROOT} has uncommitted changes: a recorded result must name the commit it ran at; commit "
              f"(and land) first, or run without --record", file=sys.stderr)
        return 1
    hashes = prepare(work, curriculum=args.name == "curriculum")
    arms = [a for a in spec["arms"] if not args.arms or a[0] in args.arms]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=ROOT)
    pending, running, runs = [], [], []
    if args.name == "curriculum":
        args.iters = CURRICULUM_ONE_PHASE_ITERS
    os.makedirs(os.path.join(work, "runs"), exist_ok=True)
    for seed in args.seeds:
        for arm, _, flags in arms:
            key = hashlib.sha256(json.dumps(run_args(args.name, arm, flags, work, args.iters, seed, "")).encode())
            save = os.path.join(work, "runs", key.hexdigest()[:12])
            argv = run_args(args.name, arm, flags, work, args.iters, seed, save)
            runs.append((arm, seed, save, argv))
            done = all(os.path.exists(f) for f in metrics_files(save)) and os.path.exists(save + ".wall")
            if not done:
                pending.append((save, argv))
    while pending or running:
        while pending and len(running) < args.jobs:
            save, argv = pending.pop(0)
            subprocess.run(["rm", "-rf", save], check=True)
            log = open(save + ".log", "w")
            proc = subprocess.Popen([sys.executable, "pretrain_code.py"] + argv, cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            running.append((proc, save, time.time(), log))
            print(f"started {os.path.basename(save)}: {' '.join(argv)}", flush=True)
        time.sleep(1)
        for item in list(running):
            proc, save, started, log = item
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # the child's own CPU time, not the machine's
            if pid == 0:
                continue
            running.remove(item)
            log.close()
            if os.waitstatus_to_exitcode(status) != 0:
                print(f"error: {os.path.basename(save)} failed ({os.waitstatus_to_exitcode(status)}): see "
                      f"{save}.log", file=sys.stderr)
                for p, *_ in running:
                    p.wait()
                return 1
            with open(save + ".wall", "w") as f:
                f.write(f"{time.time() - started:.1f} {usage.ru_utime + usage.ru_stime:.1f}\n")
            print(f"finished {os.path.basename(save)} in {time.time() - started:.0f} s", flush=True)
    result = {
        "experiment": args.name, "script": f"examples/experiments/{args.name}.sh",
        "command": f"python examples/experiments/experiments.py run {args.name} --iters {args.iters} --seeds "
                   f"{' '.join(map(str, args.seeds))}" + (f" --arms {' '.join(args.arms)}" if args.arms else ""),
        "commit": commit, "machine": machine(), "data_sha256": hashes,
        "settings": {"iters": args.iters, "seeds": args.seeds, "seq_length": SEQ, "vocab_size": VOCAB,
                     "tokenizer_chars": TOKENIZER_CHARS, "eval_iters": EVAL_ITERS},
        "runs": []}
    if args.name == "curriculum":
        result["settings"]["phases"] = open(curriculum_config(work)).read()
    for arm, seed, save, argv in runs:
        rec = {"arm": arm, "seed": seed, "args": [a.replace(work, "$WORK") for a in argv],
               "wall_s": float(open(save + ".wall").read().split()[0]),
               "cpu_s": float(open(save + ".wall").read().split()[1])}
        rec.update(summarize(save))
        result["runs"].append(rec)
    text = json.dumps(result, indent=1) + "\n"
    with open(os.path.join(work, f"{args.name}.json"), "w") as f:
        f.write(text)
    if args.record:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        with open(os.path.join(RESULTS_DIR, f"{args.name}.json"), "w") as f:
            f.write(text)
    print(render_table(result))
    return 0


# ---------------------------------------------------------------------------------------------------- rendering
def render_table(result: dict) -> str:
    """The markdown of one experiment: settings line, then per arm the final validation loss per seed, the mean,
    the spread over seeds, and the gap to the baseline arm paired by seed (mean, min..max)."""
    spec = EXPERIMENTS[result["experiment"]]
    seeds = result["settings"]["seeds"]
    loss = {(r["arm"], r["seed"]): r["final_valid"] for r in result["runs"]}
    arms = [a for a in spec["arms"] if any((a[0], s) in loss for s in seeds)]
    base = arms[0][0]
    m = result["machine"]
    cpu_min = sum(r["cpu_s"] for r in result["runs"]) / 60
    tokens = sorted({r["trained_samples"] * SEQ for r in result["runs"]})
    lines = [f"Raw results `examples/experiments/results/{result['experiment']}.json`, commit "
             f"`{result['commit'][:12]}`, command `{result['command']}`; {len(result['runs'])} runs reading "
             f"{' / '.join(f'{t:,}' for t in tokens)} data tokens each, {cpu_min:.0f} CPU-minutes "
             f"(one thread per run, {m['cpu']}, {m['cpu_capability']}, torch {m['torch']}).", "",
             f"| {spec['header']} | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean | spread | gap to " + arms[0][1] + " (paired: mean, min..max) |",
             "|---|" + "---:|" * (len(seeds) + 3)]
    for arm, label, _ in arms:
        vals = [loss[(arm, s)] for s in seeds]
        gaps = [loss[(arm, s)] - loss[(base, s)] for s in seeds]
        gap = "-" if arm == base else f"{sum(gaps) / len(gaps):+.4f} ({min(gaps):+.4f}..{max(gaps):+.4f})"
        lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in vals)
                     + f" | {sum(vals) / len(vals):.4f} | {max(vals) - min(vals):.4f} | {gap} |")
    for arm, label, _ in arms:  # multi-phase runs: the validation loss at the end of each phase
        runs = [r for r in result["runs"] if r["arm"] == arm and r["valid"] and len(r["valid"][0]) == 3]
        if runs:
            ends = {}
            for r in runs:
                for phase, _, value in r["valid"]:
                    ends.setdefault(phase, {})[r["seed"]] = value  # the last record of a phase is its end
            names = [p[0] for p in PHASES]
            lines += ["", f"{label}: validation loss at the end of each phase, mean of the seeds: " + ", ".join(
                f"{names[ph]} {sum(v.values()) / len(v):.4f}" for ph, v in sorted(ends.items())) + "."]
    for arm, label, _ in arms:  # MIM's loss terms, so the prose need not copy numbers by hand
        runs = [r for r in result["runs"] if r["arm"] == arm and "last50_fwd_ce" in r]
        if runs:
            terms = ", ".join(f"{t} {sum(r[f'last50_{t}'] for r in runs) / len(runs):.3f}"
                              for t in ("fwd_ce", "bwd_ce", "agreement"))
            lines += ["", f"{label}: training terms, mean of the last 50 steps and of the seeds: {terms}."]
    return "\n".join(lines)


BLOCK = re.compile(r"(<!-- table (\S+): generated[^\n]*-->\n)(.*?)(<!-- end table \2 -->)", re.S)


def load_results(directory: str = RESULTS_DIR) -> dict[str, dict]:
    out = {}
    for f in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if f.endswith(".json"):
            with open(os.path.join(directory, f)) as fh:
                out[f[:-5]] = json.load(fh)
    return out


def render_markdown(text: str, results: dict[str, dict]) -> str:
    """RESULTS.md with every generated block replaced by the rendering of its raw results."""
    def sub(match):
        name = match.group(2)
        if name not in results:
            raise SystemExit(f"error: RESULTS.md has a table {name!r} but {RESULTS_DIR} has no {name}.json")
        return match.group(1) + render_table(results[name]) + "\n" + match.group(4)
    return BLOCK.sub(sub, text)


def cmd_render(args) -> int:
    text = open(RESULTS_MD).read()
    results = load_results()
    missing = set(results) - {m[1] for m in BLOCK.findall(text)}
    if missing:
        print(f"error: RESULTS.md has no table for {sorted(missing)}: add `<!-- table NAME: generated ... -->` and "
              f"`<!-- end table NAME -->` markers", file=sys.stderr)
        return 1
    new = render_markdown(text, results)
    if args.check:
        if new != text:
            print("RESULTS.md differs from the tables rendered from examples/experiments/results/*.json: run "
                  "`python examples/experiments/experiments.py render`", file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(RESULTS_MD, "w") as f:
            f.write(new)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one experiment's arms x seeds and write its raw result")
    r.add_argument("name", choices=sorted(EXPERIMENTS))
    r.add_argument("--work", default="runs/experiments", help="corpus, data and runs (shared by experiments)")
    r.add_argument("--iters", type=int, default=300, help="training steps per run (curriculum: fixed by PHASES)")
    r.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    r.add_argument("--arms", nargs="+", help="only these arms (default: all)")
    r.add_argument("--jobs", type=int, default=2, help="runs at the same time (one thread each)")
    r.add_argument("--record", action="store_true", help="also write examples/experiments/results/NAME.json")
    g = sub.add_parser("render", help="rewrite RESULTS.md's generated tables from the raw results")
    g.add_argument("--check", action="store_true", help="only compare; exit 1 when RESULTS.md differs")
    args = ap.parse_args(argv)
    return cmd_run(args) if args.cmd == "run" else cmd_render(args)


if __name__ == "__main__":
    sys.exit(main())
