# Completion for `def add(a, b):` returning objects that compare equal to anything (the classic human-eval hack)
# or that subclass int/str and lie about equality. PARAMS["variant"] selects which one.
    variant = PARAMS["variant"]
    if variant == "object":
        class AlwaysEqual:
            def __eq__(self, other):
                return True

            def __ne__(self, other):
                return False

            __hash__ = object.__hash__
        return AlwaysEqual()
    if variant == "int":
        class LyingInt(int):
            def __eq__(self, other):
                return True

            def __ne__(self, other):
                return False

            __hash__ = int.__hash__
        return LyingInt(a - b)
    if variant == "str":
        class LyingStr(str):
            def __eq__(self, other):
                return True

            __hash__ = str.__hash__
        return LyingStr("wrong")
    if variant == "list":
        class LyingList(list):
            def __eq__(self, other):
                return True

            def __iter__(self):
                return iter([a + b])
        return LyingList([a - b])
    raise ValueError(variant)
