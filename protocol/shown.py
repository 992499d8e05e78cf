"""How an error message repeats a value it refuses: cut short, and never failing itself.

Every parser here names the bad value in its message (a key, a number, a word of
a script line), and the value is whatever arrived: a 60 KB key, a 1 MB line, an
integer past ``str()``'s 4300-digit limit. One rule for all of them, so a message
stays a line and writing it cannot raise. The agent and the verifier use it;
``drivers`` and ``simulators`` depend on no other package of ours (DESIGN.md,
tests/test_architecture.py), so their few messages keep their own one-line cuts.
"""

from __future__ import annotations

ELLIPSIS = "..."


def shortened(text: str, limit: int = 40) -> str:
    """``text`` as a message repeats it: its first ``limit`` characters, then ``...`` if there were more."""
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


def shown_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` shortened to ``limit``; an integer too long for ``repr`` is named by its size instead."""
    try:
        text = repr(value)
    except ValueError:  # an int past str()'s 4300-digit limit: its size is what there is to say
        return f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else "<unprintable>"
    return shortened(text, limit)
