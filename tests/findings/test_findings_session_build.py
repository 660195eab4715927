"""The claims session builds the nodes its cases need in one build of all their graphs, and the findings report
shows each trained node's pre-flight. Real training in child pytests on a micro plan whose two
trained nodes are both children of the base, so they are ready at once:

- serial (the CPU default, one job): the node built earlier with ``--no-preflight`` reads "skipped",
  the one the session trains reads its pre-flight result, in the JSON, the Markdown and the summary;
- two fake device slots (``HARNESS_DEVICES=a,b``): both nodes train at the same time, one per slot,
  each with its progress lines, and the findings equal the serial run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.train import build, load_plan

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"

SPEC = '''id = "MY1"
kind = "weights"
statement = "DPO changes weights less than SFT (here only a reading: any ratio holds)."
reference_table = "none"
roles = ["dpo", "sft"]
negative_control = "none: a test of how the session builds"
pairs = [{ dpo = "dpo_d1", sft = "sft_d1" }]

[[check]]
label = "L2(dpo)/L2(sft)"
statistic = "l2_ratio"
params = { num = ["parent(dpo)", "dpo"], den = ["parent(sft)", "sft"] }
comparator = "<"
threshold = 1000.0
reference_value = 0.04
tolerance = 0.5
reason = "a test of how the session builds, not of the claim"
'''

def node_spec(pairs: str) -> str:
    """SPEC turned into a one-role claim (depth trend of one node's task vector) over ``pairs``."""
    return (SPEC.replace('id = "MY1"', 'id = "MY2"').replace('roles = ["dpo", "sft"]', 'roles = ["node"]')
            .replace('pairs = [{ dpo = "dpo_d1", sft = "sft_d1" }]', f"pairs = {pairs}")
            .replace('statistic = "l2_ratio"', 'statistic = "depth_spearman"')
            .replace('params = { num = ["parent(dpo)", "dpo"], den = ["parent(sft)", "sft"] }',
                     'params = { diff = ["parent(node)", "node"] }'))



@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """The plan (micro's base; sft_d1 and dpo_d1 on it) and a claims folder reading both nodes."""
    d = tmp_path_factory.mktemp("session_build")
    text = MICRO.read_text(encoding="utf-8").split("[[nodes]]", 1)[0].replace('name = "micro"', 'name = "mb"')
    text += ('[[nodes]]\nname = "base"\nmethod = "base"\n\n[[nodes]]\nname = "sft_d1"\nmethod = "sft"\n'
             'dataset = "d1"\nparent = "base"\n\n[[nodes]]\nname = "dpo_d1"\nmethod = "dpo"\ndataset = "d1"\n'
             'parent = "base"\n')
    (d / "mb.toml").write_text(text, encoding="utf-8")
    (d / "claims").mkdir()
    (d / "claims" / "my1.toml").write_text(SPEC, encoding="utf-8")
    return {"dir": d, "plan": d / "mb.toml", "claims": d / "claims"}


def claims_run(setup: dict[str, Path], fixtures: Path, out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The claims of ``setup`` in a pytest of their own (without pytest-xdist unless ``args`` ask for workers)."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    for k in ("HARNESS_FINDINGS_DIR", "HARNESS_DEVICES"):
        if k not in env:
            e.pop(k, None)
    workers = "-n" in args
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           *([] if workers else ["-p", "no:xdist"]), *args,
                           str(ROOT / "claims" / "test_claims.py"), "--rootdir", str(ROOT),
                           "--fixtures-dir", str(fixtures), "--harness-device", "cpu", "--findings-dir", str(out),
                           "--harness-plan", str(setup["plan"]), "--claims-dir", str(setup["claims"]),
                           "--harness-run-id", "r"],
                          cwd=ROOT, env=e, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def serial(setup) -> dict:
    """sft_d1 built beforehand with --no-preflight; the session trains dpo_d1 (one job, the CPU default)."""
    fx = setup["dir"] / "fx-serial"
    build(load_plan(setup["plan"]), only="sft_d1", fixtures_dir=fx, device="cpu", progress=False, preflight=False)
    r = claims_run(setup, fx, setup["dir"] / "out-serial")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    folder = setup["dir"] / "out-serial" / "mb"
    return {"out": r.stdout, "json": json.loads((folder / "r.json").read_text(encoding="utf-8")),
            "md": (folder / "r.md").read_text(encoding="utf-8"), "fx": fx}


def test_the_findings_show_each_trained_nodes_preflight(serial):
    pf = {p["node"]: p for p in serial["json"]["preflight"]}
    assert set(pf) == {"sft_d1", "dpo_d1"}, serial["json"]["preflight"]  # trained nodes only: not the base
    assert pf["sft_d1"]["status"] == "skipped" and pf["sft_d1"]["verdict"] == "skipped (--no-preflight)"
    meta = json.loads(next((serial["fx"] / "nodes").glob("dpo_d1-*/meta.json")).read_text(encoding="utf-8"))
    codes = [f["code"] for f in meta["preflight"]["findings"]]
    assert pf["dpo_d1"]["status"] == meta["preflight"]["status"] and pf["dpo_d1"]["pipeline"] == "trl-dpo"
    assert pf["dpo_d1"]["verdict"] == ("ok" if not codes else "warnings: " + ", ".join(dict.fromkeys(codes)))
    assert "## Pre-flight per trained node" in serial["md"]
    assert f"| dpo_d1 | trl-dpo | {pf['dpo_d1']['verdict']} |" in serial["md"]
    assert "| sft_d1 | - | skipped (--no-preflight) |" in serial["md"]
    summary = serial["out"][serial["out"].index("pre-flight per trained node"):]
    assert "sft_d1" in summary and "skipped (--no-preflight)" in summary
    assert any(line.split()[:2] == ["dpo_d1", "trl-dpo"] for line in summary.splitlines())
    # the progress lines of the one node the session trained
    assert "mb seed 0: [3/3] building dpo_d1 ..." in serial["out"] and "[3/3] dpo_d1 built in" in serial["out"]
    assert "building sft_d1" not in serial["out"]
    assert "Loading weights" in (serial["fx"] / "logs" / "r.log").read_text(encoding="utf-8")  # training output:
    assert "Loading weights" not in serial["out"]  # in the session's log, not on the terminal


def test_the_findings_time_each_phase_and_each_trained_node(serial):
    """meta.timing: the session's phases, and the build that trained dpo_d1 with that node's figures (its wave,
    train time, tokens/s; MFU n/a on the CPU); the Markdown's Timing section shows them."""
    timing = serial["json"]["meta"]["timing"]
    assert {"build", "diff sources", "statistics (the weight diffs) and verdicts", "report plots"} <= set(timing["phases"]), \
        timing["phases"]
    assert timing["session_s"] >= sum(v for k, v in timing["phases"].items() if k != "report plots")
    (b,) = timing["builds"]
    assert b["graph"] == "mb seed 0" and b["total_s"] >= b["nodes_s"] > 0 and set(b["waves_s"]) == {"1"}
    (n,) = b["nodes"]
    assert n["node"] == "dpo_d1" and n["wave"] == 1 and n["steps"] > 0 and n["tokens_per_s"] > 0
    assert 0 < n["train_call_s"] < n["wall_s"] and n["mfu"] is None and n["lean_steps"] is True
    assert "## Timing" in serial["md"] and "| dpo_d1 | 1 |" in serial["md"] and "| diff sources |" in serial["md"]
    assert "n/a |" in serial["md"]


def test_the_session_builds_all_needed_nodes_at_once_over_device_slots(setup, serial):
    fx = setup["dir"] / "fx-slots"
    r = claims_run(setup, fx, setup["dir"] / "out-slots", HARNESS_DEVICES="a,b")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("fixtures mb seed 0:")]
    at = {key: next(i for i, line in enumerate(lines) if key in line) for key in
          ("building sft_d1", "building dpo_d1", "sft_d1 built in", "dpo_d1 built in", "base built in")}
    # one build of all three: the two children start once the base is built, both before either ends
    assert at["base built in"] < min(at["building sft_d1"], at["building dpo_d1"]), lines
    assert max(at["building sft_d1"], at["building dpo_d1"]) < min(at["sft_d1 built in"], at["dpo_d1 built in"]), lines
    assert "fixtures mb seed 0: [2/3] building sft_d1 ..." in lines and len(lines) == 6, lines
    plan = load_plan(setup["plan"])
    graph = build(plan, only=["sft_d1", "dpo_d1"], fixtures_dir=fx, device="cpu", progress=False)
    assert graph.trained == []
    assert {graph.meta(n)["worker"]["slot"] for n in ("sft_d1", "dpo_d1")} == {"a", "b"}
    data = json.loads((setup["dir"] / "out-slots" / "mb" / "r.json").read_text(encoding="utf-8"))
    got = [(x["claim"], x["pair"], x["check"], x["verdict"]) for x in data["results"]]
    want = [(x["claim"], x["pair"], x["check"], x["verdict"]) for x in serial["json"]["results"]]
    assert got == want and len(got) == 1
    assert data["results"][0]["measured"] == pytest.approx(serial["json"]["results"][0]["measured"], rel=1e-4)
    assert {p["node"]: p["status"] for p in data["preflight"]}["sft_d1"] != "skipped"
    assert "Loading weights" in (fx / "logs" / "r.log").read_text(encoding="utf-8")  # the workers' output too


