"""Fixtures for the weight-diff tests (helpers live in diff_helpers.py)."""

from __future__ import annotations

import pytest

from diff_helpers import layouts_of


@pytest.fixture(scope="session")
def arch_layouts(tmp_path_factory) -> dict:
    """{arch: {tensor name: shape}} of tiny Llama, GPT-NeoX and GPT-2 models."""
    return layouts_of(tmp_path_factory.mktemp("layouts"))
