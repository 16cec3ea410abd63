"""A curation pipeline from its YAML description to datatrove stages, run locally or on SLURM, and its report.

Stages (each a datatrove pipeline run by one executor; folders under ``OUTPUT/work``, logs under ``OUTPUT/logs``):

1. ``filter`` (N tasks): read inputs -> the configured filters in order -> ``work/filtered`` JSONL ->
   exact-dedup signatures;
2. ``exact_find`` (1 task): datatrove's exact duplicate finder;
3. ``dedup_prepare`` (N tasks): drop exact copies -> ``work/exact`` JSONL -> MinHash signatures (without exact
   dedup this stage does not exist and stage 1 takes the signatures);
4. ``buckets`` (one task per LSH band): datatrove's candidate pairs;
5. ``clusters`` (1 task): verify candidates, union-find, documents to remove;
6. ``write`` (N tasks): drop near copies -> ``OUTPUT/data/{task}.jsonl.gz`` and Megatron shards;
then, in this process: merge the shards into ``OUTPUT/<prefix>_text_document.bin/.idx`` and write the report.

Every stage is resumable: datatrove records completed tasks (``logs/<stage>/completions``) and a re-run with the
same pipeline skips them.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time

import yaml
from datatrove.executor.slurm import SlurmPipelineExecutor
from datatrove.pipeline.readers.jsonl import JsonlReader

from megatron_code.curation.readers import InputError

from ..errors import UserError

PIPELINES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "examples", "curation")
NAMED = ("study", "palm", "phi1", "jupyt5")
FILTER_KINDS = ("language", "license", "quality", "notebook", "decontaminate", "classifier")


class CurationError(UserError, ValueError):
    """A user error in a pipeline file, the command line or the output directory (message names the fix)."""


# --- configuration ------------------------------------------------------------------------------------------

def load_pipeline(name_or_path: str) -> dict:
    path = name_or_path
    if name_or_path in NAMED:
        path = os.path.join(PIPELINES_DIR, f"{name_or_path}.yaml")
    if not os.path.isfile(path):
        raise CurationError(f"--pipeline {name_or_path}: not one of {', '.join(NAMED)} and no such file")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise CurationError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise CurationError(f"{path}: a pipeline file is a YAML mapping (see examples/curation/study.yaml)")
    cfg.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    validate(cfg, path)
    return cfg


def validate(cfg: dict, where: str = "pipeline") -> None:
    known = {"name", "source", "reader", "steps", "exact_dedup", "near_dedup", "output", "sort_buffer_mb"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise CurationError(f"{where}: unknown keys {unknown}; a pipeline has {sorted(known)}")
    mb = cfg.get("sort_buffer_mb", 1)
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or mb <= 0:
        raise CurationError(f"{where}: sort_buffer_mb = {mb!r}: a positive number of megabytes (per task)")
    for i, step in enumerate(cfg.get("steps") or []):
        if not (isinstance(step, dict) and len(step) == 1 and next(iter(step)) in FILTER_KINDS):
            raise CurationError(f"{where}: steps[{i}] = {step!r}: each step is one of {list(FILTER_KINDS)} with its "
                                f"options, e.g. '- quality: {{max_line_length: 1000}}'")
        opts = next(iter(step.values()))
        if opts is not None and not isinstance(opts, dict):
            raise CurationError(f"{where}: steps[{i}]: options must be a mapping, got {opts!r}")


def apply_overrides(cfg: dict, sets: list[str]) -> dict:
    """``--set quality.max_line_length=500`` / ``--set near_dedup.threshold=0.85`` / ``--set exact_dedup=false``:
    ``KIND.KEY`` addresses the first step of that kind (or a top-level section); values are YAML scalars."""
    cfg = copy.deepcopy(cfg)
    for item in sets:
        if "=" not in item:
            raise CurationError(f"--set {item}: use KEY=VALUE, e.g. --set quality.max_line_length=500")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        parts = key.split(".")
        if parts[0] in FILTER_KINDS:
            steps = [s for s in cfg.get("steps") or [] if parts[0] in s]
            if not steps:
                raise CurationError(f"--set {item}: the pipeline has no {parts[0]} step")
            if len(parts) != 2:
                raise CurationError(f"--set {item}: use {parts[0]}.OPTION=VALUE")
            opts = steps[0][parts[0]]
            if opts is None:
                opts = steps[0][parts[0]] = {}
            opts[parts[1]] = value
        elif parts == ["sort_buffer_mb"]:
            cfg["sort_buffer_mb"] = value
        elif parts[0] in ("reader", "near_dedup", "output", "exact_dedup"):
            node = cfg
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    node[p] = {}
                node = node[p]
            node[parts[-1]] = value
        else:
            raise CurationError(f"--set {item}: {parts[0]!r} is not a step kind {list(FILTER_KINDS)} or a section "
                                f"(reader, near_dedup, output, exact_dedup)")
    validate(cfg, "--set")
    return cfg


# --- building the stages ------------------------------------------------------------------------------------

def build_filter(kind: str, opts: dict, out: str):
    from megatron_code.curation import filters

    opts = dict(opts or {})
    try:
        if kind == "language":
            return filters.LanguageFilter(opts.pop("languages", "palm"), **opts)
        if kind == "license":
            return filters.LicenseFilter(**opts)
        if kind == "quality":
            return filters.CodeQualityFilter(opts)
        if kind == "notebook":
            return filters.NotebookFilter(**opts)
        if kind == "decontaminate":
            from megatron_code.curation.decontaminate import DecontaminationFilter

            return DecontaminationFilter(os.path.join(out, "work", "decont_hits"), **opts)
        if kind == "classifier":
            from megatron_code.curation.classifier import QualityClassifierFilter

            return QualityClassifierFilter(**opts)
    except TypeError as exc:
        raise CurationError(f"{kind} step: {exc} (see docs/curation.md for each step's options)") from None
    except (ValueError, FileNotFoundError) as exc:  # ClassifierError is a ValueError
        raise CurationError(f"{kind} step: {exc}") from None
    raise CurationError(f"unknown step {kind}")


class Plan:
    """The stages of one run: ``[(name, pipeline steps, tasks)]`` plus what the final merge needs."""

    def __init__(self, cfg: dict, inputs: list[str], out: str, tasks: int, tokenizer: dict | None, prefix: str,
                 progress: bool = True):
        from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter, ExactFindDedups
        from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupFilter
        from datatrove.pipeline.writers.jsonl import JsonlWriter

        from megatron_code.curation.dedup import (DEFAULT_SORT_BUFFER_MB, CodeMinhashSignature, NearDedupParams,
                                                  OrderedMinhashCluster, Sha256ExactSignature, exact_config)
        from megatron_code.curation.filters import Tally
        from megatron_code.curation.readers import CodeReader
        from megatron_code.curation.writers import MegatronBinWriter

        self.cfg, self.out, self.tasks, self.prefix = cfg, out, tasks, prefix
        w = os.path.join(out, "work")
        reader_opts = dict(cfg.get("reader") or {})
        try:
            reader = CodeReader(inputs, progress=progress, **reader_opts)
        except (TypeError, ValueError) as exc:
            raise CurationError(f"reader: {exc}") from None
        steps = [reader, Tally("read")]
        self.labels = ["read"]
        for step in cfg.get("steps") or []:
            kind, opts = next(iter(step.items()))
            steps += [build_filter(kind, opts, out), Tally(kind)]
            self.labels.append(kind)
        # intermediate shards uncompressed: they are read once, by this run (gzip level 9 cost more than the I/O)
        steps.append(JsonlWriter(os.path.join(w, "filtered"), output_filename="${rank}.jsonl", compression=None,
                                 adapter=fast_adapter))
        exact = cfg.get("exact_dedup", True)
        # what a task may hold of dedup signatures before it spills sorted runs to disk (dedup.SpillingSorter)
        sort_mb = cfg.get("sort_buffer_mb", DEFAULT_SORT_BUFFER_MB)
        if exact:
            steps.append(Sha256ExactSignature(os.path.join(w, "exact_sigs"), sort_buffer_mb=sort_mb))
        self.stages = [("filter", steps, tasks)]
        if exact:
            self.stages.append(("exact_find", [ExactFindDedups(os.path.join(w, "exact_sigs"),
                                                               os.path.join(w, "exact_dups"), exact_config())], 1))
            self.labels.append("exact_dedup")
        near = cfg.get("near_dedup")
        src = os.path.join(w, "filtered")
        if near:
            params = NearDedupParams(**(near if isinstance(near, dict) else {}))
            mh = params.config()
            self.minhash = mh
            signatures = CodeMinhashSignature(os.path.join(w, "minhash_sigs"), mh, sort_buffer_mb=sort_mb)
        if exact:
            s3 = [RankJsonlReader(src), ExactDedupFilter(os.path.join(w, "exact_dups"), exact_config()),
                  Tally("exact_dedup"),
                  JsonlWriter(os.path.join(w, "exact"), output_filename="${rank}.jsonl", compression=None,
                            adapter=fast_adapter)]
            src = os.path.join(w, "exact")
            if near:
                s3.append(signatures)
            self.stages.append(("dedup_prepare", s3, tasks))
        elif near:
            # no exact dedup: the filter stage takes the signatures as it writes its shard (the same documents in
            # the same order, so the same indices), which saves a stage and a pass over the corpus
            steps.append(signatures)
        if near:
            self.stages.append(("buckets", [MinhashDedupBuckets(os.path.join(w, "minhash_sigs"),
                                                                os.path.join(w, "minhash_pairs"), config=mh)],
                                mh.num_buckets))
            self.stages.append(("clusters", [OrderedMinhashCluster(
                os.path.join(w, "minhash_pairs"), os.path.join(w, "minhash_sigs"),
                os.path.join(w, "minhash_remove"), mh, params.threshold)], 1))
        final = [RankJsonlReader(src)]
        if near:
            final += [MinhashDedupFilter(os.path.join(w, "minhash_remove")), Tally("near_dedup")]
            self.labels.append("near_dedup")
        output = cfg.get("output") or {}
        final.append(JsonlWriter(os.path.join(out, "data"), output_filename="${rank}.jsonl"
                                 + (".gz" if output.get("compression", "gzip") == "gzip" else ""),
                                 compression="gzip" if output.get("compression", "gzip") == "gzip" else None,
                                 adapter=fast_adapter))
        self.tokenizer = tokenizer
        if tokenizer:
            final.append(MegatronBinWriter(os.path.join(w, "bins"), **tokenizer))
        final.append(Tally("written"))
        self.stages.append(("write", final, tasks))


def fast_adapter(writer, doc) -> dict:
    """datatrove's default JSONL adapter's output (the document's non-empty fields: text, id, metadata) without
    its ``dataclasses.asdict`` deep copy of the metadata, which was 10% of a near-dedup run (cProfile)."""
    if doc.media:
        return writer._default_adapter(doc)
    return {k: v for k, v in (("text", doc.text), ("id", doc.id), ("metadata", doc.metadata)) if v}


class RankJsonlReader(JsonlReader):
    """Reads ``{task:05d}.jsonl`` of a folder written by the previous stage (its own task's file only, so the
    document indices the dedup stages recorded line up); a task whose file is absent had no documents."""

    name = "previous stage"

    def __init__(self, folder: str):
        super().__init__(folder, compression=None, add_file_path=False)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        name = f"{rank:05d}.jsonl"
        if self.data_folder.exists(name):
            yield from self.read_files_shard([name])


# --- executors ----------------------------------------------------------------------------------------------

def _start_method() -> str:
    """forkserver (datatrove's default) re-imports the parent's ``__main__`` in every worker; when that module
    cannot be imported (a program read from stdin, ``python -c``) or starts work at import (a script without an
    ``if __name__ == "__main__"`` guard), every worker dies at start-up and multiprocess's Pool silently replaces
    it, forever: the run hangs (NOTES.md). Fork needs no re-import."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path and os.path.isfile(path) and getattr(main, "__spec__", None) is not None:
        return "forkserver"
    return "fork"


def run_stage(name: str, steps: list, tasks: int, out: str, executor: str, workers: int, slurm: dict) -> None:
    logs = os.path.join(out, "logs", name)
    if executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        LocalPipelineExecutor(steps, tasks=tasks, workers=min(workers, tasks), logging_dir=logs,
                              start_method=_start_method()).run()
        missing = _missing_tasks(logs, tasks)
        if missing:
            raise CurationError(f"stage {name}: tasks {missing} did not complete; see {logs}/logs/ (re-running "
                                f"the same command resumes)")
        return
    ex = _SlurmExecutor(steps, tasks=tasks, time=slurm.get("time", "01:00:00"),
                               partition=slurm.get("partition") or _default_partition(),
                               cpus_per_task=slurm.get("cpus_per_task", 1), mem_per_cpu_gb=slurm.get("mem_gb", 1),
                               job_name=f"curate-{name}", logging_dir=logs,
                               slurm_logs_folder=os.path.join(logs, "slurm"),
                               env_command=f"export PYTHONPATH={_repo_root()}:$PYTHONPATH; "
                                           f"export PATH={os.path.dirname(sys.executable)}:$PATH",
                               mail_type="NONE", requeue=False,
                               sbatch_args={"mem-per-cpu": slurm.get("mem_per_cpu") or "2G",
                                            **(slurm.get("sbatch_args") or {})})
    if not _missing_tasks(logs, tasks):
        return
    ex.run()
    _wait_slurm(ex.job_id, logs, tasks, name, slurm.get("poll_seconds", 2))


class _SlurmExecutor(SlurmPipelineExecutor):
    """datatrove's SLURM executor without its stats-merging job: the report reads the per-task stats itself, and
    that job's fixed ``--mem-per-cpu=1G`` is refused by clusters whose nodes declare less (the test cluster)."""

    def launch_merge_stats(self):
        pass


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _default_partition() -> str:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        raise CurationError("--executor slurm: sinfo is not available (is SLURM installed and running?)") from None
    if not out:
        raise CurationError("--executor slurm: sinfo lists no partition; pass --slurm-partition")
    default = [p for p in out if p.endswith("*")]
    return (default[0] if default else out[0]).rstrip("*")


def _missing_tasks(logs: str, tasks: int) -> list[int]:
    done = set(os.listdir(os.path.join(logs, "completions"))) if os.path.isdir(os.path.join(logs, "completions")) \
        else set()
    return [r for r in range(tasks) if f"{r:05d}" not in done]


def _wait_slurm(job_id: str, logs: str, tasks: int, name: str, poll: float) -> None:
    """Until the array job has left the queue (no wall-clock limit: a loaded cluster may hold it pending)."""
    while True:
        q = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True)
        if q.returncode != 0 or not q.stdout.strip():
            break
        time.sleep(poll)
    missing = _missing_tasks(logs, tasks)
    if missing:
        raise CurationError(f"stage {name}: SLURM job {job_id} ended with tasks {missing} incomplete; see "
                            f"{logs}/slurm/ and {logs}/logs/ (re-running the same command resumes)")


# --- report ---------------------------------------------------------------------------------------------------

def _stage_stats(out: str, stage: str, tasks: int) -> list[dict]:
    """Per step of the stage: name and stats summed over its tasks (datatrove's per-task stats files)."""
    steps: list[dict] = []
    for r in range(tasks):
        with open(os.path.join(out, "logs", stage, "stats", f"{r:05d}.json")) as f:
            per_task = json.load(f)
        for i, st in enumerate(per_task):
            if i == len(steps):
                steps.append({"name": st["name"].split(": ", 1)[-1], "stats": {}, "seconds": 0.0})
            acc = steps[i]["stats"]
            for k, v in st["stats"].items():
                acc[k] = acc.get(k, 0) + (v["total"] if isinstance(v, dict) else v)
            steps[i]["seconds"] += (st.get("time_stats") or {}).get("total", 0.0)
    return steps


def build_report(plan: Plan, seconds: float) -> dict:
    tallies, rules, reader, others = {}, {}, {}, {}
    for stage, steps, tasks in plan.stages:
        for st in _stage_stats(plan.out, stage, tasks):
            s = st["stats"]
            if st["name"].startswith("tally "):
                tallies[st["name"][6:]] = {"docs": int(s.get("docs", 0)), "bytes": int(s.get("bytes", 0))}
            elif st["name"] == "code reader":
                reader = {k: int(v) for k, v in s.items() if k != "doc_len"}
            else:
                extra = {k: int(v) for k, v in s.items()
                         if k.startswith(("dropped_", "license_", "contaminated_", "candidate_", "verified_",
                                          "clusters", "to_remove"))}
                if extra:
                    rules[st["name"]] = extra
                others[st["name"]] = round(st["seconds"], 3)
    rows, prev = [], tallies.get("read", {"docs": 0, "bytes": 0})
    for label in plan.labels[1:]:
        cur = tallies.get(label, {"docs": 0, "bytes": 0})
        rows.append({"step": label, "docs_in": prev["docs"], "docs_out": cur["docs"], "bytes_in": prev["bytes"],
                     "bytes_out": cur["bytes"], "dropped": prev["docs"] - cur["docs"]})
        prev = cur
    written = tallies.get("written", prev)
    report = {"pipeline": plan.cfg.get("name"), "tasks": plan.tasks, "seconds": round(seconds, 3),
              "read": {"docs": tallies.get("read", {}).get("docs", 0),
                       "bytes": tallies.get("read", {}).get("bytes", 0), **reader},
              "steps": rows, "rules": rules, "written": written,
              "outputs": {"jsonl": os.path.join(plan.out, "data")}}
    if plan.tokenizer:
        report["outputs"]["megatron"] = os.path.join(plan.out, f"{plan.prefix}_text_document")
    hits = os.path.join(plan.out, "decontamination_hits.jsonl")
    if os.path.exists(hits):
        report["outputs"]["decontamination_hits"] = hits
    return report


def format_report(report: dict) -> str:
    lines = [f"curation report: pipeline {report['pipeline']}, {report['tasks']} task(s), {report['seconds']:.1f} s",
             f"read: {report['read']['docs']} documents, {report['read']['bytes']} bytes"]
    skipped = {k: v for k, v in report["read"].items() if k.startswith(("skipped_", "files_"))}
    if skipped:
        lines.append("  " + ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())))
    lines.append(f"{'step':<14}{'docs in':>10}{'docs out':>10}{'dropped':>9}{'bytes in':>14}{'bytes out':>14}")
    for r in report["steps"]:
        lines.append(f"{r['step']:<14}{r['docs_in']:>10}{r['docs_out']:>10}{r['dropped']:>9}{r['bytes_in']:>14}"
                     f"{r['bytes_out']:>14}")
    for step, counts in report["rules"].items():
        lines.append(f"  {step}: " + ", ".join(f"{k.removeprefix('dropped_')}: {v}"
                                               for k, v in sorted(counts.items()) if k != "dropped"))
    lines.append(f"written: {report['written']['docs']} documents, {report['written']['bytes']} bytes")
    for k, v in report["outputs"].items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)


