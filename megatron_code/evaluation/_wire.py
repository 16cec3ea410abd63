"""What crosses between a sandboxed solution (P) and its checker (K): a plain-data codec, length-prefixed JSON
framing, P's call server and K's side of `check(candidate)`. Stdlib only (see _jail.py)."""

from __future__ import annotations

import json
import os
import struct
import sys

_MAX_MESSAGE = 64 << 20  # checker side: a candidate's answer larger than this is a failure, not a memory blow-up
# Bound now, before any solution code runs: a solution may patch `os.write`, `json.dumps`... on its side of the
# channel. That can only break its own answers, but the call server should still report them instead of hanging.
_os_read, _os_write, _dumps, _loads, _pack, _unpack, _dict = os.read, os.write, json.dumps, json.loads, \
    struct.pack, struct.unpack, dict


def encode(value, depth: int = 0):
    """Plain data -> JSON-able tagged lists. Subclasses of builtin types are reduced to the builtin value through
    the base type's own methods, so no method of the value's class runs (`type()` and `issubclass`, not
    `isinstance`, which would consult a `__class__` the value can fake). Anything else raises TypeError."""
    if depth > 200:
        raise TypeError("value nested more than 200 levels deep")
    d = depth + 1
    t = type(value)
    if value is None:
        return ["N"]
    if issubclass(t, bool):
        return ["B", bool(int.__index__(value))]
    if issubclass(t, int):
        return ["I", int.__format__(value, "x")]  # hex: no 4300-digit str limit, exact
    if issubclass(t, float):
        return ["F", float.hex(value)]
    if issubclass(t, complex):
        return ["C", float.hex(complex.__getattribute__(value, "real")),
                float.hex(complex.__getattribute__(value, "imag"))]
    if issubclass(t, str):
        return ["S", str.__str__(value)]
    if issubclass(t, bytes):
        return ["Y", bytes.hex(value)]
    if issubclass(t, bytearray):
        return ["A", bytearray.hex(value)]
    if issubclass(t, list):
        return ["L", [encode(v, d) for v in list.__iter__(value)]]
    if issubclass(t, tuple):
        return ["T", [encode(v, d) for v in tuple.__iter__(value)]]
    if issubclass(t, dict):
        return ["D", [[encode(k, d), encode(v, d)] for k, v in dict.items(value)]]
    if issubclass(t, frozenset):
        return ["Z", [encode(v, d) for v in frozenset.__iter__(value)]]
    if issubclass(t, set):
        return ["E", [encode(v, d) for v in set.__iter__(value)]]
    raise TypeError(f"a value of type {type(value).__name__} cannot cross the sandbox boundary (only None, bool, "
                    "int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset)")


def decode(item):
    """Inverse of encode, building only genuine builtin objects; raises ValueError on anything malformed."""
    if not isinstance(item, list) or not item or not isinstance(item[0], str):
        raise ValueError("malformed value")
    tag = item[0]
    if tag == "N":
        return None
    if len(item) < 2:
        raise ValueError("malformed value")
    v = item[1]
    if tag == "B":
        return v is True
    if tag == "I":
        return int(v, 16)
    if tag == "F":
        return float.fromhex(v)
    if tag == "C":
        return complex(float.fromhex(v), float.fromhex(item[2]))
    if tag == "S" and type(v) is str:
        return v
    if tag == "Y":
        return bytes.fromhex(v)
    if tag == "A":
        return bytearray.fromhex(v)
    if type(v) is not list:
        raise ValueError("malformed value")
    if tag == "L":
        return [decode(x) for x in v]
    if tag == "T":
        return tuple(decode(x) for x in v)
    if tag == "D":
        return {decode(k): decode(x) for k, x in v}
    if tag == "E":
        return {decode(x) for x in v}
    if tag == "Z":
        return frozenset(decode(x) for x in v)
    raise ValueError(f"unknown tag {tag!r}")


def send_message(fd: int, obj) -> None:
    data = _dumps(obj, separators=(",", ":")).encode()
    data = _pack("<I", len(data)) + data
    view = memoryview(data)
    while view:
        view = view[_os_write(fd, view):]


def recv_message(fd: int, limit: int = _MAX_MESSAGE):
    """One framed message, or None at end of file. Raises ValueError for an oversized or malformed one."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = _unpack("<I", head)
    if n > limit:
        raise ValueError(f"message of {n} bytes exceeds the {limit}-byte limit")
    body = _read_exact(fd, n)
    if body is None:
        return None
    return _loads(body)


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = _os_read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class _Builtins:
    """The solution may patch builtins (len, isinstance...) for its own code; the call server swaps the original
    ones back in for its protocol steps and the solution's in again for each call."""

    def __init__(self):
        import builtins

        self.live = builtins.__dict__
        self.original = _dict(self.live)
        self.solution_view = None

    def protocol(self) -> None:
        self.solution_view = _dict(self.live)
        self.live.clear()
        self.live.update(self.original)

    def solution(self) -> None:
        if self.solution_view is not None:
            self.live.clear()
            self.live.update(self.solution_view)