def test_the_first_case_asks_for_every_planned_cases_nodes_in_one_build(setup, serial, tmp_path):
    """In process, on the serial run's cache (nothing trains): the first prepare() makes one build call for
    the nodes of every planned case; a case whose nodes the plan lacks (it will skip) asks for none."""
    from harness.findings.session import FindingsSession, Options

    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "my1.toml").write_text(SPEC.replace('pairs = [{ dpo = "dpo_d1", sft = "sft_d1" }]',
                                                  'pairs = [{ dpo = "dpo_d0", sft = "sft_d0" }, '
                                                  '{ dpo = "dpo_d1", sft = "sft_d1" }]'), encoding="utf-8")
    (claims / "my2.toml").write_text(node_spec('[{ node = "sft_d1" }, { node = "dpo_d1" }]'), encoding="utf-8")
    said: list[str] = []
    fs = FindingsSession(Options(root=ROOT, plan_path=setup["plan"], plan_given=True, claims_dir=claims,
                                 fixtures_dir=str(serial["fx"]), device="cpu", run="inproc"), say=said.append)
    cases = fs.cases()
    assert [c.id for c in cases] == ["MY1-dpo_d0/sft_d0", "MY1-dpo_d1/sft_d1", "MY2-sft_d1", "MY2-dpo_d1"]
    fs.plan_cases(cases[2:] + cases[:1])  # as after -k "MY2 or dpo_d0": the first case reads sft_d1 only
    fs.prepare(cases[2])
    assert fs.builds.calls == [(("mb", None, 0, "tiny"), ("base", "sft_d1", "dpo_d1"))]
    fs.prepare(cases[3])
    assert len(fs.builds.calls) == 1 and said == []  # all built already: no further build, no progress line
    assert [(p.node, p.status) for p in fs.preflight()] == [("sft_d1", "skipped"),
                                                            ("dpo_d1", serial["json"]["preflight"][1]["status"])]