# --- the whole run ------------------------------------------------------------------------------------------

def _check_output(out: str, cfg: dict, inputs: list[str], tokenizer, overwrite: bool) -> None:
    """A new or empty directory, or the same run's (resumed); anything else is refused, never overwritten."""
    signature = {"pipeline": cfg, "inputs": inputs, "tokenizer": tokenizer}
    marker = os.path.join(out, "curation_run.json")
    if os.path.isdir(out) and os.listdir(out):
        if os.path.isfile(marker):
            with open(marker) as f:
                previous = json.load(f)
            if previous == json.loads(json.dumps(signature)):
                return  # resume
            if overwrite:
                for name in ("work", "logs", "data", "report.json", "decontamination_hits.jsonl", "curation_run.json"):
                    p = os.path.join(out, name)
                    if os.path.isdir(p):
                        shutil.rmtree(p)
                    elif os.path.exists(p):
                        os.remove(p)
            else:
                raise CurationError(f"--output {out} holds a curation run with another pipeline, inputs or "
                                    f"tokenizer: choose another --output, or pass --overwrite to replace it")
        else:
            raise CurationError(f"--output {out} exists and is not a curation output directory: choose a new or "
                                f"empty directory")
    os.makedirs(out, exist_ok=True)
    with open(marker, "w") as f:
        json.dump(signature, f, indent=1)


