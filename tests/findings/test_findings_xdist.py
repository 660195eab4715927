"""Claims over workers (pytest-xdist): each worker pinned to its device, the rows merged by the controller into
one findings file and one summary that equal the single-process run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.findings import ClaimResult
from harness.findings.merge import group_of, merge, payload, worker_gpu
from harness.findings.session import FindingsSession, Options

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("xdist", reason="pytest-xdist is not installed (the test extra)")


def session(tmp_path: Path, slot: str | None = None) -> FindingsSession:
    return FindingsSession(Options(root=ROOT, plan_path=ROOT / "fixtures" / "plans" / "tiny.toml",
                                   findings_dir=tmp_path, slot=slot), say=lambda m: None)


def test_worker_k_takes_gpu_k_mod_n():
    assert [worker_gpu(f"gw{k}", ["0", "1"]) for k in range(4)] == ["0", "1", "0", "1"]
    assert worker_gpu("gw2", ["3", "5", "7"]) == "7"
    assert worker_gpu("gw0", []) is None and worker_gpu("master", ["0"]) is None


def test_cases_of_one_spec_share_a_group_and_controls_group_by_variant(tmp_path):
    cases = session(tmp_path).cases()
    groups = {c.id: group_of(c) for c in cases}
    assert groups["C1-dpo_d0/sft_d0"] == groups["C1-dpo_d1/sft_d1"] == "claim:C1"
    assert groups["C1-dpo_d0/sft_d0-control:c1_dpo_at_sft_lr"] == "variant:c1_dpo_at_sft_lr"
    assert groups["C5-dpo_d1@sft_d1/sft_d1"] != groups["C2-sft_d0"]


def test_rows_from_workers_merge_into_one_sorted_list(tmp_path):
    rows = [ClaimResult.make("C2", f"sft_d{i}", 1.0 + i, 1.0, ">", check="ratio") for i in range(3)]
    workers = []
    for wid, part in (("gw0", [rows[2], rows[0]]), ("gw1", [rows[1]])):
        w = session(tmp_path, slot={"gw0": "0", "gw1": "1"}[wid])
        w.record(part)
        workers.append(json.loads(json.dumps(payload(w, wid))))  # what crosses the process boundary
    controller = session(tmp_path)
    for out in workers:
        merge(controller, [out])
    assert controller.results == rows
    assert controller.merged_meta["workers"] == {"gw0": "0", "gw1": "1"}
    assert controller.meta()["workers"] == {"gw0": "0", "gw1": "1"}


def run_claims(tmp_path: Path, run: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HARNESS_DEVICES": "a,b", "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "claims/test_claims.py", "-k", "C5", "-p", "no:cacheprovider",
                           "--harness-device", "cpu", "--findings-dir", str(tmp_path), "--harness-run-id", run, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_two_workers_give_the_single_process_findings(tmp_path):
    """C5 and its negative control on the tiny plan (nodes cached in the default fixtures dir, as the claims
    run uses them): -n 2 with two fake devices, against -n 0."""
    two = run_claims(tmp_path, "n2", "-n", "2")
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = run_claims(tmp_path, "n0", "-n", "0")
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    folder = tmp_path / "tiny"
    assert sorted(p.name for p in folder.glob("*.json")) == ["n0.json", "n2.json"], "one findings file per run"
    a, b = (json.loads((folder / f"{r}.json").read_text()) for r in ("n0", "n2"))
    key = lambda r: (r["claim"], r["pair"], r["check"])  # noqa: E731
    assert a["results"] and sorted(a["results"], key=key) == sorted(b["results"], key=key)
    assert b["meta"]["workers"] == {"gw0": "a", "gw1": "b"}
    by_node = lambda p: (p["variant"] or "", p["node"])  # noqa: E731
    assert a["preflight"] and sorted(a["preflight"], key=by_node) == sorted(b["preflight"], key=by_node)
    assert {p["variant"] for p in b["preflight"]} == {None, "c5_zero_step_dpo"}  # the workers' pre-flights, merged
    # the same metadata but the run's own: its id, its workers and its wall times (timing)
    assert {k: v for k, v in a["meta"].items() if k not in ("run", "timing")} == {
        k: v for k, v in b["meta"].items() if k not in ("run", "workers", "timing")}
    assert two.stdout.count("harness findings") == 1 and "[c5_zero_step_dpo]" in two.stdout
    assert "findings written: " in two.stdout and str(folder / "n2.json") in two.stdout
