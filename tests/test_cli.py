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


# A mistyped option (last) after each (sub)command, with the positional arguments it needs.
MISTYPED = {
    "diff": ["diff", "a", "b", "--top_k"],
    "audit": ["audit", "--tokenizer", "t", "--formatt"],
    "fixtures build": ["fixtures", "build", "plan.toml", "--varient"],
    "fixtures list": ["fixtures", "list", "--jsn"],
    "fixtures clean": ["fixtures", "clean", "--tmp_only"],
    "evaluate": ["evaluate", "plan.toml", "--outt"],
    "judge": ["judge", "g.jsonl", "--modle"],
    "selfgen": ["selfgen", "node", "--out", "x", "--nn"],
    "findings compare": ["findings", "compare", "r.json", "--outt"],
}


def test_every_command_is_covered_by_the_mistyped_option_test():
    assert {k.split()[0] for k in MISTYPED} == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(MISTYPED))
def test_mistyped_option_prints_the_subcommands_usage_and_exits_2(name, capsys):
    from harness.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(MISTYPED[name])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    bad = MISTYPED[name][-1]
    assert err.startswith(f"usage: python -m harness {name} "), err
    assert f"python -m harness {name}: error: unrecognized arguments: {bad}" in err
