"""Findings: claim specs, statistics, verdicts, the findings report and the regression baseline.

How a claim file reports a result (the terminal summary and the findings files pick it up):

- Weight claims go through a spec: ``results = evaluate(spec, source, pair, plan=...)``, then
  ``record(results)`` and ``assert_holds(results)``.
- Any other check builds its row and records it, through the ``claim_result`` fixture of the
  pytest plugin (it returns :func:`record`) or by calling :func:`record` directly::

      from harness.findings import ClaimResult, assert_holds, record

      def test_c7(claim_result):
          row = ClaimResult.make("C7", "sft_d0", measured=bleu, threshold=0.0, comparator=">",
                                 seed_value=0.107, check="bleu_own_minus_other")
          claim_result(row)          # or record(row)
          assert_holds([row])

``ClaimResult.make`` computes the margin (positive = holds) and the verdict.
"""

from harness.findings.spec import Check, ClaimSpec, Pair, load_spec, load_specs
from harness.findings.statistics import STATISTICS, GenerationSource, load_providers
from harness.findings.verdict import ClaimResult, assert_holds, clear, evaluate, record, recorded

__all__ = [
    "Check", "ClaimSpec", "Pair", "load_spec", "load_specs", "STATISTICS", "GenerationSource",
    "ClaimResult", "assert_holds", "clear", "evaluate", "record", "recorded",
]

load_providers()  # the output claims' statistics (C7, C8) live in harness.evaluate.claims
