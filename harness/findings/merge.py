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
(or with ``-n 0``) nothing here runs. The hooks are pytest glue and live in :mod:`harness.xdist_plugin`;
this module holds what they call.
"""

from __future__ import annotations

import json
from typing import Any

ROWS = "harness_rows"
META = "harness_meta"
GPUS = "harness_gpus"
RUN = "harness_run"


def is_worker(config: Any) -> bool:
    return hasattr(config, "workerinput")


def worker_slot(config: Any) -> str | None:
    """The GPU this pytest-xdist worker is pinned to (:func:`worker_gpu` of the list the controller handed it);
    None in the controller or a run without workers."""
    if not is_worker(config):
        return None
    gpus = [g for g in config.workerinput.get(GPUS, "").split(",") if g]
    return worker_gpu(config.workerinput.get("workerid", ""), gpus)


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


def payload(session: Any, worker: str = "?") -> dict[str, str]:
    """What worker ``worker`` (``gwK``) sends the controller: its rows and its metadata (JSON, so any
    transport carries it); its GPU is the session's device slot."""
    meta = {}
    if session.results:
        meta = {k: v for k, v in session.meta().items() if k in ("seeds", "base_identity")}
    meta["diffs"] = session.computed_diffs()
    meta["preflight"] = [p.to_dict() for p in session.preflight()]
    meta["worker"] = {"id": worker, "gpu": session.options.slot}
    meta["failures"] = session.build_failures()  # a node a worker failed to build: the controller's summary names it
    return {ROWS: json.dumps([r.to_dict() for r in session.results]), META: json.dumps(meta)}


def merge(session: Any, outputs: list[dict[str, Any]]) -> None:
    """Hand every worker's rows and metadata to ``session`` (:meth:`FindingsSession.take_worker`)."""
    from harness.findings.preflight import NodePreflight
    from harness.findings.verdict import ClaimResult

    for out in outputs:
        meta = json.loads(out.get(META, "{}"))
        session.take_worker([ClaimResult.from_dict(d) for d in json.loads(out.get(ROWS, "[]"))],
                            seeds=meta.get("seeds", []), base_identity=meta.get("base_identity"),
                            diffs=meta.get("diffs", False),
                            preflight=[NodePreflight.from_dict(p) for p in meta.get("preflight", [])],
                            worker=meta.get("worker"), failures=meta.get("failures", []))
