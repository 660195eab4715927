"""Every claim in the claims folder (``fixtures/claims``, or ``--claims-dir DIR``), one test case per
spec and pair, plus each negative control's pairs under its plan variant (they must fail).

The parametrization comes from the harness plugin; how a case runs is
:func:`harness.findings.runner.run_case`. A new claim is one TOML file: see harness/findings/spec.py.
"""

from harness.findings.runner import run_case


def test_claim(claim_case, findings_session, harness_plan, request):
    run_case(findings_session, claim_case, request)
