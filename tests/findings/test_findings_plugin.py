"""The pytest plugin end to end, in an inner pytest run (``pytester``): summary table, files, baseline
compare-fail, inconclusive checks across seeds (and --findings-strict), not-measured rows and conflicting
options (pytest.UsageError)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

pytest_plugins = ["pytester"]

CLAIM_FILE = '''
import os
import pytest
from harness.findings import ClaimResult, assert_holds

@pytest.mark.parametrize("seed", [0, 1])
def test_c9(claim_result, seed):
    value = float(os.environ.get("C9_VALUE_%d" % seed, os.environ.get("C9_VALUE", "0.1")))
    row = ClaimResult.make("C9", "a/b", value, 0.25, "<", reference_value=0.04, check="ratio", tolerance=0.5,
                           seed=seed if os.environ.get("C9_SEEDS") else None)
    claim_result(row)
    if not os.environ.get("C9_SEEDS"):
        assert_holds([row])


def test_c9_case(claim_result, findings_session):
    """One case measured under several training seeds (C9_CASE="0.1,0.3"), judged as the runner judges."""
    if not os.environ.get("C9_CASE"):
        pytest.skip("C9_CASE not set")
    rows = [ClaimResult.make("C9", "c/d", float(v), 0.25, "<", check="ratio", seed=i)
            for i, v in enumerate(os.environ["C9_CASE"].split(","))]
    if os.environ.get("C9_NM"):
        rows.append(ClaimResult.not_measured("C9", "c/d", 0.0, ">", os.environ["C9_NM"], check="score"))
    claim_result(rows)
    assert_holds(rows, strict=findings_session.options.strict)
'''


C9_VARIABLES = ("C9_VALUE", "C9_VALUE_0", "C9_VALUE_1", "C9_SEEDS", "C9_CASE", "C9_NM")


@pytest.fixture
def tmp_path(pytester: pytest.Pytester) -> Path:
    """The inner run's folder (its rootdir: it holds an empty conftest.py and the C9 claim file)."""
    pytester.makeconftest("")
    pytester.makepyfile(test_c9=CLAIM_FILE)
    return pytester.path


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., SimpleNamespace]:
    """``run(*args, **C9 variables)``: the C9 claim file under the harness plugin, in this process."""
    monkeypatch.delenv("HARNESS_FINDINGS_DIR", raising=False)

    def go(*args: str, **env: str) -> SimpleNamespace:
        with monkeypatch.context() as m:
            for k in C9_VARIABLES:
                m.delenv(k, raising=False)
            for k, v in env.items():
                m.setenv(k, v)
            r = pytester.runpytest("-p", "no:cacheprovider", "-q", "test_c9.py", "--findings-dir",
                                   str(tmp_path / "out"), *args)
        return SimpleNamespace(returncode=int(r.ret), stdout=r.stdout.str(), stderr=r.stderr.str())

    return go


