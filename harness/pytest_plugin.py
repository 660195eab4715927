"""pytest plugin: options, markers, session fixtures and the findings summary. Glue only.

The logic lives in plain modules (``harness.train``, ``harness.diff``, ``harness.findings``);
this file only wires them into pytest.

Fixtures for claim files:

- ``harness_plan``: the loaded plan (``--harness-plan``, default ``fixtures/plans/tiny.toml``);
  a plan that needs CUDA skips its tests with the reason when torch sees none.
- ``harness_graphs``: ``[(training seed, Graph)]``, one per ``--harness-seeds``; ``harness_graph``: the first.
- ``claim_sources``: ``[(training seed, DiffSource)]``: diffs computed once per session, cached on
  disk under ``<fixtures dir>/diffs`` keyed by the node keys.
- ``claim_result``: call it with a :class:`harness.findings.ClaimResult` (or a list) to put rows
  in the terminal summary and the findings files (same as ``harness.findings.record``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MARKERS = {
    "gpu": "needs the trained fixture graph (runs on the CPU for the tiny plan; 4-bit plans need CUDA)",
    "judge": "needs an LLM judge endpoint (OPENAI_API_KEY or OPENAI_BASE_URL)",
    "tokenizers": "needs real tokenizer files (the tokenizer zoo folder or the hub)",
}

_STATE = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "fine-tuning claims harness")
    group.addoption("--harness-plan", dest="harness_plan", default=os.environ.get("HARNESS_PLAN"),
                    help="plan TOML whose fixture graph the claims run on (default: fixtures/plans/tiny.toml)")
    group.addoption("--harness-fixtures-dir", "--fixtures-dir", dest="harness_fixtures_dir",
                    default=os.environ.get("HARNESS_FIXTURES_DIR"),
                    help="fixture cache folder (default: .fixtures/ in the project; env HARNESS_FIXTURES_DIR)")
    group.addoption("--harness-device", dest="harness_device", default="auto",
                    choices=("auto", "cpu", "cuda"), help="device for training and diffs")
    group.addoption("--harness-zoo", "--tokenizer-zoo", dest="harness_zoo",
                    default=os.environ.get("HARNESS_TOKENIZER_ZOO"),
                    help="folder of real tokenizer folders (default: ../shared/tokenizers when present)")
    group.addoption("--harness-findings-dir", "--findings-dir", dest="harness_findings_dir",
                    default=os.environ.get("HARNESS_FINDINGS_DIR"),
                    help="where findings JSON/Markdown/PNG are written (default: findings/)")
    group.addoption("--harness-baseline", "--findings-baseline", dest="harness_baseline", default=None,
                    help="a stored findings JSON to compare this run against (regression check)")
    group.addoption("--harness-seeds", dest="harness_seeds", type=int, default=1,
                    help="build the plan under N training seeds and check that verdicts agree")
    group.addoption("--harness-run-id", dest="harness_run_id", default=None,
                    help="name of this run's findings files (default: a UTC timestamp)")
    group.addoption("--judge-serve", dest="judge_serve", default=os.environ.get("HARNESS_JUDGE_SERVE"),
                    metavar="MODEL", help="serve MODEL (folder, hub id, .gguf file or plan node) with `transformers "
                    "serve` on loopback as the LLM judge (env HARNESS_JUDGE_SERVE)")


def pytest_configure(config: pytest.Config) -> None:
    from harness.errors import HarnessError
    from harness.findings import session

    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.getoption("harness_device", "auto") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--harness-device cuda was given but torch sees no CUDA device")
    root = Path(str(config.rootpath))
    opt_plan = config.getoption("harness_plan", None)
    findings = config.getoption("harness_findings_dir", None)
    state = {
        "root": root,
        "plan_path": session.plan_path(opt_plan, root),
        "findings_dir": Path(findings) if findings else root / "findings",
        "run": config.getoption("harness_run_id", None) or session.default_run_id(),
    }
    try:
        state["plan"] = session.check_options(
            plan=state["plan_path"], plan_given=bool(opt_plan), seeds=config.getoption("harness_seeds", 1),
            baseline=config.getoption("harness_baseline", None), findings_dir=state["findings_dir"],
            device=config.getoption("harness_device", "auto"))
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_STATE] = state


def _zoo_dir(config: pytest.Config) -> Path | None:
    opt = config.getoption("harness_zoo", None)
    if opt:
        return Path(opt)
    default = Path(str(config.rootpath)).parent / "shared" / "tokenizers"
    return default if default.is_dir() else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("judge") and not (
        os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")
        or item.config.getoption("judge_serve", None)
    ):
        pytest.skip("judge: no LLM judge endpoint configured (set OPENAI_API_KEY or OPENAI_BASE_URL, "
                    "or pass --judge-serve MODEL)")
    if item.get_closest_marker("tokenizers"):
        zoo = _zoo_dir(item.config)
        if zoo is None or not zoo.is_dir():
            pytest.skip("tokenizers: no tokenizer zoo folder (pass --harness-zoo or set HARNESS_TOKENIZER_ZOO)")


@pytest.fixture(scope="session")
def tokenizer_zoo(pytestconfig: pytest.Config) -> Path:
    """The folder holding real tokenizer folders; skips when absent."""
    zoo = _zoo_dir(pytestconfig)
    if zoo is None or not zoo.is_dir():
        pytest.skip("tokenizers: no tokenizer zoo folder (pass --harness-zoo or set HARNESS_TOKENIZER_ZOO)")
    return zoo


# ---- claims fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def harness_plan(pytestconfig: pytest.Config):
    """The loaded plan; skips (with the reason) when it needs CUDA and torch sees none."""
    state = pytestconfig.stash[_STATE]
    if state.get("plan") is None:
        from harness.train import load_plan

        state["plan"] = load_plan(state["plan_path"])
    plan = state["plan"]
    if getattr(plan, "requires_cuda", False):
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"gpu: plan {plan.name!r} trains in 4-bit (bitsandbytes QLoRA) and needs CUDA; torch sees none")
    return plan


@pytest.fixture(scope="session")
def harness_graphs(pytestconfig: pytest.Config, harness_plan) -> list:
    """``[(training seed, Graph)]``: the plan built under each of ``--harness-seeds`` seeds."""
    from harness.findings import session

    seeds = session.training_seeds(harness_plan, pytestconfig.getoption("harness_seeds"))
    pytestconfig.stash[_STATE]["seeds"] = seeds
    return session.build_graphs(harness_plan, seeds, fixtures_dir=pytestconfig.getoption("harness_fixtures_dir"),
                                device=pytestconfig.getoption("harness_device"))


@pytest.fixture(scope="session")
def harness_graph(harness_graphs):
    """The graph under the plan's own training seed."""
    return harness_graphs[0][1]


