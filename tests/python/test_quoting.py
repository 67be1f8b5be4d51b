"""The backend's one way of quoting a caller's value in an error message (sdserve_backend/quoting.py)."""

from __future__ import annotations

import pytest

from sdserve_backend.backends.diffusion.settings import unknown_name_message
from sdserve_backend.booleans import parse_bool
from sdserve_backend.config_errors import InvalidParameter
from sdserve_backend.quoting import QUOTED_VALUE_MAX, quoted


def test_a_short_value_is_its_repr():
    assert quoted("euler_a") == "'euler_a'"
    assert quoted(7) == "7"
    assert quoted(["a"]) == "['a']"


def test_a_long_value_keeps_its_start_and_says_its_length():
    value = "x" * 100_000 + "tail"
    assert quoted(value) == f"'{'x' * QUOTED_VALUE_MAX}'… (100004 characters)"
    assert quoted("y" * QUOTED_VALUE_MAX) == repr("y" * QUOTED_VALUE_MAX)
    shown = quoted(["z" * 5000])
    assert shown.startswith("['zzz") and shown.endswith("… (5004 characters)")
    assert len(shown) < QUOTED_VALUE_MAX + 40


def test_newlines_and_control_characters_cannot_start_a_log_line():
    forged = 'x\n{"level": 50, "msg": "forged"}\r\x1b[2J\x85\u2028'
    for shown in (quoted(forged), quoted(forged * 100), quoted([forged])):
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in shown)
        assert "x\\n{" in shown


def test_messages_built_on_it_stay_short():
    message = unknown_name_message("request parameter", "s" * 100_000, {"steps": 1, "seed": 2})
    assert len(message) < 300
    assert message.startswith("request parameter 'sss") and "(100000 characters) is not known; known: seed, steps" in message
    with pytest.raises(InvalidParameter) as refused:
        parse_bool("step_batching", "maybe\n" * 20_000, False, "config parameter")
    assert len(str(refused.value)) < 300
    assert "\n" not in str(refused.value)
