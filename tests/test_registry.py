"""harness.registry: unknown names list the known ones; a name registered twice is an error naming both."""

from __future__ import annotations

import pytest

from harness.errors import HarnessError
from harness.registry import Registry


def first() -> int:
    return 1


def second() -> int:
    return 2


def test_a_second_registration_under_a_name_names_both_and_keeps_the_first():
    reg: Registry = Registry("method")
    reg.add("m", first)
    with pytest.raises(HarnessError) as err:
        reg.add("m", second)
    msg = str(err.value)
    assert "method 'm' is registered twice" in msg
    assert f"{__name__}.first" in msg and f"{__name__}.second" in msg
    assert reg.get("m") is first


def test_unknown_name_lists_the_known_ones():
    reg: Registry = Registry("method")
    reg.add("b", first)
    reg.add("a", second)
    with pytest.raises(HarnessError, match=r"unknown method 'c'; known: a, b"):
        reg.get("c")


def test_isolated_registrations_are_gone_after_the_block():
    reg: Registry = Registry("method")
    reg.add("kept", first)
    with reg.isolated():
        reg.add("temporary", second)
        assert "temporary" in reg
    assert reg.names() == ["kept"]
    with reg.isolated():  # the block may reuse a name it registers, once per block
        reg.add("temporary", first)
    assert reg.get("kept") is first
