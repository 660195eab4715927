"""Claim: the label/EOS audit catches each tokenizer family's known setup bugs, and only those.

Parametrized over fixtures/tokenizers.toml (ids = family names). Each entry runs the installed
trl's own pipeline on the persona data with the family's real tokenizer (local zoo folder, or the
hub id where the hub is reachable) and asserts that the audit's verdict equals the expectation.
The seed-004 negative controls (double BOS, split EOS text, missing EOS) must be caught.
"""

from __future__ import annotations

import pytest

from harness.audit import audit
from harness.audit.zoo import load_zoo_spec
from harness.config import from_env
from harness.errors import LoadError
from harness.findings import ClaimResult

ENTRIES = load_zoo_spec()
RUN = from_env()  # the GGUF folder and HARNESS_UPDATE_SNAPSHOTS, read here at the edge


def _tokenizer_source(entry, zoo):
    try:
        return entry.source(zoo, RUN.gguf_folder)
    except LoadError as e:  # a GGUF entry whose file has not been fetched
        pytest.skip(str(e))


@pytest.mark.tokenizers
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_audit_verdict_matches_expectation(entry, tokenizer_zoo, record_property, claim_result, findings_session):
    source = _tokenizer_source(entry, tokenizer_zoo)
    folder = source if not isinstance(source, str) and source.is_dir() else None
    try:
        # a .gguf tokenizer converts into the session's fixture cache (--fixtures-dir / HARNESS_FIXTURES_DIR)
        report = audit(source, cache_root=findings_session.options.fixtures_dir, **entry.audit_kwargs(folder))
    except LoadError as e:
        if isinstance(source, str):
            pytest.skip(f"{entry.name}: neither the zoo folder {entry.folder!r} nor the hub is available ({e})")
        raise
    found = tuple(sorted(report.codes))
    record_property("measured", list(found) or "clean")
    record_property("reference", list(entry.expect) or "clean")
    # In the findings summary: measured = codes found but not expected plus codes expected but missing.
    mismatch = len(set(found) ^ set(entry.expect))
    claim_result(ClaimResult.make("AUDIT", entry.name, mismatch, 0, "<=", reference_value=0, check="codes off expectation",
                                  note=f"found {', '.join(found) or 'clean'}; expected {', '.join(entry.expect) or 'clean'}"))
    detail = "; ".join(f"{f.code}[{f.severity}] x{f.count}: {f.message}" for f in report.findings)
    assert found == entry.expect, f"{entry.name}: expected {list(entry.expect) or 'clean'}, got {detail or 'clean'}"
    # Every audited example (each DPO side) carries the known findings, not just some of them.
    for f in report.findings:
        assert f.count == report.examples, f"{entry.name}: {f.code} in {f.count} of {report.examples} examples"
    # The pinned label snapshot: after a library upgrade, exactly which examples' trained tokens changed.
    changed = entry.snapshot_changes(report, update=RUN.update_snapshots)
    assert not changed, f"{entry.name}: labels changed since the snapshot:\n" + "\n".join(changed)
