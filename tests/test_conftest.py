"""The suite's own machinery: the Hypothesis profiles (root conftest.py), the ``--order`` option and the
guard on the project's ``.fixtures/`` and ``findings/`` (tests/conftest.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _profile_line(**env: str) -> str:
    """The ``hypothesis profile`` line of ``pytest -v`` in a fresh process with ``env`` over ours."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    out = subprocess.run([sys.executable, "-m", "pytest", "--co", "-v", "-p", "no:cacheprovider",
                          "tests/test_tomlfile.py"], cwd=ROOT, env={**environ, **env}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("hypothesis profile")]
    return line


@pytest.mark.parametrize("env, profile, shows", [
    ({"CI": "true"}, "ci", ["deadline=None", "max_examples=50", "print_blob=True", "database=None"]),
    ({}, "dev", ["deadline=None"]),
    ({"CI": "true", "HYPOTHESIS_PROFILE": "derandomized"}, "derandomized", ["derandomize=True", "deadline=None"]),
])
def test_hypothesis_profile_follows_the_environment(env, profile, shows):
    line = _profile_line(**env)
    assert re.match(rf"hypothesis profile '{profile}' ->", line), line
    for setting in shows:
        assert setting in line, line
    if profile != "derandomized":
        assert "derandomize=True" not in line, line


def test_an_unknown_hypothesis_profile_is_a_usage_error():
    env = {**os.environ, "HYPOTHESIS_PROFILE": "nightly"}
    out = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider",
                          "tests/test_tomlfile.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 4, out.stdout + out.stderr
    assert "HYPOTHESIS_PROFILE='nightly' is not one of ci, dev, derandomized" in out.stderr


def test_this_session_runs_under_the_selected_profile(pytestconfig):
    from hypothesis import settings

    (root_conftest,) = [p for p in pytestconfig.pluginmanager.get_plugins()
                        if getattr(p, "__file__", None) == str(ROOT / "conftest.py")]
    expected = pytestconfig.getoption("hypothesis_profile", None) or root_conftest.hypothesis_profile()
    assert settings.get_current_profile_name() == expected
    assert settings.default.deadline is None


# ---- tests/conftest.py in a scratch project: <root>/tests/conftest.py is the real one

FILES = {
    "tests/test_a.py": "def test_a1(log): log('a1')\ndef test_a2(log): log('a2')\ndef test_a3(log): log('a3')\n",
    "tests/test_b.py": "def test_b1(log): log('b1')\ndef test_b2(log): log('b2')\n",
    "tests/test_c.py": "def test_c1(log): log('c1')\ndef test_c2(log): log('c2')\n",
}
LOG_FIXTURE = """
import pytest

@pytest.fixture
def log(pytestconfig):
    def write(name):
        with open(pytestconfig.rootpath / "order.log", "a") as fh:
            fh.write(name + "\\n")
    return write
"""


@pytest.fixture
def project(pytester):
    """A scratch project holding a copy of tests/conftest.py and three test files."""
    pytester.makeini("[pytest]\n")
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    for name, text in FILES.items():
        (pytester.path / name).write_text(text)
    pytester.makeconftest(LOG_FIXTURE)  # the scratch root's conftest
    return pytester


def _order(project, *args) -> list[str]:
    log = project.path / "order.log"
    if log.exists():
        log.unlink()
    result = project.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args)
    result.assert_outcomes(passed=len(log.read_text().split()))
    return log.read_text().split()


GIVEN = ["a1", "a2", "a3", "b1", "b2", "c1", "c2"]


def test_order_given_reverse_and_shuffle(project):
    assert _order(project, "tests") == GIVEN
    assert _order(project, "tests", "--order", "reverse") == GIVEN[::-1]
    shuffled = _order(project, "tests", "--order", "shuffle", "--order-seed", "3")
    assert sorted(shuffled) == sorted(GIVEN) and shuffled != GIVEN
    assert _order(project, "tests", "--order", "shuffle", "--order-seed", "3") == shuffled  # the seed repeats it
    # each file's tests stay together (module fixtures are built once)
    files = [name[0] for name in shuffled]
    assert files == sorted(files, key=files.index)
    orders = [_order(project, "tests", "--order", "shuffle", "--order-seed", str(s)) for s in range(6)]
    assert len({tuple(o) for o in orders}) > 2
    assert len({tuple(dict.fromkeys(name[0] for name in o)) for o in orders}) > 1  # the files move too


def test_shuffle_without_a_seed_names_its_seed(project):
    result = project.runpytest_inprocess("-p", "no:cacheprovider", "tests", "--order", "shuffle")
    result.stdout.fnmatch_lines(["test order: shuffle (--order-seed *)"])


def test_order_leaves_tests_outside_tests_in_their_place(project):
    project.makepyfile(**{"other/test_z": "def test_z1(log): log('z1')\ndef test_z2(log): log('z2')\n"})
    assert _order(project, "other", "tests", "--order", "reverse") == ["z1", "z2", *GIVEN[::-1]]


# ---- the guard on .fixtures/ and findings/

WRITES = """
import pathlib

def test_writes(pytestconfig):
    folder = pytestconfig.rootpath / "{folder}" / "node"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.bin").write_bytes(b"x")

def test_tmp_only(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
"""


@pytest.mark.parametrize("folder", [".fixtures", "findings"])
def test_a_test_that_writes_into_the_project_outputs_fails(project, folder):
    (project.path / "tests" / "test_w.py").write_text(WRITES.format(folder=folder))
    result = project.runpytest_inprocess("-p", "no:cacheprovider", "tests/test_w.py")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([f"*tests/test_w.py::test_writes changed the project's .fixtures/ or findings/*",
                                 f"*+ {folder}/node/weights.bin"])
    assert "test_tmp_only" not in "\n".join(line for line in result.outlines if "changed the project" in line)


def test_removing_from_the_project_outputs_fails_too(project):
    (project.path / ".fixtures" / "old").mkdir(parents=True)
    (project.path / ".fixtures" / "old" / "meta.json").write_text("{}")
    (project.path / "tests" / "test_rm.py").write_text(
        "def test_clean(pytestconfig):\n    (pytestconfig.rootpath / '.fixtures' / 'old' / 'meta.json').unlink()\n")
    result = project.runpytest_inprocess("-p", "no:cacheprovider", "tests/test_rm.py")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*- .fixtures/old/meta.json"])


def test_the_guard_is_off_when_the_session_also_runs_tests_outside_tests(project):
    """claims/ builds into .fixtures/ and writes findings/ on purpose; in such a session the guard steps aside."""
    (project.path / "tests" / "test_w.py").write_text(WRITES.format(folder=".fixtures"))
    project.makepyfile(**{"claims/test_claim": "def test_claim():\n    pass\n"})
    result = project.runpytest_inprocess("-p", "no:cacheprovider", "tests/test_w.py", "claims")
    result.assert_outcomes(passed=3)
