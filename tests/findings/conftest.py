"""Fixtures of the findings tests; the synthetic families themselves are in findings_helpers.py."""

from __future__ import annotations

from typing import Mapping

import pytest

from findings_helpers import State, healthy, write_family
from harness.findings.diffs import DiffSource


@pytest.fixture
def family(tmp_path):
    """``family(states=None) -> DiffSource`` over a written synthetic family (healthy by default)."""

    def make(states: Mapping[str, State] | None = None, cache: bool = True) -> DiffSource:
        nodes = write_family(tmp_path / "nodes", states or healthy())
        return DiffSource(nodes, tmp_path / "diffs" if cache else None, device="cpu")

    return make