def curate(inputs: list[str], out: str, cfg: dict, tasks: int = 1, workers: int = 1, executor: str = "local",
           tokenizer: dict | None = None, prefix: str = "corpus", slurm: dict | None = None,
           overwrite: bool = False, progress: bool = True) -> dict:
    if tasks < 1 or workers < 1:
        raise CurationError("--tasks and --workers must be >= 1")
    if executor not in ("local", "slurm"):
        raise CurationError(f"--executor {executor}: use local or slurm")
    inputs = [os.path.abspath(p) for p in inputs]
    for p in inputs:
        if not os.path.exists(p):
            raise CurationError(f"--input {p}: no such file or directory")
    out = os.path.abspath(out)
    merged = os.path.join(out, f"{prefix}_text_document")
    plan = Plan(cfg, inputs, out, tasks, tokenizer, prefix, progress=progress)  # config errors before any write
    _check_output(out, cfg, inputs, tokenizer, overwrite)
    start = time.perf_counter()
    try:
        for name, steps, n in plan.stages:
            run_stage(name, steps, n, out, executor, workers, slurm or {})
    except InputError as exc:
        raise CurationError(str(exc)) from None
    if tokenizer:
        from megatron_code.curation.writers import merge_shards

        for ext in (".bin", ".idx"):
            if os.path.exists(merged + ext):
                os.remove(merged + ext)
        try:
            merge_shards(os.path.join(out, "work", "bins"), tasks, merged)
        except ValueError as exc:
            raise CurationError(str(exc)) from None
    hits_dir = os.path.join(out, "work", "decont_hits")
    if os.path.isdir(hits_dir):
        with open(os.path.join(out, "decontamination_hits.jsonl"), "w") as dst:
            for r in range(tasks):
                p = os.path.join(hits_dir, f"{r:05d}.jsonl")
                if os.path.exists(p):
                    with open(p) as src:
                        shutil.copyfileobj(src, dst)
    report = build_report(plan, time.perf_counter() - start)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report
