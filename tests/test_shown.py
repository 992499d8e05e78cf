"""protocol.shown: one rule for how every error message repeats the value it refuses."""

from __future__ import annotations

import pytest

from protocol.shown import shortened, shown_repr
from protocol.wire import WireError, loads


def test_a_long_value_is_cut_to_its_limit_and_marked_a_short_one_is_whole() -> None:
    assert shortened("x" * 41) == "x" * 40 + "..."
    assert shortened("x" * 40) == "x" * 40
    assert shown_repr("y" * 1_000_000, 60) == repr("y" * 1_000_000)[:60] + "..."


def test_an_integer_past_reprs_digit_limit_is_named_by_its_size_not_raised() -> None:
    assert shown_repr(10**5000) == f"<an integer of {(10**5000).bit_length()} bits>"


def test_a_parser_repeats_a_60_kb_key_as_a_line() -> None:
    key = "k" * 60_000
    with pytest.raises(WireError) as refused:
        loads(f'{{"{key}": 1, "{key}": 2}}'.encode())
    assert len(str(refused.value)) < 100 and "appears twice" in str(refused.value)