def test_summary_table_and_files(run, tmp_path):
    r = run("--harness-run-id", "r1", C9_VALUE="0.1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "harness findings" in r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith("C9"))
    assert line.split()[:4] == ["C9", "a/b", "ratio", "0.1"] and "PASS" in line
    data = json.loads((tmp_path / "out" / "tiny" / "r1.json").read_text())
    assert [x["measured"] for x in data["results"]] == [0.1, 0.1]
    assert (tmp_path / "out" / "tiny" / "r1.md").is_file()


def test_baseline_compare_fail(run, tmp_path):
    assert run("--harness-run-id", "base", C9_VALUE="0.1").returncode == 0
    base = str(tmp_path / "out" / "tiny" / "base.json")
    ok = run("--findings-baseline", base, "--harness-run-id", "r2", C9_VALUE="0.12")
    assert ok.returncode == 0 and "no regression against" in ok.stdout, ok.stdout
    moved = run("--findings-baseline", base, "--harness-run-id", "r3", C9_VALUE="0.2")
    assert moved.returncode == 1, moved.stdout  # every test passed: the baseline fails the session, and says so
    assert "Findings have regressed" in moved.stdout and "although the tests passed" in moved.stdout
    assert "+100.0%; tolerance 50%" in moved.stdout
    # fail -> pass is an improvement: reported, the session passes unless --findings-strict
    bad = run("--harness-run-id", "bad", C9_VALUE="0.3")
    assert bad.returncode == 1 and "FAILED test_c9.py::test_c9" in bad.stdout, bad.stdout  # -rf names it
    worse = str(tmp_path / "out" / "tiny" / "bad.json")
    better = run("--findings-baseline", worse, "--harness-run-id", "r4", C9_VALUE="0.1")
    assert better.returncode == 0 and "improved: C9 ratio [a/b]: verdict fail -> pass" in better.stdout, better.stdout
    strict = run("--findings-baseline", worse, "--findings-strict", "--harness-run-id", "r5", C9_VALUE="0.1")
    assert strict.returncode == 1 and "(--findings-strict)" in strict.stdout, strict.stdout


def test_seeds_that_disagree_are_inconclusive_and_fail_only_when_strict(run, tmp_path):
    r = run("--harness-run-id", "s", C9_SEEDS="1", C9_VALUE_0="0.1", C9_VALUE_1="0.3")
    assert r.returncode == 0, r.stdout
    assert "spread across training seeds" in r.stdout and "0: 0.1, 1: 0.3" in r.stdout
    assert "inconclusive: C9 ratio on a/b: measured 0.2 (mean of 2 seeds, 95% interval [-1.071, 1.471]" in r.stdout
    assert "findings: 0 pass, 0 fail, 1 inconclusive, 0 not measured" in r.stdout
    strict = run("--harness-run-id", "s2", "--findings-strict", C9_SEEDS="1", C9_VALUE_0="0.1", C9_VALUE_1="0.3")
    assert strict.returncode == 1 and "inconclusive (fails: --findings-strict)" in strict.stdout, strict.stdout


def test_an_inconclusive_case_passes_with_a_warning_and_fails_under_strict(run, tmp_path):
    r = run("--harness-run-id", "c", C9_CASE="0.2,0.24")  # both < 0.25, the threshold inside the interval
    assert r.returncode == 0, r.stdout
    assert "InconclusiveWarning: inconclusive: C9 ratio on c/d: measured 0.22 (mean of 2 seeds, 95% interval " \
           "[-0.03412, 0.4741]" in r.stdout, r.stdout
    assert "findings: 1 pass, 0 fail, 1 inconclusive, 0 not measured" in r.stdout
    data = json.loads((tmp_path / "out" / "tiny" / "c.json").read_text())
    assert data["counts"] == {"pass": 1, "fail": 0, "inconclusive": 1, "not measured": 0}
    assert "findings: 1 pass, 0 fail, 1 inconclusive, 0 not measured" in (tmp_path / "out" / "tiny" / "c.md").read_text()
    strict = run("--harness-run-id", "c2", "--findings-strict", C9_CASE="0.2,0.24")
    assert strict.returncode == 1 and "FAILED test_c9.py::test_c9_case" in strict.stdout, strict.stdout
    assert "claim does not hold (--findings-strict: inconclusive fails)" in strict.stdout
    fail = run("--harness-run-id", "c3", C9_CASE="0.3,0.301")  # both fail, clear of the threshold: a failure
    assert fail.returncode == 1 and "FAILED test_c9.py::test_c9_case" in fail.stdout, fail.stdout
    assert "findings: 1 pass, 1 fail, 0 inconclusive, 0 not measured" in fail.stdout


def test_not_measured_rows_show_with_their_reason_and_never_fail(run, tmp_path):
    r = run("--harness-run-id", "n", C9_CASE="0.1,0.1001", C9_NM="no BERTScore encoder offline")
    assert r.returncode == 0, r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith("C9") and "score" in l)
    assert line.split()[:4] == ["C9", "c/d", "score", "-"] and "NOT MEASURED" in line
    assert "not measured: C9 score [c/d]: no BERTScore encoder offline" in r.stdout
    assert "findings: 2 pass, 0 fail, 0 inconclusive, 1 not measured" in r.stdout
    data = json.loads((tmp_path / "out" / "tiny" / "n.json").read_text())
    [nm] = [c for c in data["checks"] if c["verdict"] == "not measured"]
    assert nm["check"] == "score" and nm["note"] == "no BERTScore encoder offline" and nm["n"] == 0
    assert [x["verdict"] for x in data["results"] if x["check"] == "score"] == ["not measured"]
    md = (tmp_path / "out" / "tiny" / "n.md").read_text()
    assert "| C9 | c/d | score | - |" in md and "- C9 score [c/d]: no BERTScore encoder offline" in md