def test_a_node_that_cannot_be_built_fails_only_the_cases_that_read_it(small_model_folder, tmp_path):
    """sft_d1's max_length cuts its records' stop token: the pre-flight refuses it, so the one build of all
    planned nodes fails; the case reading sft_d0 still builds and trains its node, the one reading sft_d1 fails
    at once with the pre-flight's error, without another build."""
    from harness.findings.builds import NodeFailedError
    from harness.findings.session import FindingsSession, Options
    from harness.train.preflight import PreflightError

    plan = tmp_path / "pf.toml"
    plan.write_text(f'name = "pf"\n[base]\nmodel = "{small_model_folder}"\n[data]\nlimit = 4\n[sft]\nmax_steps = 1\n'
                    'max_length = 512\n[[nodes]]\nname = "base"\nmethod = "base"\n[[nodes]]\nname = "sft_d0"\n'
                    'method = "sft"\ndataset = "d0"\nparent = "base"\n[[nodes]]\nname = "sft_d1"\nmethod = "sft"\n'
                    'dataset = "d1"\nparent = "base"\noverrides = { max_length = 16 }\n', encoding="utf-8")
    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "my2.toml").write_text(node_spec('[{ node = "sft_d1" }, { node = "sft_d0" }]'), encoding="utf-8")
    said: list[str] = []
    fs = FindingsSession(Options(root=ROOT, plan_path=plan, plan_given=True, claims_dir=claims,
                                 fixtures_dir=str(tmp_path / "fx"), device="cpu", run="pf"), say=said.append)
    cases = fs.cases()
    fs.plan_cases(cases)
    fs.prepare(cases[1])  # sft_d0
    assert said[0].startswith(f"fixtures pf seed 0: node sft_d1 failed: PreflightError: pre-flight {plan}: "
                              "sft_d1 [trl-sft]: "), said
    assert said[0].endswith(f"(log: {fs.log_path})") and "the others build the nodes they read" in said[1], said
    assert "fixtures pf seed 0: [2/2] sft_d0 built in" in said[-1]  # base: the folder, nothing to train
    assert fs.builds.graph_of(fs.plan).is_built("sft_d0")
    with pytest.raises(NodeFailedError, match=r"node sft_d1: it failed to build earlier .* sft_d1 \[trl-sft\]") as err:
        fs.prepare(cases[0])  # sft_d1
    assert isinstance(err.value.__cause__, PreflightError) and str(fs.log_path) in str(err.value)
    assert [only for _, only in fs.builds.calls] == [("base", "sft_d0", "sft_d1"), ("base", "sft_d0")]


