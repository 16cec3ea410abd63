"""WordPiece for the study's tokenizer ablation (train_code_tokenizer(kind="wordpiece"), through `tokenizers`):
exact round trip on code and arbitrary unicode, real WordPiece pieces, our special-token ids, loadable as a
HuggingFaceTokenizer and by tools/train_tokenizer.py."""

import glob
import os
import subprocess
import sys
import textwrap

import pytest

from megatron_code.data.tokenizer import SPECIAL_TOKENS, build_tokenizer, train_code_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STDLIB = sorted(glob.glob(os.path.join(os.path.dirname(textwrap.__file__), "*.py")))


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("wp"))
    return train_code_tokenizer(STDLIB[:20], 1500, out, kind="wordpiece"), out


def test_round_trip_is_exact(wordpiece):
    tok, _ = wordpiece
    for text in [open(f, encoding="utf-8").read() for f in STDLIB[20:30]] + [
            "x = 'héllo ✓'\n\t## comment  \r\n", "\u2042 ## \u2042\u2042", "日本語 🎉\x00\x7f", ""]:
        assert tok.decode(tok.encode(text)) == text


def test_is_wordpiece_with_specials_first(wordpiece):
    tok, out = wordpiece
    import json
    spec = json.load(open(os.path.join(out, "tokenizer.json")))
    assert spec["model"]["type"] == "WordPiece"
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    text = open(STDLIB[25], encoding="utf-8").read()
    assert len(tok.encode(text)) < len(text.encode()) / 2  # it learned multi-byte pieces
    again = build_tokenizer("HuggingFaceTokenizer", out)
    assert again.encode(text) == tok.encode(text)


def test_cli_trains_wordpiece(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools/train_tokenizer.py"), "--input", STDLIB[0],
                        "--kind", "wordpiece", "--vocab-size", "600", "--output-dir", str(tmp_path / "t")],
                       capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    assert os.path.exists(tmp_path / "t" / "tokenizer.json")
