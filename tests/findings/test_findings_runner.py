"""The spec-driven runner end to end on the CPU tiny graph, in a child pytest: a user's own claims
folder and a plan with another name; ``-k`` matching no claim; readable output (no training logs
in the report of a failing check); the session object in pytest's stash.

The tiny graph comes from the shared fixture cache (``.fixtures``, or ``HARNESS_FIXTURES_DIR``):
a renamed plan with the same recipe has the same node keys, so nothing is retrained here when the
claims suite (or an earlier test) built it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Every test here reads (and on a cold cache builds) the shared tiny graph and writes its session log there.
pytestmark = pytest.mark.shared_cache

ROOT = Path(__file__).resolve().parents[2]
CLAIMS = ROOT / "fixtures" / "claims"
TINY = ROOT / "fixtures" / "plans" / "tiny.toml"


def cache() -> Path:
    return Path(os.environ.get("HARNESS_FIXTURES_DIR") or ROOT / ".fixtures")


def child(tmp_path: Path, *args: str, fixtures: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HARNESS_FINDINGS_DIR", None)
    fixtures = str(fixtures or cache())
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(ROOT / "claims" / "test_claims.py"),
                           "--rootdir", str(ROOT), "--fixtures-dir", fixtures, "--harness-device", "cpu",
                           "--findings-dir", str(tmp_path / "out"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)


def own_claims(tmp_path: Path, threshold: str | None = None) -> Path:
    """A user's folder holding a copy of C1 under another id (optionally with another threshold)."""
    folder = tmp_path / "my_claims"
    folder.mkdir()
    text = (CLAIMS / "c1_dpo_smaller.toml").read_text(encoding="utf-8").replace('id = "C1"', 'id = "MY1"')
    if threshold is not None:
        text = text.replace("threshold = 0.25", f"threshold = {threshold}")
    (folder / "my1.toml").write_text(text, encoding="utf-8")
    return folder


def renamed_plan(tmp_path: Path) -> Path:
    plan = tmp_path / "mine.toml"
    plan.write_text(f'extends = "{TINY}"\nname = "mine"\n', encoding="utf-8")
    return plan


def test_own_claims_folder_runs_under_a_plan_with_another_name(tmp_path):
    folder, plan = own_claims(tmp_path), renamed_plan(tmp_path)
    r = child(tmp_path, "--claims-dir", str(folder), "--harness-plan", str(plan), "--harness-run-id", "r",
              "-k", "not control")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "4 passed" in r.stdout, r.stdout[-2000:]
    data = json.loads((tmp_path / "out" / "mine" / "r.json").read_text())
    assert {x["claim"] for x in data["results"]} == {"MY1"} and len(data["results"]) == 4
    assert data["meta"]["plan"] == "mine" and data["meta"]["base"].startswith("tiny-")
    assert data["meta"]["claims_dir"] == str(folder) and "versions" in data["meta"]
    assert "base_identity" in data["meta"] and data["meta"]["recipe"]["sft"]["learning_rate"] == 1e-4


def test_a_failing_check_shows_rows_reason_and_logs_not_training_output(tmp_path):
    # A threshold no DPO/SFT ratio meets: the check fails, on purpose, to read its report. The plan
    # trains on 4 rows (seconds; the tiny base is shared), so the session really trains two nodes.
    folder = own_claims(tmp_path, threshold="0.001")
    plan = tmp_path / "small.toml"
    plan.write_text(f'extends = "{TINY}"\nname = "small"\n\n[data]\nlimit = 4\n', encoding="utf-8")
    from harness.train import build, load_plan

    build(load_plan(ROOT / "fixtures" / "plans" / "tiny.toml"), only="base", device="cpu", progress=False,
          fixtures_dir=cache())  # the shared tiny base (cached after its first build)
    store = tmp_path / "fixtures"
    for base in (cache() / "nodes").glob("base-*"):  # the shared tiny base(s); the trained nodes are new
        shutil.copytree(base, store / "nodes" / base.name)
    r = child(tmp_path, "--claims-dir", str(folder), "--harness-plan", str(plan), "--harness-run-id", "fail1",
              "-k", "MY1 and dpo_d0/sft_d0 and not control", fixtures=store)
    assert r.returncode == 1, r.stdout[-3000:]
    out = r.stdout
    log = store / "logs" / "fail1.log"
    assert f"logs: {log}" in out and "Loading weights" in log.read_text(encoding="utf-8")
    # the build's progress, on the terminal while pytest captures output: before and after each node
    assert "small seed 0: [2/3] building sft_d0 ..." in out and "small seed 0: [3/3] dpo_d0 built in" in out
    assert "FAILED" in out and "test_claim[MY1-dpo_d0/sft_d0]" in out  # the short summary names it
    assert "claim does not hold" in out and "needs < 0.001" in out
    assert "reason for L2(dpo)/L2(sft)'s threshold" in out and "logs:" in out
    assert "Loading weights" not in out and "'loss':" not in out  # training output went to the log file


