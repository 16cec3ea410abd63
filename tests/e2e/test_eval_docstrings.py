"""tools/generate_docstrings.py: prompt construction (the democratization study's code-commenting prompt),
extraction of the explanation, and the CLI wiring, with a fake generate function instead of a model."""

import json
import os
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from megatron_code.commands import generate_docstrings as tool  # noqa: E402

SOURCE = textwrap.dedent('''\
    import functools


    def add(a, b):
        return a + b


    class Stack:
        @functools.lru_cache
        def peek(self):
            return self.items[-1]
''')


def test_top_level_prompt_is_function_then_the_study_suffix_at_column_0():
    add = tool.find_functions(SOURCE)[0]
    assert (add.name, add.lineno, add.indent) == ("add", 4, 0)
    # Figure 5.3 of the study: the opening of the explanation at column 0 after the function
    assert tool.build_prompt(add) == \
        'def add(a, b):\n    return a + b\n"""Code explanation: the previous function'


def test_methods_are_dedented_with_their_decorators():
    fns = tool.find_functions(SOURCE)
    assert [f.qualname for f in fns] == ["add", "Stack.peek"]
    prompt = tool.build_prompt(fns[1])
    assert prompt.startswith("@functools.lru_cache\ndef peek(self):\n    return")
    assert prompt.endswith('\n"""Code explanation: the previous function')
    # The prompt completed with a closing quote is valid Python: a function, then a module-level string.
    compile(prompt + ' returns the top."""\n', "<prompt>", "exec")


def test_selection_and_errors():
    assert [f.name for f in tool.find_functions(SOURCE, ["peek"])] == ["peek"]
    assert [f.name for f in tool.find_functions(SOURCE, ["Stack.peek"])] == ["peek"]
    with pytest.raises(tool.DocstringError, match="no function named"):
        tool.find_functions(SOURCE, ["missing"])
    with pytest.raises(tool.DocstringError, match="not valid Python"):
        tool.find_functions("def broken(:\n", filename="x.py")
    with pytest.raises(tool.DocstringError, match="no function"):
        tool.find_functions("x = 1\n")


@pytest.mark.parametrize("completion, expected", [
    (' adds two numbers and returns the sum.\n    """\n    return 0', "The previous function adds two numbers "
                                                                    "and returns the sum."),
    (" returns\n    the top item", "The previous function returns the top item"),  # no closing quotes (budget)
    ("'s result is a + b.\"\"\"", "The previous function's result is a + b."),
])
def test_extraction_cuts_at_closing_quotes(completion, expected):
    assert tool.extract_explanation(completion) == expected


def test_explain_functions_with_fake_generate_fn():
    calls = []

    def fake_generate(prompts, n):
        calls.append((prompts, n))
        return [[f" explains prompt {i}.\"\"\"\nmore"] for i in range(len(prompts))]

    records = tool.explain_functions(tool.find_functions(SOURCE), fake_generate)
    assert len(calls) == 1 and calls[0][1] == 1 and len(calls[0][0]) == 2
    assert [r["explanation"] for r in records] == ["The previous function explains prompt 0.",
                                                   "The previous function explains prompt 1."]
    assert records[1]["qualname"] == "Stack.peek" and records[1]["prompt"] == calls[0][0][1]
    with pytest.raises(tool.DocstringError, match="1 completion"):
        tool.explain_functions(tool.find_functions(SOURCE), lambda p, n: [["a", "b"]] * len(p))


