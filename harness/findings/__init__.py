"""Findings: claim specs, statistics, verdicts, the findings report and the baseline comparison.

Claims are data (``fixtures/claims/*.toml``, see :mod:`harness.findings.spec`) run by one
spec-driven runner (:mod:`harness.findings.runner`). A check computed another way builds its row
and records it through the ``claim_result`` fixture of the pytest plugin (the session owns its rows)::

    from harness.findings import ClaimResult, assert_holds

    def test_c9(claim_result):
        row = ClaimResult.make("C9", "sft_d0", measured=bleu, threshold=0.0, comparator=">",
                               reference_value=0.107, check="bleu_own_minus_other")
        claim_result(row)
        assert_holds([row])

``ClaimResult.make`` computes the margin (positive = holds) and the verdict; ``assert_holds`` judges each
check across training seeds (:func:`harness.findings.verdict.aggregate`: pass, fail, inconclusive or not
measured). Importing this package
imports no engine: a kind's statistics provider is imported when a spec of that kind loads.
"""

from harness.findings.spec import Check, ClaimSpec, Pair, load_spec, load_specs
from harness.findings.statistics import STATISTICS, GenerationSource, NotMeasured, load_providers
from harness.findings.verdict import (FAIL, INCONCLUSIVE, NOT_MEASURED, PASS, Aggregate, ClaimResult, InconclusiveWarning,
                                      aggregate, assert_holds, evaluate)

__all__ = [
    "Check", "ClaimSpec", "Pair", "load_spec", "load_specs", "STATISTICS", "GenerationSource", "NotMeasured",
    "ClaimResult", "assert_holds", "evaluate", "load_providers", "Aggregate", "aggregate", "InconclusiveWarning",
    "PASS", "FAIL", "INCONCLUSIVE", "NOT_MEASURED",
]
