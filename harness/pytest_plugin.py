"""pytest plugin: options, markers, session fixtures and the findings summary. Glue only.

The logic lives in plain modules (``harness.train``, ``harness.diff``, ``harness.findings``);
this file only wires them into pytest.

The claims are data: ``claims/test_claims.py`` is one test parametrized (here, in
``pytest_generate_tests``) with every case of every spec in the claims folder (``--claims-dir``,
default ``fixtures/claims``); :mod:`harness.findings.runner` runs a case. One
:class:`harness.findings.session.FindingsSession` in pytest's stash owns the options, the graphs,
the rows and the end-of-session work.

Fixtures for claim files:

- ``findings_session``: that session object.
- ``harness_plan``: the loaded plan (``--harness-plan``, default ``fixtures/plans/tiny.toml``, with
  ``--harness-base`` applied); a plan that needs CUDA skips its tests with the reason when torch sees none.
- ``harness_graphs``: ``[(training seed, Graph)]``, one per ``--harness-seeds``; ``harness_graph``: the first.
- ``claim_sources``: ``[(training seed, DiffSource)]``: diffs computed once per session, cached on
  disk under ``<fixtures dir>/diffs`` keyed by the node keys.
- ``claim_result``: call it with a :class:`harness.findings.ClaimResult` (or a list) to put rows
  in the terminal summary and the findings files (the session's ``record``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

MARKERS = {
    "gpu": "needs the trained fixture graph (runs on the CPU for the tiny plan; 4-bit plans need CUDA)",
    "judge": "needs an LLM judge endpoint (OPENAI_API_KEY or OPENAI_BASE_URL)",
    "tokenizers": "needs real tokenizer files (the tokenizer zoo folder or the hub)",
}

# pytest-xdist: one worker per GPU, rows merged into one report (its hooks are optional without xdist)
pytest_plugins = ["harness.xdist_plugin"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "fine-tuning claims harness")
    group.addoption("--harness-plan", dest="harness_plan", default=None,
                    help="plan TOML whose fixture graph the claims run on (default: fixtures/plans/tiny.toml)")
    group.addoption("--harness-base", dest="harness_base", default=None,
                    help="swap the plan's base model (hub id, model folder or GGUF file) without editing the plan")
    group.addoption("--harness-variant", dest="harness_variant", default=None,
                    metavar="NAME", help="apply the plan's [variants.NAME] table (e.g. smollm2's cudagraphs); "
                    "negative controls apply on top of it")
    group.addoption("--claims-dir", dest="harness_claims_dir", default=None,
                    help="folder of claim spec TOML files to run (default: fixtures/claims)")
    group.addoption("--harness-fixtures-dir", "--fixtures-dir", dest="harness_fixtures_dir",
                    default=None,
                    help="fixture cache folder (default: .fixtures/ in the project; env HARNESS_FIXTURES_DIR)")
    group.addoption("--harness-device", dest="harness_device", default="auto",
                    choices=("auto", "cpu", "cuda"), help="device for training and diffs")
    group.addoption("--harness-executor", dest="harness_executor", default=None, choices=("embedded", "ray"),
                    help="who trains the fixture nodes: embedded (the harness's worker pools, default) or ray (one Ray "
                    "task per node; env HARNESS_EXECUTOR)")
    group.addoption("--harness-ray-address", dest="harness_ray_address", default=None, metavar="ADDR",
                    help="Ray cluster to join with --harness-executor ray (default: env HARNESS_RAY_ADDRESS, else "
                    "RAY_ADDRESS or a local Ray instance)")
    group.addoption("--harness-zoo", "--tokenizer-zoo", dest="harness_zoo",
                    default=None,
                    help="folder of real tokenizer folders (default: ../shared/tokenizers when present)")
    group.addoption("--harness-findings-dir", "--findings-dir", dest="harness_findings_dir",
                    default=None,
                    help="where findings JSON/Markdown/PNG are written (default: findings/)")
    group.addoption("--harness-baseline", "--findings-baseline", dest="harness_baseline", default=None,
                    help="a findings JSON (this model's, or another base's or plan's) to compare the shared checks with")
    group.addoption("--findings-strict", dest="harness_strict", action="store_true", default=False,
                    help="an inconclusive check (training seeds that disagree, or a threshold inside the seeds' 95%% "
                    "interval) fails its case and the session; with --findings-baseline, improvements (fail -> pass) "
                    "and moves across models fail too")
    group.addoption("--harness-seeds", dest="harness_seeds", type=int, default=1,
                    help="build the plan under N training seeds; each check reports its mean, 95%% interval and "
                    "per-seed values, and is inconclusive when the seeds do not settle its verdict")
    group.addoption("--harness-run-id", dest="harness_run_id", default=None,
                    help="name of this run's findings files (default: a UTC timestamp)")
    group.addoption("--judge-serve", dest="judge_serve", default=None,
                    metavar="MODEL", help="serve MODEL (folder, hub id, .gguf file or plan node) with `transformers "
                    "serve` on loopback as the LLM judge (env HARNESS_JUDGE_SERVE)")


def _say(config: pytest.Config):
    """Write a progress line on the terminal even while pytest captures output."""

    def say(msg: str) -> None:
        tr = config.pluginmanager.get_plugin("terminalreporter")
        cap = config.pluginmanager.get_plugin("capturemanager")
        if tr is None:
            return
        ctx = cap.global_and_fixture_disabled() if cap is not None else contextlib.nullcontext()
        with ctx:
            tr.write_line(msg)

    return say


def project_root(config: Any) -> Path:
    """The folder the default plan and claims (``fixtures/``) are read from: pytest's rootdir when it holds
    them, else the folder pytest was started in. pytest takes the common folder of every path on the command
    line as its rootdir when no ini file is above it, so an absolute ``--findings-baseline /tmp/x.json``
    made the rootdir ``/tmp``."""
    for folder in (Path(str(config.rootpath)), Path(str(config.invocation_params.dir))):
        if (folder / "fixtures" / "plans").is_dir():
            return folder
    return Path(str(config.rootpath))


def pytest_configure(config: pytest.Config) -> None:
    """Read the environment once (:func:`harness.config.from_env`): an option given on the command line wins
    over its ``HARNESS_*`` variable; the session's frozen Options keep both."""
    from harness.config import from_env
    from harness.errors import HarnessError
    from harness.findings.merge import run_id, worker_slot
    from harness.findings.session import SESSION, FindingsSession, Options, default_run_id, plan_path

    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.getoption("harness_device", "auto") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--harness-device cuda was given but torch sees no CUDA device")
    try:
        env = from_env()
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None

    def opt(name: str, value: object) -> object:
        return config.getoption(name, None) or value

    from harness.train.ray_executor import check_executor

    executor = opt("harness_executor", env.executor) or "embedded"
    ray_address = opt("harness_ray_address", env.ray_address) or None
    try:
        check_executor(executor, ray_address)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc).replace("--executor", "--harness-executor")
                                .replace("--ray-address", "--harness-ray-address")) from None
    if executor == "ray" and env.devices:
        raise pytest.UsageError(f"HARNESS_DEVICES={env.devices!r} picks the embedded executor's device slots; with "
                                f"--harness-executor ray, Ray places the nodes: unset it")
    root = project_root(config)
    opt_plan = opt("harness_plan", env.plan)
    findings = opt("harness_findings_dir", env.findings_dir)
    claims = opt("harness_claims_dir", env.claims_dir)
    fixtures = opt("harness_fixtures_dir", env.fixtures_dir)
    zoo = opt("harness_zoo", env.tokenizer_zoo)
    if zoo is None and (root.parent / "shared" / "tokenizers").is_dir():
        zoo = root.parent / "shared" / "tokenizers"
    options = Options(
        root=root, plan_path=plan_path(opt_plan, root), plan_given=bool(opt_plan),
        base=opt("harness_base", env.base), variant=opt("harness_variant", env.variant) or None,
        claims_dir=Path(claims).resolve() if claims else None,
        findings_dir=Path(findings) if findings else None,
        fixtures_dir=str(fixtures) if fixtures else None, zoo=Path(zoo) if zoo else None,
        run=config.getoption("harness_run_id", None) or run_id(config) or default_run_id(),
        baseline=config.getoption("harness_baseline", None), strict=config.getoption("harness_strict", False),
        seeds=config.getoption("harness_seeds", 1), device=config.getoption("harness_device", "auto"),
        judge_serve=opt("judge_serve", env.judge_serve) or None, env=env, slot=worker_slot(config),
        executor=str(executor), ray_address=ray_address)
    session = FindingsSession(options, say=_say(config))
    try:
        session.check()
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SESSION] = session