# ---- fail fast: a node whose training raises is built once; every case that reads it fails with its error

BAD_LORA = '[lora]\ntarget_modules = ["no_such_proj"]\n\n'  # peft finds no such layer: training raises


@pytest.fixture(scope="module")
def failing(tmp_path_factory) -> dict[str, Path]:
    """micro's base with a LoRA target the model lacks (sft_d0 cannot train, so neither can dpo_d1@sft_d0,
    its child), and one claim with a case reading each."""
    d = tmp_path_factory.mktemp("fail_fast")
    head = MICRO.read_text(encoding="utf-8").split("[[nodes]]", 1)[0].replace('name = "micro"', 'name = "ff"')
    head = head.replace("[sft]", BAD_LORA + "[sft]")
    (d / "ff.toml").write_text(head + '[[nodes]]\nname = "base"\nmethod = "base"\n\n[[nodes]]\nname = "sft_d0"\n'
                               'method = "sft"\ndataset = "d0"\nparent = "base"\n\n[[nodes]]\n'
                               'name = "dpo_d1@sft_d0"\nmethod = "dpo"\ndataset = "d1"\nparent = "sft_d0"\n',
                               encoding="utf-8")
    (d / "claims").mkdir()
    (d / "claims" / "my2.toml").write_text(node_spec('[{ node = "sft_d0" }, { node = "dpo_d1@sft_d0" }]'),
                                           encoding="utf-8")
    return {"dir": d, "plan": d / "ff.toml", "claims": d / "claims", "fx": d / "fx"}


