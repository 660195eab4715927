"""pytest-xdist glue for the claims: one worker per GPU, every worker's rows merged into one report.

Registered by :mod:`harness.pytest_plugin` (``pytest_plugins``); without xdist its optional hooks never
run. What the hooks do lives in :mod:`harness.findings.merge` (pinning, groups, the rows' payload and
their merge into the controller's :class:`~harness.findings.session.FindingsSession`).
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.findings.merge import GPUS, ROWS, RUN, group_of, is_worker, merge, worker_slot
from harness.findings.session import SESSION


def _gpu_ids() -> list[str]:
    """``$HARNESS_DEVICES`` (the harness's devices; fake ones on the CPU), else the visible GPUs. Read here,
    at the edge, as xdist asks before the harness plugin configures its session."""
    from harness.config import from_env, variable
    from harness.errors import HarnessError
    from harness.train.gpus import parse_devices, visible_gpus

    try:
        devices = from_env().devices
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    return parse_devices(devices, f"${variable('devices')}") or visible_gpus()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per GPU (xdist's own default, one per CPU core, without GPUs)."""
    n = len(_gpu_ids())
    return n or None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if is_worker(config):  # before anything starts CUDA in this worker
        gpu = worker_slot(config)
        if gpu is not None:
            from harness.train.gpus import pin

            pin(gpu)
        return
    args = config.invocation_params.args
    chosen = any(str(a) == "--dist" or str(a).startswith("--dist=") for a in args)
    if getattr(config.option, "numprocesses", None) and not chosen and config.getoption("dist", "no") == "load":
        config.option.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Controller: hand each worker the run id and the GPU list it picks its own GPU from."""
    fs = node.config.stash.get(SESSION, None)
    if fs is not None:
        node.workerinput[RUN] = fs.options.run
    node.workerinput[GPUS] = ",".join(_gpu_ids())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """Controller: a worker finished; keep its rows until every worker is done."""
    fs = node.config.stash.get(SESSION, None)
    out = getattr(node, "workeroutput", None)
    if fs is not None and out and ROWS in out:
        merge(fs, [out])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every claim case with its xdist group (before xdist names the groups in node ids)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("claim_case")
        if case is not None:
            item.add_marker(pytest.mark.xdist_group(group_of(case)))
