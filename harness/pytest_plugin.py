"""pytest plugin: options, markers, session fixtures and the findings summary. Glue only.

The logic lives in plain modules (``harness.train``, ``harness.diff``, ``harness.findings``);
this file only wires them into pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MARKERS = {
    "gpu": "needs the trained fixture graph (runs on the CPU for the tiny plan; 4-bit plans need CUDA)",
    "judge": "needs an LLM judge endpoint (OPENAI_API_KEY or OPENAI_BASE_URL)",
    "tokenizers": "needs real tokenizer files (the tokenizer zoo folder or the hub)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "fine-tuning claims harness")
    group.addoption("--harness-plan", dest="harness_plan", default=os.environ.get("HARNESS_PLAN"),
                    help="plan TOML whose fixture graph the claims run on (default: fixtures/plans/tiny.toml)")
    group.addoption("--harness-fixtures-dir", "--fixtures-dir", dest="harness_fixtures_dir",
                    default=os.environ.get("HARNESS_FIXTURES_DIR"),
                    help="fixture cache folder (default: .fixtures/ in the project; env HARNESS_FIXTURES_DIR)")
    group.addoption("--harness-device", dest="harness_device", default="auto",
                    choices=("auto", "cpu", "cuda"), help="device for training and diffs")
    group.addoption("--harness-zoo", "--tokenizer-zoo", dest="harness_zoo",
                    default=os.environ.get("HARNESS_TOKENIZER_ZOO"),
                    help="folder of real tokenizer folders (default: ../shared/tokenizers when present)")
    group.addoption("--harness-findings-dir", "--findings-dir", dest="harness_findings_dir",
                    default=os.environ.get("HARNESS_FINDINGS_DIR"),
                    help="where findings JSON/Markdown/PNG are written (default: findings/)")
    group.addoption("--harness-baseline", "--findings-baseline", dest="harness_baseline", default=None,
                    help="a stored findings JSON to compare this run against (regression check)")
    group.addoption("--harness-seeds", dest="harness_seeds", type=int, default=1,
                    help="build the plan under N training seeds and check that verdicts agree")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.getoption("harness_seeds", 1) < 1:
        raise pytest.UsageError("--harness-seeds must be at least 1")
    if config.getoption("harness_device", "auto") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--harness-device cuda was given but torch sees no CUDA device")


def _zoo_dir(config: pytest.Config) -> Path | None:
    opt = config.getoption("harness_zoo", None)
    if opt:
        return Path(opt)
    default = Path(str(config.rootpath)).parent / "shared" / "tokenizers"
    return default if default.is_dir() else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("judge") and not (
        os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")
    ):
        pytest.skip("judge: no LLM judge endpoint configured (set OPENAI_API_KEY or OPENAI_BASE_URL)")
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
