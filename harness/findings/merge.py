"""Claims over GPUs with pytest-xdist: one worker per GPU, one findings report.

``pytest claims -m gpu -n auto`` starts one worker per visible GPU (``-n N`` works too) and pins worker
``gwK`` to GPU ``K mod N`` through ``CUDA_VISIBLE_DEVICES`` before CUDA starts in it. The fixture graph is
built on disk behind the cache's per-node locks, so a node two workers need trains once and the other
waits, then loads it. Cases of one claim spec (its pairs share nodes), and the cases of one negative
control's variant, carry the same ``xdist_group``; ``-n`` defaults to ``--dist loadgroup`` so each group
runs on one worker (pass ``--dist`` to choose otherwise).

Each worker records its rows as in one process and, at its end, sends them (with the run's metadata) to
the controller through xdist's ``workeroutput``; the controller merges them, in a stable order, into its
own findings session, which writes the one findings file, the plots and the one summary. Without xdist
(or with ``-n 0``) nothing here runs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

ROWS = "harness_rows"
META = "harness_meta"
GPUS = "harness_gpus"
RUN = "harness_run"


def is_worker(config: Any) -> bool:
    return hasattr(config, "workerinput")


def worker_gpu(worker_id: str, gpus: list[str]) -> str | None:
    """The GPU of xdist worker ``gwK``: ``gpus[K mod len(gpus)]`` (None without GPUs or a worker number)."""
    digits = worker_id[2:] if worker_id.startswith("gw") else ""
    if not gpus or not digits.isdigit():
        return None
    return gpus[int(digits) % len(gpus)]


def run_id(config: Any) -> str | None:
    """The controller's run id, on a worker (every worker writes rows for the same run)."""
    return config.workerinput.get(RUN) if is_worker(config) else None


def group_of(case: Any) -> str:
    """The xdist group of a claim case: its negative control's variant, else its spec (pairs share nodes)."""
    return f"variant:{case.control.variant}" if case.control is not None else f"claim:{case.spec.id}"


def payload(session: Any) -> dict[str, str]:
    """What a worker sends the controller: its rows and its metadata (JSON, so any transport carries it)."""
    meta = {}
    if session.results:
        meta = {k: v for k, v in session.meta().items() if k in ("seeds", "base_identity")}
    meta["diffs"] = bool(session._memo.get(("diffs",)))
    meta["preflight"] = [p.to_dict() for p in session.preflight()]
    meta["worker"] = {"id": os.environ.get("PYTEST_XDIST_WORKER", "?"), "gpu": os.environ.get("HARNESS_SLOT")}
    return {ROWS: json.dumps([r.to_dict() for r in session.results]), META: json.dumps(meta)}


def merge(session: Any, outputs: list[dict[str, Any]]) -> None:
    """Add every worker's rows to ``session`` (sorted by claim, pair, check and seed, as no worker order is
    meaningful) and take the workers' metadata."""
    from harness.findings.preflight import NodePreflight
    from harness.findings.verdict import ClaimResult

    rows, seeds = [], set(session.seeds)
    for out in outputs:
        rows += [ClaimResult.from_dict(d) for d in json.loads(out.get(ROWS, "[]"))]
        meta = json.loads(out.get(META, "{}"))
        seeds.update(meta.get("seeds", []))
        if meta.get("base_identity"):
            session.merged_meta["base_identity"] = meta["base_identity"]
        session.merged_meta["diffs"] = session.merged_meta.get("diffs", False) or meta.get("diffs", False)
        for p in meta.get("preflight", []):  # a node two workers read is listed once
            if NodePreflight.from_dict(p) not in session.merged_preflight:
                session.merged_preflight.append(NodePreflight.from_dict(p))
        if "worker" in meta:
            workers = session.merged_meta.setdefault("workers", {})
            workers[meta["worker"]["id"]] = meta["worker"]["gpu"]
            session.merged_meta["workers"] = dict(sorted(workers.items()))
    session.merged_preflight.sort(key=lambda p: (p.variant or "", p.seed or 0, p.node))
    session.seeds = sorted(seeds)
    session.record(rows)
    session.results.sort(key=lambda r: (r.claim, r.pair, r.check, -1 if r.seed is None else r.seed))


def _gpu_ids() -> list[str]:
    """``$HARNESS_DEVICES`` (the harness's devices; fake ones on the CPU), else the visible GPUs."""
    from harness.train.devices import ENV, parse_devices, visible_gpus

    return parse_devices(os.environ.get(ENV), f"${ENV}") or visible_gpus()


# ---- hooks (registered through the harness plugin's ``pytest_plugins``) ---------------------

@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per GPU (xdist's own default, one per CPU core, without GPUs)."""
    n = len(_gpu_ids())
    return n or None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if is_worker(config):  # before anything starts CUDA in this worker
        gpus = [g for g in config.workerinput.get(GPUS, "").split(",") if g]
        gpu = worker_gpu(config.workerinput.get("workerid", ""), gpus)
        if gpu is not None:
            from harness.train.devices import pin

            pin(gpu)
        return
    args = config.invocation_params.args
    chosen = any(str(a) == "--dist" or str(a).startswith("--dist=") for a in args)
    if getattr(config.option, "numprocesses", None) and not chosen and config.getoption("dist", "no") == "load":
        config.option.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Controller: hand each worker the run id and the GPU list it picks its own GPU from."""
    from harness.pytest_plugin import _SESSION

    fs = node.config.stash.get(_SESSION, None)
    if fs is not None:
        node.workerinput[RUN] = fs.options.run
    node.workerinput[GPUS] = ",".join(_gpu_ids())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """Controller: a worker finished; keep its rows until every worker is done."""
    from harness.pytest_plugin import _SESSION

    fs = node.config.stash.get(_SESSION, None)
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