def test_k_matching_no_claim_lists_the_claim_ids(tmp_path):
    r = child(tmp_path, "-k", "C99")
    assert r.returncode == 5, r.stdout  # pytest: no tests ran
    assert "-k 'C99' matched no claim case" in r.stdout
    assert "C1, C2, C3, C4, C5, C6, C7, C8" in r.stdout and "C1-dpo_d0/sft_d0" in r.stdout


def test_a_bad_spec_in_the_claims_dir_names_file_and_field(tmp_path):
    folder = own_claims(tmp_path)
    bad = folder / "my1.toml"
    bad.write_text(bad.read_text(encoding="utf-8").replace('comparator = "<"', 'comparator = "<<"'), encoding="utf-8")
    r = child(tmp_path, "--claims-dir", str(folder), "--co")
    assert r.returncode != 0
    assert f"{bad}: field 'check[0].comparator'" in r.stdout + r.stderr


def test_harness_base_swaps_the_base_without_editing_the_plan(tmp_path):
    """``--harness-base FOLDER``: the tiny plan's recipe on another base (here a model folder: the tiny
    base saved elsewhere), on 4 training rows so that the two nodes train in seconds."""
    from harness.train import build, load_plan

    tiny = load_plan(ROOT / "fixtures" / "plans" / "tiny.toml")
    base = build(tiny, only="base", device="cpu", progress=False, fixtures_dir=cache()).path("base")
    other = tmp_path / "My-Base-1"
    shutil.copytree(base, other, ignore=shutil.ignore_patterns("adapter", "log.json", "meta.json", "*.png"))
    plan = tmp_path / "tiny.toml"
    plan.write_text(f'extends = "{TINY}"\nname = "tiny"\n\n[data]\nlimit = 4\n', encoding="utf-8")
    r = child(tmp_path, "--harness-plan", str(plan), "--harness-base", str(other), "--harness-run-id", "swap",
              "-k", "C2 and sft_d0", fixtures=tmp_path / "fixtures")
    out = r.stdout
    # C2 on sft_d0 is a known deviation of the tiny plan on the tiny base: on another base it is not.
    assert "XFAIL" not in out and "known deviation" not in out, out[-3000:]
    data = json.loads((tmp_path / "out" / "tiny@My-Base-1" / "swap.json").read_text())
    assert data["meta"]["plan"] == "tiny" and data["meta"]["base"] == "My-Base-1"
    assert data["meta"]["base_model"] == str(other) and data["meta"]["base_identity"]["key"]
    assert {x["claim"] for x in data["results"]} == {"C2"}
    assert (ROOT / "fixtures" / "plans" / "tiny.toml").read_text(encoding="utf-8").count('model = "tiny"') == 1


def test_a_negative_control_under_which_the_claim_still_holds_is_red(tmp_path):
    """A control variant that changes nothing (same recipe, so the cached nodes): the claim holds there,
    so the control case fails, saying its checks cannot tell a broken setup from a healthy one."""
    folder = own_claims(tmp_path)
    spec = folder / "my1.toml"
    spec.write_text(spec.read_text(encoding="utf-8").replace('variant = "c1_dpo_at_sft_lr"', 'variant = "same"'),
                    encoding="utf-8")
    plan = tmp_path / "tiny.toml"
    plan.write_text(f'extends = "{TINY}"\nname = "tiny"\n'
                    '\n[variants.same]\ndpo = { learning_rate = 1e-5 }\nonly = ["dpo_d0", "sft_d0"]\n', encoding="utf-8")
    r = child(tmp_path, "--claims-dir", str(folder), "--harness-plan", str(plan), "-k", "control")
    assert r.returncode == 1, r.stdout[-3000:]
    assert "FAILED" in r.stdout and "test_claim[MY1-dpo_d0/sft_d0-control:same]" in r.stdout
    assert "negative control 'same' of MY1: the claim still holds" in r.stdout


def test_importing_findings_imports_no_engine():
    code = ("import sys, harness.findings, harness.findings.session, harness.findings.runner; "
            "bad = sorted(m for m in sys.modules if m.startswith(('harness.evaluate', 'harness.train', 'trl'))); "
            "assert not bad, bad; "
            "harness.findings.load_specs('fixtures/claims'); "
            "assert 'harness.findings.outputs' in sys.modules  # a similarity/judge spec loads its provider")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_zoo_cases_come_from_the_claims_folder(tmp_path):
    """claims/test_eos_learned.py runs the zoo tokenizers of the --claims-dir's specs, not the repo's C6."""
    folder = tmp_path / "my_claims"
    folder.mkdir()
    text = (CLAIMS / "c6_eos_learned.toml").read_text(encoding="utf-8")
    text = text.replace('id = "C6"', 'id = "MY6"').replace('zoo = ["vicuna-1.5"]', 'zoo = ["mine-a", "mine-b"]')
    (folder / "my6.toml").write_text(text, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--co",
                        str(ROOT / "claims" / "test_eos_learned.py"), "--rootdir", str(ROOT),
                        "--claims-dir", str(folder)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    ids = [line.split("[", 1)[1].rstrip("]") for line in r.stdout.splitlines() if "::test_eos_learned" in line]
    assert ids == ["MY6-zoo:mine-a", "MY6-zoo:mine-b"]