def _session(config: pytest.Config):
    from harness.findings.session import SESSION

    return config.stash.get(SESSION, None)


def _zoo_dir(config: pytest.Config) -> Path | None:
    fs = _session(config)
    return fs.options.zoo if fs is not None else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    fs = _session(item.config)
    if item.get_closest_marker("judge") and not (
        os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")
        or (fs is not None and fs.options.judge_serve)
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


# ---- claims: parametrization and fixtures --------------------------------------------------

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``claim_case``: every case of every spec in the claims folder; ``zoo_case``: every zoo tokenizer a spec
    of that folder names."""
    from harness.errors import HarnessError
    from harness.findings.runner import params

    fs = _session(metafunc.config)
    try:
        if "claim_case" in metafunc.fixturenames:
            metafunc.parametrize("claim_case", params(fs))
        if "zoo_case" in metafunc.fixturenames:
            cases = fs.zoo_cases()
            metafunc.parametrize("zoo_case", cases, ids=[c.id for c in cases])
    except HarnessError as exc:  # a bad spec: one collection error naming the file and the field
        raise pytest.UsageError(str(exc)) from None


def _is_claim_case(item: pytest.Item) -> bool:
    return "claim_case" in getattr(item, "fixturenames", ())


def pytest_deselected(items: list) -> None:
    if items and any(_is_claim_case(i) for i in items):
        fs = _session(items[0].config)
        if fs is not None:
            fs.deselected_claims()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The selected claim cases go to the findings session (its first case builds all their nodes; an
    xdist worker builds per case, as it runs only some); ``-k`` that selects none: list the claim ids."""
    fs = _session(session.config)
    if fs is None:
        return
    if not hasattr(session.config, "workerinput"):
        fs.plan_cases([i.callspec.params["claim_case"] for i in session.items
                       if _is_claim_case(i) and hasattr(i, "callspec")])
    fs.keyword_matched(session.config.getoption("keyword", ""), any(_is_claim_case(i) for i in session.items))


@pytest.fixture(scope="session")
def findings_session(pytestconfig: pytest.Config):
    """The session's :class:`harness.findings.session.FindingsSession`."""
    from harness.findings.session import SESSION

    return pytestconfig.stash[SESSION]


def _skip_without_cuda(plan) -> None:
    if getattr(plan, "requires_cuda", False):
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"gpu: plan {plan.name!r} trains in 4-bit (bitsandbytes QLoRA) and needs CUDA; torch sees none")


