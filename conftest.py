"""Root conftest: loads the harness plugin when the package is not installed, and registers markers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Installed, the plugin is already registered through its pytest11 entry point under this name,
# and pytest then skips this import.
pytest_plugins = ["harness.pytest_plugin"]

# The findings output folder at the root (JSON/MD/PNG) is never collected. This names that one
# folder only: a norecursedirs pattern would also hide tests/findings.
collect_ignore = ["findings"]


def pytest_configure(config):
    for name, text in {
        "gpu": "needs trained model fixtures",
        "judge": "needs an LLM judge endpoint",
        "tokenizers": "needs real tokenizer files",
    }.items():
        config.addinivalue_line("markers", f"{name}: {text}")
