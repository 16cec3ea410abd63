"""tools/generate_docstrings.py: prompt construction (the democratization study's code-commenting prompt),
extraction of the explanation, and the CLI wiring, with a fake generate function instead of a model."""

import importlib.util
import json
import os
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_tool():
    spec = importlib.util.spec_from_file_location("generate_docstrings",
                                                  os.path.join(ROOT, "tools", "generate_docstrings.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tool = load_tool()

SOURCE = textwrap.dedent('''\
    import functools


    def add(a, b):
        return a + b


    class Stack:
        @functools.lru_cache
        def peek(self):
            return self.items[-1]
''')


def test_top_level_prompt_is_function_then_the_study_suffix():
    add = tool.find_functions(SOURCE)[0]
    assert (add.name, add.lineno, add.indent) == ("add", 4, 0)
    assert tool.build_prompt(add) == \
        'def add(a, b):\n    return a + b\n    """Code explanation: the previous function'


def test_methods_keep_decorators_and_use_their_body_indentation():
    fns = tool.find_functions(SOURCE)
    assert [f.qualname for f in fns] == ["add", "Stack.peek"]
    prompt = tool.build_prompt(fns[1])
    assert prompt.startswith("    @functools.lru_cache\n    def peek(self):\n")
    assert prompt.endswith('\n        """Code explanation: the previous function')
    # The prompt completed with a closing quote is valid Python: the explanation sits in the method body.
    compile(textwrap.dedent(prompt) + ' returns the top."""\n', "<prompt>", "exec")


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
    with pytest.raises(tool.DocstringError, match="one completion per prompt"):
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
