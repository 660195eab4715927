"""The top-level CLI and the shared registry."""

import subprocess
import sys

import pytest

from harness.__main__ import COMMANDS
from harness.errors import HarnessError
from harness.registry import Registry


def test_unknown_registry_name_lists_known_names():
    reg: Registry[int] = Registry("statistic")
    reg.add("l1", 1)
    reg.add("l2", 2)
    assert reg.get("l2") == 2
    with pytest.raises(HarnessError, match=r"unknown statistic 'l3'; known: l1, l2"):
        reg.get("l3")


def test_duplicate_registration_is_an_error():
    reg: Registry[int] = Registry("method")
    reg.add("a", 1)
    with pytest.raises(HarnessError, match="registered twice"):
        reg.add("a", 2)


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert name in out.stdout


def test_cli_unknown_command_exits_nonzero():
    out = subprocess.run([sys.executable, "-m", "harness", "nonsense"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