@pytest.fixture(scope="session")
def claim_sources(pytestconfig: pytest.Config, harness_plan, harness_graphs) -> list:
    """``[(training seed or None, DiffSource)]``; the seed is None for a single-seed run."""
    from harness.findings import session
    from harness.findings.diffs import DiffSource

    state = pytestconfig.stash[_STATE]
    cache = session.diff_cache_dir(pytestconfig.getoption("harness_fixtures_dir"), state["root"])
    multi = len(harness_graphs) > 1
    sources = [(seed if multi else None,
                DiffSource(session.node_set(harness_plan, g), cache, pytestconfig.getoption("harness_device")))
               for seed, g in harness_graphs]
    state["sources"] = sources
    return sources


@pytest.fixture(scope="session")
def judge_endpoint(pytestconfig: pytest.Config, request: pytest.FixtureRequest):
    """The LLM judge's :class:`~harness.evaluate.serve.JudgeEndpoint`; with ``--judge-serve`` the
    session serves it on loopback (a plan node name builds the graph first) and stops it at the end."""
    from harness.evaluate.serve import session_endpoint

    spec = pytestconfig.getoption("judge_serve")
    graph = None
    if spec and spec in {n.name for n in request.getfixturevalue("harness_plan").nodes}:
        graph = request.getfixturevalue("harness_graph")
    fixtures = pytestconfig.getoption("harness_fixtures_dir")
    state = pytestconfig.stash[_STATE]
    endpoint, server = session_endpoint(spec, graph, device=pytestconfig.getoption("harness_device"),
                                        cache_root=Path(fixtures) if fixtures else None,
                                        log_path=state["findings_dir"] / f"{state['run']}-judge-serve.log")
    if server is not None:
        request.addfinalizer(server.stop)
    return endpoint


@pytest.fixture
def claim_result():
    """Call with a ClaimResult (or a list of them) to report it in the findings."""
    from harness.findings import record

    return record


# ---- findings: collect, write, compare, summarise -------------------------------------------

def pytest_sessionstart(session: pytest.Session) -> None:
    from harness.findings.verdict import push_session

    push_session()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from harness.findings import session as fs
    from harness.findings.verdict import pop_session

    results = pop_session()
    state = session.config.stash.get(_STATE, None)
    if not results or state is None:
        return
    plan = state.get("plan")
    sources = state.get("sources") or []
    plot = None
    if plan is not None and sources:
        plot = lambda folder, run: fs.plot_graph(sources[0][1], plan, folder, run)  # noqa: E731
    meta = {"plan_path": str(state["plan_path"]), "device": session.config.getoption("harness_device"),
            "seeds": state.get("seeds", []), "baseline": session.config.getoption("harness_baseline")}
    outcome = fs.finish(results, findings_dir=state["findings_dir"], plan=fs.plan_name(state["plan_path"]),
                        run=state["run"], meta=meta, baseline=session.config.getoption("harness_baseline"),
                        plot=plot)
    state["results"], state["outcome"] = results, outcome
    if (outcome.regressions or outcome.disagreements) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    from harness.findings.baseline import format_failure
    from harness.findings.report import spread_table, spreads, table

    state = config.stash.get(_STATE, None)
    if not state or not state.get("results"):
        return
    results, outcome = state["results"], state["outcome"]
    tr = terminalreporter
    tr.write_sep("=", "harness findings")
    for line in table(results).splitlines():
        tr.write_line(line)
    multi = [s for s in spreads(results) if len(s.values) > 1]
    if multi:
        tr.write_sep("-", "spread across training seeds")
        for line in spread_table(multi).splitlines():
            tr.write_line(line)
    for d in outcome.disagreements:
        tr.write_line(f"verdicts disagree across seeds: {d}", red=True)
    for e in outcome.errors:
        tr.write_line(e, yellow=True)
    tr.write_line(f"findings written: {outcome.json_path} and {outcome.md_path}"
                  + (f" (+{len(outcome.images)} PNG)" if outcome.images else ""))
    if config.getoption("harness_baseline"):
        if outcome.regressions:
            tr.write_line(format_failure(outcome.regressions, config.getoption("harness_baseline")), red=True)
        else:
            tr.write_line(f"no regression against {config.getoption('harness_baseline')}", green=True)
        if outcome.missing:
            tr.write_line(f"{len(outcome.missing)} baseline row(s) not in this run (not compared)")