@pytest.fixture(scope="session")
def harness_plan(findings_session):
    """The loaded plan; skips (with the reason) when it needs CUDA and torch sees none."""
    _skip_without_cuda(findings_session.plan)
    return findings_session.plan


@pytest.fixture(scope="session")
def harness_graphs(findings_session, harness_plan) -> list:
    """``[(training seed, Graph)]``: the plan built under each of ``--harness-seeds`` seeds."""
    return findings_session.graphs()


@pytest.fixture(scope="session")
def harness_graph(harness_graphs):
    """The graph under the plan's own training seed."""
    return harness_graphs[0][1]


@pytest.fixture(scope="session")
def claim_sources(findings_session, harness_plan) -> list:
    """``[(training seed or None, DiffSource)]``; the seed is None for a single-seed run."""
    return findings_session.diff_sources()


@pytest.fixture(scope="session")
def judge_endpoint(findings_session):
    """The LLM judge's :class:`~harness.inference.serve.JudgeEndpoint` (``--judge-serve`` serves it on loopback)."""
    return findings_session.judge_endpoint()


@pytest.fixture
def claim_result(findings_session):
    """Call with a ClaimResult (or a list of them) to report it in the findings."""
    return findings_session.record


# ---- findings: collect, write, compare, summarise -------------------------------------------