def _serve_checker(code, namespace: dict, entry_point: str, fd: int) -> None:
    """Run the solution's module code, then answer the checker's calls of `entry_point` with plain data."""
    state = _Builtins()
    try:
        exec(code, namespace)
        fn = namespace.get(entry_point)
        if not callable(fn):
            raise NameError(f"the solution does not define a function {entry_point!r}")
    except BaseException as exc:  # noqa: BLE001 - includes SystemExit: leaving early is a failure
        description = _describe(exc)
        state.protocol()
        _print_exc()
        _send_quietly(fd, ["module_error", description])
        _flush_and_exit(1)
    state.protocol()
    _send_quietly(fd, ["ready"])
    while True:
        try:
            msg = recv_message(fd)
        except BaseException:  # noqa: BLE001
            msg = None
        if msg is None or msg[0] != "call":
            _flush_and_exit(0)
        try:
            args, kwargs = decode(msg[1]), decode(msg[2])
            state.solution()
            try:
                result = fn(*args, **kwargs)
            finally:
                state.protocol()
            try:
                reply = ["return", encode(result)]
            except RecursionError:
                raise TypeError("the returned value is nested too deeply to cross the sandbox boundary") from None
            try:
                reply.append(encode([args, kwargs]))  # arguments after the call: a candidate may mutate them
            except BaseException:  # noqa: BLE001 - an argument turned into something unsendable: not reported
                reply.append(None)
        except BaseException as exc:  # noqa: BLE001
            state.solution()
            name, message = type(exc).__name__, _message(exc)  # may run the solution's code (__str__)
            state.protocol()
            reply = ["raise", str(name), str(message)]
        try:
            send_message(fd, reply)
        except BaseException:  # noqa: BLE001
            _flush_and_exit(1)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_message(exc)}" if _message(exc) else type(exc).__name__


def _message(exc: BaseException) -> str:
    try:
        return str(exc)[:2000]
    except BaseException:  # noqa: BLE001
        return "<unprintable>"


def _print_exc() -> None:
    try:
        import traceback

        traceback.print_exc()
    except BaseException:  # noqa: BLE001 - e.g. MemoryError while formatting
        pass


def _send_quietly(fd: int, msg) -> None:
    try:
        send_message(fd, msg)
    except BaseException:  # noqa: BLE001
        pass


def _flush_and_exit(code: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass
    os._exit(code)


class SolutionError(Exception):
    """The solution failed in a way that is not an exception of a builtin type (it left, sent garbage, ...)."""


def _run_check(cfg: dict, fd: int) -> None:
    import builtins

    entry_point = cfg["entry_point"]
    first = recv_message(fd)
    if first is None:
        raise SolutionError("the solution exited before the check could call it")
    if first[0] == "module_error":
        raise SolutionError(f"the solution failed before the check ran: {first[1] if len(first) > 1 else ''}")
    if first != ["ready"]:
        raise SolutionError("the solution broke the call protocol")

    def candidate(*args, **kwargs):
        send_message(fd, ["call", encode(list(args)), encode(kwargs)])
        reply = recv_message(fd)
        if reply is None:
            raise SolutionError(f"the solution exited during a call of {entry_point}")
        if reply[0] == "return" and len(reply) == 3:
            result = decode(reply[1])
            if reply[2] is not None:
                after_args, after_kwargs = decode(reply[2])
                for before, after in zip(list(args) + list(kwargs.values()),
                                         list(after_args) + list(after_kwargs.values())):
                    _update_in_place(before, after)
            return result
        if reply[0] == "raise" and len(reply) == 3:
            name, message = str(reply[1]), str(reply[2])
            exc_type = getattr(builtins, name, None)
            if isinstance(exc_type, type) and issubclass(exc_type, Exception) and exc_type.__module__ == "builtins":
                try:
                    raise exc_type(message)
                except TypeError:  # e.g. UnicodeDecodeError needs more arguments
                    pass
            raise SolutionError(f"{name}: {message}")
        raise SolutionError("the solution broke the call protocol")

    namespace = {"__name__": "__check__", "__builtins__": builtins}
    prelude = cfg.get("prelude") or ""
    if prelude:
        # The problem's prompt (trusted: it comes from the problem file) may define helpers the test uses, e.g.
        # HumanEval/38's encode_cyclic. It ends with a signature and docstring, so it usually compiles alone.
        for text in (prelude, prelude.rstrip() + "\n    pass\n"):
            try:
                exec(compile(text, "<prompt>", "exec"), namespace)
                break
            except SyntaxError:
                continue
    namespace[entry_point] = candidate
    exec(compile(cfg["test"], "<test>", "exec"), namespace)
    check = namespace.get("check")
    if callable(check):
        check(candidate)


def _update_in_place(before, after) -> None:
    """Mirror a candidate's in-place mutation of an argument onto the checker's object (plain data only)."""
    if type(before) is list and type(after) is list and before != after:
        before[:] = after
    elif type(before) is dict and type(after) is dict and before != after:
        before.clear()
        before.update(after)
    elif type(before) is set and type(after) is set and before != after:
        before.clear()
        before.update(after)
    elif type(before) is bytearray and type(after) is bytearray and before != after:
        before[:] = after

