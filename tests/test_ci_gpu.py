"""``.ci/gpu``, the one GPU entry point, on the CPU: its phases (dry run), its refusal without CUDA, and the
runner and summary on real pytest runs of a small generated test file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "gpu"


def _load():
    loader = SourceFileLoader("ci_gpu", str(SCRIPT))
    module = module_from_spec(spec_from_loader("ci_gpu", loader))
    sys.modules["ci_gpu"] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


gpu = _load()


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_dry_run_lists_every_phase_with_its_command(tmp_path):
    out = _run(str(tmp_path / "o"), "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    names = [re.match(r"\d+\. ([\w-]+):", l).group(1) for l in lines if re.match(r"\d+\. ", l)]
    assert names == ["cuda-tests", "claims-tiny", "fetch-smollm2", "claims-smollm2"]
    assert all(t in lines[0] for t in gpu.CUDA_TESTS)
    for line in (lines[1], lines[3]):
        assert "claims -m gpu --harness-device cuda" in line and f"--findings-dir {tmp_path / 'o' / 'findings'}" in line
    assert "--harness-plan fixtures/plans/tiny.toml" in lines[1]
    assert "--harness-plan fixtures/plans/smollm2.toml" in lines[3] and "--harness-base" not in lines[3]
    assert not (tmp_path / "o").exists(), "a dry run writes nothing"


def test_dry_run_with_another_base(tmp_path):
    model = tmp_path / "My-Model.gguf"
    model.write_bytes(b"GGUF")
    out = _run(str(tmp_path / "o"), "--base", str(model), "--variant", "cudagraphs", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "fetch-" not in out.stdout  # the base is given: nothing to fetch
    real = out.stdout.splitlines()[2]
    assert f"--harness-base {model}" in real and "--harness-variant cudagraphs" in real


def test_only_picks_phases_and_a_real_base_keeps_its_fetch(tmp_path):
    out = _run(str(tmp_path / "o"), "--only", "cuda-tests,claims-smollm2", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert re.findall(r"^\d+\. ([\w-]+):", out.stdout, re.M) == ["cuda-tests", "fetch-smollm2", "claims-smollm2"]
    out = _run("--only", "claims-gemma3", "--dry-run")
    assert out.returncode == 2 and "no phase claims-gemma3 (phases: cuda-tests, claims-tiny" in out.stderr


def test_seeds_go_to_the_real_base_phase_only(tmp_path):
    out = _run(str(tmp_path / "o"), "--seeds", "3", "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "--harness-seeds 3" in lines[-2] and not any("--harness-seeds" in line for line in lines[:-2])
    out = _run("--seeds", "0", "--dry-run")
    assert out.returncode == 2 and "--seeds 0: must be at least 1" in out.stderr


def test_a_missing_plan_is_refused_with_its_name():
    out = _run("--plan", "fixtures/plans/nope.toml", "--dry-run")
    assert out.returncode == 2 and "--plan fixtures/plans/nope.toml: no such plan file" in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_exits_2_saying_why(tmp_path):
    out = _run(str(tmp_path / "o"))
    assert out.returncode == 2
    assert "sees no CUDA device" in out.stderr and "--dry-run" in out.stderr
    assert not (tmp_path / "o").exists()


def test_the_cuda_test_list_holds_every_test_that_skips_without_cuda():
    """A test file (benchmarks aside) with a skip on ``cuda.is_available()`` is one of CUDA_TESTS."""
    found = {str(f.relative_to(ROOT)) for f in (ROOT / "tests").rglob("test_*.py")
             if "benchmarks" not in f.parts and "skip" in (text := f.read_text())
             and re.search(r"\bnot [^\n]*cuda\.is_available\(\)", text)}
    assert found, "the search sees no CUDA skip at all"
    assert found <= set(gpu.CUDA_TESTS), sorted(found - set(gpu.CUDA_TESTS))
    assert all((ROOT / t).is_file() for t in gpu.CUDA_TESTS)


def test_every_fetchable_plan_is_known_to_fetch_gguf():
    fetch = (ROOT / ".ci" / "fetch-gguf").read_text()
    for name in gpu.FETCHABLE:
        assert re.search(rf"^\s+{name}\) fetch ", fetch, re.M), name
        assert (ROOT / "fixtures" / "plans" / f"{name}.toml").is_file(), name


def test_phases_run_and_the_summary_counts_tests_and_verdicts(tmp_path):
    tests = tmp_path / "t" / "test_sample.py"
    tests.parent.mkdir()
    tests.write_text("import pytest\n\ndef test_ok():\n    pass\n\ndef test_skip():\n    pytest.skip('no')\n\n"
                     "def test_bad():\n    assert 1 == 2\n")
    out = tmp_path / "out"
    findings = out / "findings" / "smollm2"
    findings.mkdir(parents=True)
    # a findings file from before the checks were counted across seeds (19 pass, 7 fail, counted by row), and
    # one with counts (three seeds; negative controls counted apart)
    shutil.copy(ROOT / "fixtures" / "baselines" / "smollm2-h200-compiled.json", findings / "gpu-x.json")
    shutil.copy(ROOT / "fixtures" / "baselines" / "smollm2-h200.json", findings / "gpu-y.json")
    pytest_cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    phases = [
        gpu.Phase("good", pytest_cmd + [f"{tests}::test_ok", f"{tests}::test_skip",
                                        "--junitxml", str(out / "junit" / "good.xml")], run_id="gpu-x"),
        gpu.Phase("bad", pytest_cmd + [str(tests), "--junitxml", str(out / "junit" / "bad.xml")]),
        gpu.Phase("fetch", [sys.executable, "-c", "print('noise'); print('/some/gguf')"], captures_gguf_dir=True),
        gpu.Phase("env", [sys.executable, "-c", "import os, sys; sys.exit(os.environ['HARNESS_GGUF_DIR'] "
                                                "!= '/some/gguf' or 'HARNESS_PLAN' in os.environ)"]),
    ]
    said: list[str] = []
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HARNESS_PLAN", "stray.toml")  # never reaches a phase
        results = gpu.run_phases(phases, out, say=said.append)
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[0].tests == {"passed": 1, "failed": 0, "errors": 0, "skipped": 1}
    assert results[1].tests == {"passed": 1, "failed": 1, "errors": 0, "skipped": 1}
    assert list(results[0].verdicts.items()) == [("pass", 19), ("fail", 7)] and results[1].verdicts == {}
    counted = gpu.verdict_counts(out / "findings", "gpu-y")
    assert list(counted)[:3] == ["pass", "fail", "inconclusive"] and counted["control fail"] >= 3
    assert sum(v for k, v in counted.items() if not k.startswith("control")) == len(
        json.loads((findings / "gpu-y.json").read_text())["checks"]) - sum(
        v for k, v in counted.items() if k.startswith("control"))
    assert "test_bad" in (out / "logs" / "bad.log").read_text()
    text = gpu.summary(results, out)
    rows = {line.split()[0]: line for line in text.splitlines()}
    assert "passed" in rows["good"] and "1 passed, 1 skipped" in rows["good"] and "19 pass, 7 fail" in rows["good"]
    assert "FAILED (1)" in rows["bad"] and "1 failed" in rows["bad"]
    assert "HARNESS_GGUF_DIR=/some/gguf" in rows["fetch"]
    assert text.splitlines()[-1].startswith("gpu: 3 of 4 phases passed") and "failed: bad" in text
    gpu.write_summary(results, out, text)
    doc = json.loads((out / "summary.json").read_text())
    assert doc["ok"] is False and [p["phase"] for p in doc["phases"] if not p["ok"]] == ["bad"]
    assert (out / "summary.txt").read_text() == text + "\n"


def _junit(path, failed):
    cases = "".join(f'<testcase classname="{cls}" name="{name}"><failure message="x"/></testcase>'
                    for cls, name in failed)
    path.write_text(f'<testsuites><testsuite name="pytest" tests="9">{cases}'
                    '<testcase classname="claims.test_claims" name="test_claim[C1-dpo_d0/sft_d0]"/></testsuite></testsuites>')
    return path


def test_a_claims_phase_failing_only_as_its_baseline_passes_and_a_new_failure_does_not(tmp_path):
    """A real model's failing claims are findings: the phase passes when its failures are the baseline's own
    (the stored SmolLM2 run against itself), and fails on a non-claim failure or a check the baseline passes."""
    baseline = ROOT / "fixtures" / "baselines" / "smollm2-h200.json"
    findings = tmp_path / "findings" / "smollm2"
    findings.mkdir(parents=True)
    shutil.copy(baseline, findings / "gpu-s.json")
    known = [("claims.test_claims", "test_claim[C3-dpo_d0@sft_d1/sft_d1]"),
             ("claims.test_claims", "test_claim[C4-dpo_d0/dpo_d1/sft_d0/sft_d1]")]
    said = gpu.known_failures(tmp_path / "findings", "gpu-s", str(baseline), _junit(tmp_path / "a.xml", known))
    assert said.startswith("findings as the baseline: 2 case(s) fail"), said
    other = known + [("tests.test_x", "test_crash")]
    assert gpu.known_failures(tmp_path / "findings", "gpu-s", str(baseline), _junit(tmp_path / "b.xml", other)) == ""
    doc = json.loads(baseline.read_text())
    for row in doc["results"]:  # C1 on dpo_d0/sft_d0 still passes, far outside the baseline's seed interval
        if row["claim"] == "C1" and row["pair"] == "dpo_d0/sft_d0":
            row.update(measured=0.2, margin=0.05)
    (findings / "gpu-s.json").write_text(json.dumps(doc))
    assert gpu.known_failures(tmp_path / "findings", "gpu-s", str(baseline), _junit(tmp_path / "c.xml", known)) == ""
