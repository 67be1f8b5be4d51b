"""A caller's value as an error message quotes it: recognisable, never a 100 kB field whole."""

from __future__ import annotations

# The most of a value a message quotes (the core's src/errors.ts quotes as much).
QUOTED_VALUE_MAX = 120


def quoted(value: object) -> str:
    """`repr(value)`, which escapes newlines and control characters (a value cannot start a log line
    of its own); over QUOTED_VALUE_MAX characters, the start and then "… (N characters)"."""
    if isinstance(value, str):
        if len(value) <= QUOTED_VALUE_MAX:
            return repr(value)
        return f"{value[:QUOTED_VALUE_MAX]!r}… ({len(value)} characters)"
    text = repr(value)
    if len(text) <= QUOTED_VALUE_MAX:
        return text
    return f"{text[:QUOTED_VALUE_MAX]}… ({len(text)} characters)"