def test_cli_wiring(tmp_path, monkeypatch, capsys):
    import megatron_code.evaluation.humaneval as humaneval

    seen = {}

    def fake_model_generate_fn(ckpt_dir, **kwargs):
        seen.update(ckpt_dir=ckpt_dir, **kwargs)
        return lambda prompts, n: [[" is explained.\"\"\""] * n for _ in prompts]

    monkeypatch.setattr(humaneval, "model_generate_fn", fake_model_generate_fn)
    src = tmp_path / "code.py"
    src.write_text(SOURCE)
    out = tmp_path / "out.jsonl"
    assert tool.main(["--load", "CKPT", "--input", str(src), "--function", "add", "--output", str(out)]) == 0
    assert seen["ckpt_dir"] == "CKPT" and seen["stop"] == ['"""'] and seen["temperature"] == 0.0
    assert capsys.readouterr().out.strip() == "add (line 4): The previous function is explained."
    assert json.loads(out.read_text())["explanation"] == "The previous function is explained."
    assert tool.main(["--load", "CKPT", "--input", str(tmp_path / "missing.py")]) == 1
    assert "no such file" in capsys.readouterr().err


PROBLEMS = [{"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n", "entry_point": "add",
             "canonical_solution": "    return a + b\n", "test": "def check(f):\n    assert f(1, 2) == 3\n"},
            {"task_id": "HumanEval/1", "prompt": "import math\n\n\ndef root(x):\n", "entry_point": "root",
             "canonical_solution": "    return math.sqrt(x)\n", "test": "def check(f):\n    assert f(4) == 2\n"}]


def test_study_protocol_five_samples_sheet_and_pass_at_1_and_5(tmp_path, monkeypatch, capsys):
    """--humaneval: 5 samples of every problem's complete function with the column-0 prompt, a CSV sheet with an
    empty `correct` column; --score-sheet refuses it until graded, then prints pass@1 and pass@5."""
    import csv

    import megatron_code.evaluation.humaneval as humaneval

    seen = {}

    def fake_model_generate_fn(ckpt_dir, **kwargs):
        seen.update(kwargs)

        def gen(prompts, n):
            seen["prompts"], seen["n"] = prompts, n
            return [[f" sample {s} of prompt {i}.\"\"\"" for s in range(n)] for i in range(len(prompts))]
        return gen

    monkeypatch.setattr(humaneval, "model_generate_fn", fake_model_generate_fn)
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    sheet = tmp_path / "grading.csv"
    assert tool.main(["--load", "CKPT", "--humaneval", "--problem-file", str(problems), "--n-samples", "5",
                      "--temperature", "0.8", "--sheet", str(sheet)]) == 0
    assert seen["n"] == 5 and seen["temperature"] == 0.8
    assert seen["prompts"][0] == ('def add(a, b):\n    """Sum."""\n    return a + b\n'
                                  '"""Code explanation: the previous function')
    assert seen["prompts"][1].startswith("import math\n\n\ndef root(x):\n    return math.sqrt(x)\n\"\"\"Code")
    rows = list(csv.DictReader(open(sheet, newline="")))
    assert len(rows) == 10 and [r["sample"] for r in rows[:5]] == ["0", "1", "2", "3", "4"]
    assert rows[0]["task_id"] == "HumanEval/0" and rows[0]["correct"] == ""
    assert rows[0]["explanation"] == "The previous function sample 0 of prompt 0."
    assert rows[0]["function"] == 'def add(a, b):\n    """Sum."""\n    return a + b'
    capsys.readouterr()

    # ungraded: refused, naming the rows
    assert tool.main(["--score-sheet", str(sheet)]) == 1
    assert "10 row(s) not graded" in capsys.readouterr().err
    # a grader marks problem 0: 2 of 5 correct; problem 1: 0 of 5
    for i, r in enumerate(rows):
        r["correct"] = "1" if i in (1, 3) else "0"
    with open(sheet, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert tool.main(["--score-sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    # pass@1 = mean(2/5, 0) = 0.2; pass@5 = mean(1, 0) = 0.5
    assert "pass@1: 0.2000" in out and "pass@5: 0.5000" in out
    # an existing sheet is never overwritten; n > 1 at temperature 0 is refused
    assert tool.main(["--load", "CKPT", "--humaneval", "--problem-file", str(problems), "--n-samples", "5",
                      "--temperature", "0.8", "--sheet", str(sheet)]) == 1
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(["--load", "CKPT", "--humaneval", "--n-samples", "5"])
