"""RESULTS.md is generated: every table between `<!-- table NAME: generated ... -->` markers equals what
examples/experiments/experiments.py renders from the committed raw results (examples/experiments/results/NAME.json),
so a hand-edited number fails here; the raw results name the commit, seeds and arguments of every run. The re-run
of one cell with its script is tests/e2e/test_results_cell.py."""

import importlib.util
import os
import re


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("experiments", os.path.join(ROOT, "examples", "experiments",
                                                                          "experiments.py"))
experiments = importlib.util.module_from_spec(spec)
spec.loader.exec_module(experiments)


def test_results_md_equals_its_rendering_from_the_raw_results():
    text = open(experiments.RESULTS_MD).read()
    results = experiments.load_results()
    blocks = [m[1] for m in experiments.BLOCK.findall(text)]
    assert sorted(blocks) == sorted(results), "every raw result has its table in RESULTS.md and vice versa"
    assert experiments.render_markdown(text, results) == text, \
        "RESULTS.md differs from `python examples/experiments/experiments.py render`"
    assert experiments.main(["render", "--check"]) == 0


def test_raw_results_record_commit_seeds_and_equal_compute():
    for name, result in experiments.load_results().items():
        assert re.fullmatch(r"[0-9a-f]{40}", result["commit"]), (name, result["commit"])  # not "-dirty"
        seeds = result["settings"]["seeds"]
        assert len(seeds) >= 2, name
        arms = {r["arm"] for r in result["runs"]}
        assert {(a, s) for a in arms for s in seeds} == {(r["arm"], r["seed"]) for r in result["runs"]}, name
        for r in result["runs"]:
            assert "$WORK/runs/" in r["args"][r["args"].index("--save") + 1]
            assert r["args"][r["args"].index("--seed") + 1] == str(r["seed"])
        # equal compute: the same token positions through the model per run (MIM: half the samples, both ways)
        trained = {r["arm"]: r["trained_samples"] * (2 if "--mim" in r["args"] else 1) for r in result["runs"]}
        assert len(set(trained.values())) == 1, (name, trained)


def test_a_hand_edited_number_fails_the_check(tmp_path):
    results = experiments.load_results() or {"block": _synthetic()}
    name, result = sorted(results.items())[0]
    table = experiments.render_table(result)
    text = f"# R\n\n<!-- table {name}: generated -->\n{table}\n<!-- end table {name} -->\n"
    assert experiments.render_markdown(text, {name: result}) == text
    first = next(v for v in re.findall(r"\| (\d+\.\d{4}) \|", table))
    edited = text.replace(first, f"{float(first) - 0.01:.4f}", 1)
    assert experiments.render_markdown(edited, {name: result}) != edited


def _synthetic() -> dict:
    runs = [{"arm": a, "seed": s, "final_valid": 5.0 + i * 0.1 + s * 0.01, "trained_samples": 8, "cpu_s": 1.0}
            for i, a in enumerate(["parallel", "sequential"]) for s in (1, 2)]
    return {"experiment": "block", "commit": "0" * 40, "command": "c", "settings": {"seeds": [1, 2]},
            "machine": {"cpu": "x", "cpu_capability": "y", "torch": "z"}, "runs": runs}
