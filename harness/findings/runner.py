"""The spec-driven claim runner: one case = one spec's pair on the plan's graph (or under a negative
control's variant). The pytest plugin parametrizes ``claims/test_claims.py`` with :func:`params`
and calls :func:`run_case`; nothing here is specific to one claim.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from harness.findings.kinds import KINDS
from harness.findings.session import Case, FindingsSession
from harness.findings.timing import KIND_PHASE, STATISTICS
from harness.findings.verdict import FAIL, INCONCLUSIVE, ClaimResult, InconclusiveWarning, aggregate, assert_holds, evaluate


def params(session: FindingsSession) -> list[Any]:
    """``pytest.param(case, id=..., marks=...)`` for every case of every spec in the claims folder."""
    import pytest

    out = []
    for case in session.cases():
        marks = [getattr(pytest.mark, m) for m in KINDS.get(case.spec.kind).marks]
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


def _logs(session: FindingsSession, graph: Any, case: Case) -> str:
    dirs = [f"{n}: {Path(graph.path(n))}" for n in session.resolve(case).nodes]
    return (f"logs: {session.log_path} (build and generation output); node folders (log.json, curves.png): "
            + "; ".join(dirs))


def _detail(case: Case, rows: list[ClaimResult], session: FindingsSession, graph: Any) -> str:
    reasons = {c.name: c.reason.strip().splitlines()[0] for c in case.spec.checks}
    failing = {c.key[2] for c in aggregate(rows) if c.verdict in (FAIL, INCONCLUSIVE)}
    lines = [f"  reason for {name}'s threshold: {reasons[name]} ..." for name in sorted(failing) if name in reasons]
    return "\n".join(lines + ["  " + _logs(session, graph, case), f"  spec: {case.spec.source}"])


def run_case(session: FindingsSession, case: Case, request: Any) -> list[ClaimResult]:
    """Measure one case, record its rows and assert the expectation (holds; or fails, for a control).

    Rows are judged per check across training seeds (:func:`~harness.findings.verdict.aggregate`): a failing
    check fails the case, an inconclusive one warns (fails under ``--findings-strict``), a not-measured one is
    recorded and never fails it; a case with no check measured records its rows and skips, saying why."""
    import pytest

    spec, pair, control = case.spec, case.pair, case.control
    plan = session.plan
    resolved = session.resolve(case)
    if resolved.skip:
        pytest.skip(resolved.skip)
    vplan = resolved.plan
    known = None if control else session.known_deviation(spec, pair)
    if known:
        request.applymarker(pytest.mark.xfail(reason=f"known deviation on {plan.name} / {session.base}: {known}",
                                              strict=False))
    with session.timing.timed("build"):
        session.prepare(case)
    builder = KINDS.get(spec.kind).builder()
    with session.timing.timed(KIND_PHASE.get(spec.kind, spec.kind)):  # the kind's sources: diffs, generations
        sources = builder(session, spec, pair, control)
    rows: list[ClaimResult] = []
    with session.timing.timed(STATISTICS):  # the checks' statistics (the diffs they read) and verdicts
        for seed, source in sources:
            rows += evaluate(spec, source, pair, plan=vplan.name, seed=seed)
    # what the sources say of themselves (the BERTScore model and layer, the judge's counts)
    said = "; ".join(dict.fromkeys(n for _, src in sources for n in getattr(src, "notes", ()) or ()))
    if control is not None:
        note = "; ".join(x for x in (f"negative control {control.variant}: expected to fail", said) if x)
        rows = [dataclasses.replace(r, pair=f"{r.pair} [{control.variant}]", note=_join(note, r.note)) for r in rows]
    elif known or said:
        note = "; ".join(x for x in (f"known deviation: {known}" if known else "", said) if x)
        rows = [dataclasses.replace(r, note=_join(note, r.note)) for r in rows]
    session.record(rows)
    if rows and not any(r.measured_here for r in rows):
        reasons = "; ".join(dict.fromkeys(f"{r.check}: {r.note}" for r in rows))
        pytest.skip(f"{spec.id} {pair.label}: no check could be measured here ({reasons})")
    graph = session.builds.graph_of(resolved.plans[0])
    strict = session.options.strict
    if control is not None:
        checks = [c for c in aggregate(rows) if c.n]
        if not any(c.verdict == FAIL for c in checks) and (strict or all(c.verdict != INCONCLUSIVE for c in checks)):
            raise AssertionError(f"negative control {control.variant!r} of {spec.id}: the claim still holds, so its "
                                 "checks cannot tell a broken setup from a healthy one:\n  "
                                 + "\n  ".join(c.describe() for c in checks) + "\n" + _detail(case, rows, session, graph))
        if not any(c.verdict == FAIL for c in checks):
            import warnings

            warnings.warn(InconclusiveWarning(f"negative control {control.variant!r} of {spec.id} is inconclusive: "
                                              + "; ".join(c.describe() for c in checks)), stacklevel=2)
        return rows
    assert_holds(rows, _detail(case, rows, session, graph), strict=strict)
    return rows


def _join(note: str, own: str) -> str:
    """The case's note, then what the row said itself (a not-measured row's reason)."""
    return "; ".join(dict.fromkeys(x for x in (note, own) if x))
