"""Root conftest: loads the harness plugin when the package is not installed, registers markers and
the Hypothesis profiles."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Installed, the plugin is already registered through its pytest11 entry point under this name,
# and pytest then skips this import.
pytest_plugins = ["harness.pytest_plugin"]

# The findings output folder at the root (JSON/MD/PNG) is never collected. This names that one
# folder only: a norecursedirs pattern would also hide tests/findings.
collect_ignore = ["findings"]


def _register_hypothesis_profiles() -> tuple[str, ...]:
    """``ci``, ``dev`` and ``derandomized``; a test's own ``@settings`` overrides what it names.

    Every profile drops the 200 ms deadline: an example that builds or runs a torch model takes
    longer on a shared CPU, and a deadline there fails on load, not on behaviour.
    """
    from hypothesis import HealthCheck, settings

    base = settings.get_profile("default")  # not settings.default: Hypothesis may have loaded its own "ci"

    # CI: a fresh machine each run (no example database), examples still drawn at random, and a
    # failure prints the blob that replays it (@reproduce_failure); fewer examples for 2 cores.
    settings.register_profile("ci", base, max_examples=50, deadline=None, database=None, print_blob=True,
                              derandomize=False, suppress_health_check=[HealthCheck.too_slow])
    # At a desk: the default example count, and the local database replays the last failure first.
    settings.register_profile("dev", base, deadline=None)
    # The same examples on every run, e.g. to bisect a failure or to compare two library versions.
    settings.register_profile("derandomized", base, deadline=None, database=None, print_blob=True, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    return ("ci", "dev", "derandomized")


def hypothesis_profile(environ=os.environ) -> str:
    """``$HYPOTHESIS_PROFILE``, else ``ci`` when ``$CI`` is set (not ``0``/``false``), else ``dev``."""
    name = environ.get("HYPOTHESIS_PROFILE")
    if name:
        return name
    return "ci" if environ.get("CI", "").strip().lower() not in ("", "0", "false", "no") else "dev"


@pytest.hookimpl(tryfirst=True)  # before Hypothesis' own plugin, so that --hypothesis-profile still wins
def pytest_configure(config):
    for name, text in {
        "gpu": "needs trained model fixtures",
        "judge": "needs an LLM judge endpoint",
        "tokenizers": "needs real tokenizer files",
        "shared_cache": "builds into the project's fixture cache on purpose (the tiny graph the claims reuse)",
    }.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    from hypothesis import settings

    known = _register_hypothesis_profiles()
    name = hypothesis_profile()
    if name not in known:
        raise pytest.UsageError(f"HYPOTHESIS_PROFILE={name!r} is not one of {', '.join(known)}")
    settings.load_profile(name)