@pytest.mark.parametrize("args,message", [
    (["--findings-baseline", "missing.json"], "--findings-baseline missing.json: no such findings file"),
    (["--harness-seeds", "0"], "--harness-seeds must be at least 1"),
    (["--harness-plan", "nope.toml"], "nope.toml: no such plan file"),
    (["--harness-plan", str(Path(__file__).resolve().parents[2] / "fixtures" / "plans" / "tiny.toml"),
      "--harness-variant", "nope"], "no variant 'nope'; known: c4_bf16"),
])
def test_conflicting_options_are_usage_errors(run, args, message):
    r = run(*args)
    assert r.returncode == 4, r.stdout + r.stderr  # pytest's usage-error exit code
    assert message in r.stderr


def test_baseline_of_another_plan_is_compared_and_named(run, tmp_path):
    plan = str(Path(__file__).resolve().parents[2] / "fixtures" / "plans" / "tiny.toml")
    assert run("--harness-run-id", "base", "--harness-plan", plan).returncode == 0
    other = tmp_path / "other.json"
    data = json.loads((tmp_path / "out" / "tiny" / "base.json").read_text())
    assert data["meta"]["base"].startswith("tiny-") and data["meta"]["recipe"]["dpo"]["learning_rate"] == 1e-5
    data["meta"].update(plan="smollm2", base="SmolLM2-135M-Instruct-Q8_0.gguf")
    for x in data["results"]:  # both rows of the check (its mean is compared)
        x["measured"] = 0.3  # another model measured 0.3: a move, the finding, not a failure
    other.write_text(json.dumps(data))
    r = run("--findings-baseline", str(other), "--harness-run-id", "x", "--harness-plan", plan)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "plan 'tiny' on base 'tiny-" in r.stdout and "plan 'smollm2' on base 'SmolLM2-135M" in r.stdout
    assert "moved beyond tolerance: C9 ratio [a/b]: measured 0.3 -> 0.1" in r.stdout


def test_seeds_with_a_plan_that_trains_nothing_is_a_usage_error(run, tmp_path):
    root = Path(__file__).resolve().parents[2]
    plan = tmp_path / "baseonly.toml"
    plan.write_text(f'extends = "{root / "fixtures" / "plans" / "tiny.toml"}"\n[[nodes]]\nname = "base"\nmethod = "base"\n',
                    encoding="utf-8")
    r = run("--harness-plan", str(plan), "--harness-seeds", "2")
    assert r.returncode == 4 and "trains no node, so it cannot be reseeded" in r.stderr, r.stderr


def test_a_variant_applies_and_its_name_is_in_the_findings(run, tmp_path):
    tiny = Path(__file__).resolve().parents[2] / "fixtures" / "plans" / "tiny.toml"
    plan = tmp_path / "tiny.toml"
    plan.write_text(f'extends = "{tiny}"\nname = "tiny"\n[variants.hot]\ndpo = {{ learning_rate = 1e-4 }}\n',
                    encoding="utf-8")
    r = run("--harness-run-id", "v", "--harness-plan", str(plan), "--harness-variant", "hot")
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((tmp_path / "out" / "tiny" / "v.json").read_text())["meta"]
    assert meta["variant"] == "hot" and meta["recipe"]["dpo"]["learning_rate"] == 1e-4
    assert "- variant: `hot`" in (tmp_path / "out" / "tiny" / "v.md").read_text()


def test_a_malformed_harness_variable_is_a_usage_error_naming_it(run):
    """The plugin reads the environment once (harness.config.from_env); a bad value stops the session."""
    r = run(HARNESS_JUDGE_LIMIT="ten")
    assert r.returncode == 4 and "HARNESS_JUDGE_LIMIT='ten': not an integer" in r.stderr, r.stdout + r.stderr


def test_the_project_root_is_not_moved_by_an_absolute_path_on_the_command_line(tmp_path):
    """pytest makes the common folder of the command line's paths its rootdir when no ini file is above it:
    ``--findings-baseline /tmp/x.json`` gave rootdir /tmp, and the default claims were looked for in
    /tmp/fixtures/claims. The plugin reads its defaults from the folder that holds fixtures/."""
    from harness.pytest_plugin import project_root

    project = Path(__file__).resolve().parents[2]
    moved = SimpleNamespace(rootpath=tmp_path, invocation_params=SimpleNamespace(dir=project))
    assert project_root(moved) == project
    here = SimpleNamespace(rootpath=project, invocation_params=SimpleNamespace(dir=tmp_path))
    assert project_root(here) == project
