"""A node's pre-flight as the findings report shows it: read from what ``fixtures build`` keeps in the
node's meta (a :class:`harness.train.preflight.PreflightResult`, ``--no-preflight``'s mark, or nothing
for a node built before the pre-flight existed), and carried through JSON between xdist processes."""

from __future__ import annotations

import pytest

from harness.findings.preflight import NodePreflight, from_meta, markdown, table
from harness.train.preflight import PreflightResult


def result(status: str, codes: tuple[str, ...] = (), allowed: dict | None = None) -> dict:
    findings = [{"code": c, "severity": "warning", "count": 2, "message": "m"} for c in codes]
    return PreflightResult("sft_d0", "trl-sft", status, [2], 2, 2, findings, allowed or {}).to_dict()


@pytest.mark.parametrize("meta, status, verdict", [
    ({"preflight": result("clean")}, "clean", "ok"),
    ({"preflight": result("warning", ("trained-after-stop", "trained-after-stop", "truncated"))}, "warning",
     "warnings: trained-after-stop, truncated"),
    ({"preflight": result("allowed", ("eos-missing", "truncated"), {"eos-missing": "the base never stops"})},
     "allowed", "allowed: eos-missing (the base never stops); warnings: truncated"),
    ({"preflight": {"status": "skipped", "reason": "--no-preflight"}}, "skipped", "skipped (--no-preflight)"),
    ({"preflight": None}, "not-recorded", "not recorded (the node was built before the pre-flight existed)"),
    ({}, "not-recorded", "not recorded (the node was built before the pre-flight existed)"),
])
def test_a_nodes_meta_reads_as_its_verdict(meta, status, verdict):
    p = from_meta("sft_d0", meta)
    assert (p.status, p.verdict) == (status, verdict)
    assert NodePreflight.from_dict(p.to_dict()) == p
    assert p.to_dict()["verdict"] == verdict


def test_the_tables_name_the_graph_of_each_node():
    items = [from_meta("sft_d0", {"preflight": result("clean")}, seed=1),
             from_meta("dpo_d0", {"preflight": {"status": "skipped", "reason": "--no-preflight"}}, variant="hot")]
    lines = table(items).splitlines()
    assert lines[0].split() == ["node", "pipeline", "pre-flight"]
    assert lines[1].split() == ["sft_d0", "[seed", "1]", "trl-sft", "ok"]
    assert lines[2].split()[:2] == ["dpo_d0", "[hot]"] and lines[2].endswith("skipped (--no-preflight)")
    assert "| dpo_d0 [hot] | - | skipped (--no-preflight) |" in markdown(items)
