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
    assert lines[0].split() == ["node", "pipeline", "pre-flight", "post-flight"]
    assert lines[1].split() == ["sft_d0", "[seed", "1]", "trl-sft", "ok", "not", "recorded"]
    assert lines[2].split()[:2] == ["dpo_d0", "[hot]"] and lines[2].endswith("skipped (--no-preflight)  not recorded")
    assert "| dpo_d0 [hot] | - | skipped (--no-preflight) | not recorded |" in markdown(items)


def post(status: str, findings: list[tuple[str, str]] = (), allowed: dict | None = None) -> dict:
    from harness.train.postflight import PostflightResult

    found = [{"code": c, "severity": sev, "file": "generation_config.json", "field": "eos_token_id",
              "message": f"generation_config.json: {c} message"} for c, sev in findings]
    return PostflightResult("sft_d0", status, "/base", found, allowed or {}).to_dict()


ERR = "generation_config.json: eos_token_id [2] lacks the end-of-turn '<|im_end|>' (id 7)"


@pytest.mark.parametrize("meta, lazy, status, verdict", [
    ({"postflight": post("clean")}, None, "clean", "ok"),
    ({"postflight": post("error", [("end-of-turn-not-generation-eos", "error"), ("w", "warning")])}, None, "error",
     "FAIL: end-of-turn-not-generation-eos: generation_config.json: end-of-turn-not-generation-eos message"),
    ({"postflight": post("allowed", [("special-id-dropped", "error")], {"special-id-dropped": "the base has none"})},
     None, "allowed", "allowed: special-id-dropped (the base has none)"),
    ({}, post("clean"), "clean", "ok (checked now)"),  # a node cached before the post-flight: checked lazily
    ({"postflight": post("clean")}, post("error", [("x", "error")]), "clean", "ok"),  # the record wins
    ({}, None, "not-recorded", "not recorded"),
])
def test_a_nodes_postflight_reads_as_its_verdict(meta, lazy, status, verdict):
    p = from_meta("sft_d0", {"preflight": result("clean"), **meta}, postflight=lazy)
    assert (p.post_status, p.post_verdict, p.post_failed) == (status, verdict, status == "error")
    assert NodePreflight.from_dict(p.to_dict()) == p  # through JSON between xdist processes
    assert p.to_dict()["postflight"]["verdict"] == verdict


def test_a_failed_postflight_fails_the_session_and_escapes_its_pipes():
    from harness.findings.session import Outcome

    bad = from_meta("sft_d0", {"preflight": result("clean"), "postflight": {
        "status": "error", "findings": [{"code": "end-of-turn-not-generation-eos", "severity": "error",
                                         "message": ERR}]}})
    good = from_meta("dpo_d0", {"preflight": result("clean"), "postflight": post("clean")})
    assert Outcome(preflight=[good, bad]).failed and not Outcome(preflight=[good]).failed
    assert Outcome(preflight=[good, bad]).postflight_errors == [bad]
    assert table([bad]).splitlines()[1].endswith("  FAIL: end-of-turn-not-generation-eos")  # the messages follow
    row = markdown([bad]).splitlines()[2]
    assert row.count(" | ") == 3 and "'<\\|im_end\\|>'" in row  # the token's pipes split no column