def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    fs = _session(session.config)
    if fs is None:
        return
    fs.close()
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller writes the one report
        from harness.findings.merge import payload

        session.config.workeroutput.update(payload(fs, session.config.workerinput.get("workerid", "?")))
        return
    if fs.workers_computed_diffs():  # the controller of workers that computed diffs: plots from the disk cache
        try:
            fs.diff_sources()
        except Exception as exc:  # plots are a report extra
            fs.say(f"findings plots skipped: {exc}")
    outcome = fs.finish()
    if outcome is not None and outcome.failed and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    from harness.findings.baseline import format_report
    from harness.findings.preflight import table as preflight_table
    from harness.findings.report import not_measured, spread_table, table

    fs = _session(config)
    if fs is None:
        return
    tr = terminalreporter
    if fs.no_match:
        tr.write_line(fs.no_match, yellow=True)
    failures = fs.build_failures()  # this process's and, under pytest-xdist, every worker's
    if failures:  # each failed once; every case that read it failed at once with its error
        tr.write_sep("-", "fixture nodes that failed to build (not retried in this session)")
        for line in failures:
            tr.write_line(line, red=True)
    if fs.outcome is None:
        return
    results, outcome = fs.results, fs.outcome
    tr.write_sep("=", "harness findings")
    for line in table(results).splitlines():
        tr.write_line(line)
    for line in not_measured(outcome.checks):
        tr.write_line(f"not measured: {line}", yellow=True)
    multi = [c for c in outcome.checks if len(c.rows) > 1]
    if multi:
        tr.write_sep("-", "spread across training seeds")
        for line in spread_table(multi).splitlines():
            tr.write_line(line)
    for c in outcome.inconclusive:
        tr.write_line(f"inconclusive{' (fails: --findings-strict)' if outcome.strict else ''}: {c.describe()}",
                      **({"red": True} if outcome.strict else {"yellow": True}))
    failing = any(c.verdict == "fail" and not c.control for c in outcome.checks)
    tr.write_line(outcome.summary, **({"red": True} if failing else {"green": True}))
    if outcome.preflight:
        tr.write_sep("-", "pre-flight per trained node, post-flight of its saved folder")
        for line in preflight_table(outcome.preflight).splitlines():
            tr.write_line(line)
        for p in outcome.postflight_errors:  # fails the session: a checkpoint that would stop wrongly when served
            for finding in p.post_findings:
                tr.write_line(f"post-flight failed: {p.where}: {finding}", red=True)
    for e in outcome.errors:
        tr.write_line(e, yellow=True)
    tr.write_line(f"findings written: {outcome.json_path} and {outcome.md_path}"
                  + (f" (+{len(outcome.images)} PNG)" if outcome.images else ""))
    if outcome.comparison is not None:
        for line, colour in format_report(outcome.comparison, fs.options.baseline):
            tr.write_line(line, **({colour: True} if colour else {}))
        if outcome.missing:
            tr.write_line(f"{len(outcome.missing)} baseline row(s) not in this run (not compared)")
        if outcome.version_changes:
            tr.write_line("library versions differ from the baseline's: " + "; ".join(outcome.version_changes),
                          yellow=True)