@pytest.mark.parametrize("devices", [None, "a,b"], ids=["serial", "slots"])
def test_a_failed_node_fails_every_case_that_reads_it_at_once_without_a_rebuild(failing, devices):
    """A real claims session: sft_d0's training raises (peft: no such target module), in this process or in
    a device slot's worker. It starts once; both cases (sft_d0, and its child's) fail with peft's error and
    the log's path; the summary names the node."""
    env = {"COLUMNS": "4000"} | ({"HARNESS_DEVICES": devices} if devices else {})  # COLUMNS: whole summary lines
    r = claims_run(failing, failing["fx"], failing["dir"] / f"out-{devices}", **env)
    out = r.stdout
    assert r.returncode == 1, out[-4000:] + r.stderr[-2000:]
    assert out.count("building sft_d0 ...") == 1, out[-6000:]
    assert "building dpo_d1@sft_d0" not in out
    log = failing["fx"] / "logs" / "r.log"
    failed = [line for line in out.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 2, out[-6000:]
    assert "[MY2-sft_d0] - harness.findings.builds.NodeFailedError: ff seed 0: node sft_d0: it failed" in failed[0]
    assert "[MY2-dpo_d1@sft_d0] - harness.findings.builds.NodeFailedError: ff seed 0: node dpo_d1@sft_d0: " \
           "its ancestor sft_d0 failed" in failed[1]
    assert all("no_such_proj" in line for line in failed), failed  # peft's own error, in each case
    assert out.count(f"(log: {log})") >= 3  # the progress line, the summary line, each case's error
    summary = out[out.index("fixture nodes that failed to build"):]
    assert ("ff seed 0: node sft_d0 failed: NoMatchingPeftModuleError: Target modules {'no_such_proj'} not found "
            "in the base model") in summary


def test_the_controller_names_a_node_a_pytest_xdist_worker_failed_to_build(failing, tmp_path):
    """Under pytest-xdist the build runs in a worker: the controller's summary still names the failed node, once,
    with peft's error and the log (the worker sends its failures with its rows)."""
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (the test extra)")
    r = claims_run(failing, tmp_path / "fx", tmp_path / "out", "-n", "2", COLUMNS="4000", HARNESS_DEVICES="a,b")
    out = r.stdout
    assert r.returncode == 1, out[-4000:] + r.stderr[-2000:]
    assert "fixture nodes that failed to build" in out, out[-6000:]
    summary = out[out.index("fixture nodes that failed to build"):]
    line = ("ff seed 0: node sft_d0 failed: NoMatchingPeftModuleError: Target modules {'no_such_proj'} not found "
            "in the base model")
    assert summary.count(line) == 1, summary
    assert f"(log: {tmp_path / 'fx' / 'logs' / 'r.log'})" in summary


def test_a_failed_nodes_builder_runs_once_for_all_its_cases(failing, monkeypatch):
    """In process, counting the calls of the real node builder: the planned build tries sft_d0 once; the two
    cases then fail at once (NodeFailedError, peft's error as its cause) without calling it again."""
    from harness.findings.builds import NodeFailedError
    from harness.findings.session import FindingsSession, Options
    from harness.train import node as node_module

    calls: list[str] = []
    real = node_module.locked_build

    def counted(graph, name, *args, **kwargs):
        calls.append(name)
        return real(graph, name, *args, **kwargs)

    monkeypatch.setattr(node_module, "locked_build", counted)
    fs = FindingsSession(Options(root=ROOT, plan_path=failing["plan"], plan_given=True, claims_dir=failing["claims"],
                                 fixtures_dir=str(failing["fx"]), device="cpu", run="inproc"),
                         say=lambda msg: None)
    cases = fs.cases()
    assert [c.id for c in cases] == ["MY2-sft_d0", "MY2-dpo_d1@sft_d0"]
    fs.plan_cases(cases)
    for case in cases:
        with pytest.raises(NodeFailedError, match="no_such_proj") as err:
            fs.prepare(case)
        assert isinstance(err.value.__cause__, ValueError)
    assert calls.count("sft_d0") == 1 and "dpo_d1@sft_d0" not in calls, calls
    assert [(f.node, type(f.error).__name__) for f in fs.builds.failures()] == [("sft_d0", "NoMatchingPeftModuleError")]


def test_a_case_is_resolved_once_and_its_nodes_built_once(setup, serial, tmp_path):
    """In process, on the serial run's cache: each case's plan, nodes and skip reason are worked out once per
    session (the same object every time), and running its cases' steps (prepare, the graphs, the diff sources,
    the runner's graph) calls the graph engine once per graph."""
    from harness.findings.session import FindingsSession, Options

    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "my1.toml").write_text(SPEC.replace('pairs = [{ dpo = "dpo_d1", sft = "sft_d1" }]',
                                                  'pairs = [{ dpo = "dpo_d0", sft = "sft_d0" }, '
                                                  '{ dpo = "dpo_d1", sft = "sft_d1" }]'), encoding="utf-8")
    (claims / "my2.toml").write_text(node_spec('[{ node = "sft_d1" }, { node = "dpo_d1" }]'), encoding="utf-8")
    fs = FindingsSession(Options(root=ROOT, plan_path=setup["plan"], plan_given=True, claims_dir=claims,
                                 fixtures_dir=str(serial["fx"]), device="cpu", run="once"), say=lambda m: None)
    cases = fs.cases()
    first = [fs.resolve(c) for c in cases]
    assert first[0].skip == "MY1: plan 'mb' has no node dpo_d0, sft_d0 (roles: dpo, sft)" and first[0].plans == ()
    assert first[1].nodes == ("dpo_d1", "sft_d1") and first[1].skip is None
    assert first[2].nodes == ("sft_d1",) and [p.seed for p in first[2].plans] == [fs.plan.seed]
    fs.plan_cases(cases)
    for case in cases[1:]:
        assert fs.prepare(case) is fs.resolve(case)
        fs.graph(case.control, [])
        fs.diff_sources(case.control)
    assert [fs.resolve(c) for c in cases] == first and all(a is b for a, b in zip(first, map(fs.resolve, cases)))
    assert fs.builds.calls == [(("mb", None, 0, "tiny"), ("base", "sft_d1", "dpo_d1"))]
