"""``--executor ray``: the nodes of a build as Ray tasks, on one host or a cluster.

Each node to build is one Ray task asking for what its plan needs: on the CPU one CPU (``gpus = N``: N CPUs); on
CUDA a fraction of a GPU (``gpu_fraction``, so several small nodes share one GPU) or, for a node with ``gpus = N``
in its recipe, N whole GPUs, on which the task runs ``accelerate launch`` (:mod:`harness.train.distributed`). A
node's task takes its parent's task as an argument: Ray starts it once the parent is built, and a parent that failed
fails it with the parent's error without running it.

Every task calls :func:`harness.train.node.locked_build`, the function the embedded executor's workers call, so the
keys, the temp folders, the atomic commit and the per-node locks are the same. The fixtures dir must be the same
path on every Ray host (a shared filesystem, docs/multigpu.md): a task checks that it sees the fixtures dir and its
parent's folder, and says which host lacks them. Ray is imported only here, and only when this executor runs.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from harness.config import EXECUTORS
from harness.errors import HarnessError
from harness.train.devices import trained_of

__all__ = ["EXECUTORS", "build_with_ray", "check_executor", "connect", "require_ray"]
#: How to get Ray (``.[ray]`` pins it through constraints.txt).
INSTALL_HINT = 'pip install -c constraints.txt -e ".[ray]"'


def require_ray() -> Any:
    """The ``ray`` module, or one HarnessError (exit 2 from the CLI) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise HarnessError(f"--executor ray needs Ray, which is not installed here; install it with: {INSTALL_HINT} "
                           f"(or use the default --executor embedded)") from None
    return ray


def check_executor(executor: str, ray_address: str | None = None) -> None:
    """A known executor, and a Ray address only for the Ray executor; raises HarnessError naming the option."""
    if executor not in EXECUTORS:
        raise HarnessError(f"--executor {executor!r}: not one of {', '.join(EXECUTORS)}")
    if ray_address and executor != "ray":
        raise HarnessError(f"--ray-address {ray_address!r} was given, but the executor is {executor!r}; "
                           f"add --executor ray")
    if executor == "ray":
        require_ray()


def connect(address: str | None = None, log_to_driver: bool = True) -> Any:
    """Ray, initialised in this process: joined to ``address`` (a ``ray start`` head, ``auto``, ``ray://...``), else
    to ``$RAY_ADDRESS`` or a local instance started with ``ray start``, else a new local instance. A process that
    already called ``ray.init`` keeps its instance."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=log_to_driver)
    return ray


def default_gpu_fraction(device: str, base_dir: Path | None) -> float:
    """The share of one GPU a single-GPU node asks for: 1 / the nodes one GPU of this host holds
    (:func:`harness.train.devices.per_gpu_capacity`); 1 when this host sees no GPU or the device is the CPU."""
    if device != "cuda":
        return 0.0
    from harness.train.devices import per_gpu_capacity
    from harness.train.gpus import visible_gpus

    gpus = visible_gpus()
    return 1.0 / per_gpu_capacity(gpus[0], base_dir, 1) if gpus else 1.0


def node_resources(plan: Any, name: str, device: str, gpu_fraction: float) -> dict[str, float]:
    """Ray's ``num_cpus`` and ``num_gpus`` for node ``name``: on the CPU one core per process (``gpus = N``: N
    gloo processes); on CUDA a share of one GPU, or N whole GPUs, and two cores per GPU process."""
    from harness.train.distributed import gpus_of

    node = plan.node(name)
    n = 1 if node.method == "base" else gpus_of(plan.recipe(name))
    if device != "cuda":
        return {"num_cpus": n, "num_gpus": 0}
    # two cores per GPU process, as the embedded executor's per-GPU capacity assumes (a launch-bound step)
    return {"num_cpus": 2 * n, "num_gpus": float(n) if n > 1 else gpu_fraction}


@contextlib.contextmanager
def _output_to(log_path: str | None) -> Iterator[None]:
    """This task's stdout and stderr appended to ``log_path`` (the session log, as the embedded workers write),
    when that file's folder exists on this host; back to the worker's own output after."""
    if not log_path or not Path(log_path).parent.is_dir():
        yield
        return
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def build_task(graph: Any, name: str, key_inputs: dict, forced: bool, check: dict | None, log_path: str | None,
               afters: tuple = (), *parents: Any) -> Any:
    """One node, inside a Ray worker: :func:`harness.train.node.run_unit` (the node's build, then its after-work)
    on the GPUs Ray gave the task. ``parents`` are the parent task's result: taking it makes Ray run this task
    after the parent. Returns a :class:`harness.train.node.UnitResult`."""
    import ray

    from harness.train.distributed import gpus_of
    from harness.train.gpus import choose_threads
    from harness.train.node import run_unit

    host = platform.node()
    if not graph.store.root.is_dir():
        raise HarnessError(f"node {name!r} on Ray host {host}: the fixtures dir {graph.store.root} does not exist "
                           f"there; mount the same fixtures dir at the same path on every Ray host "
                           f"(docs/multigpu.md)")
    parent = graph.plan.node(name).parent
    if parent is not None and not graph.is_built(parent):
        raise HarnessError(f"node {name!r} on Ray host {host}: its parent {parent!r} is not at {graph.path(parent)} "
                           f"there; the fixtures dir (and a path base) must be shared by every Ray host "
                           f"(docs/multigpu.md)")
    gpu_ids = tuple(str(i) for i in ray.get_gpu_ids())
    if graph.device == "cuda":
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
    else:
        choose_threads(1)  # the CPU: one thread, the embedded executor's rule (bit-identical weights)
    node = graph.plan.node(name)
    ddp = node.method != "base" and gpus_of(graph.plan.recipe(name)) > 1
    with _output_to(log_path):
        return run_unit(graph, name, key_inputs, forced, False, check, ",".join(gpu_ids) or None,
                        gpu_ids if ddp else (), afters)


def _cause(ray: Any, name: str, exc: BaseException) -> BaseException:
    """The node's own error out of Ray's wrapper; a task that ended without one (its worker died): a HarnessError."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return HarnessError(f"node {name!r}: its Ray task ended without a result ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing of it was committed")


def build_with_ray(units: Sequence[Any], bar: Any, tell: Callable[[Any, str], None],
                   on_error: Callable[[Any, BaseException], None] | None = None, *, address: str | None = None,
                   gpu_fraction: float | None = None, worker_log: str | Path | None = None,
                   max_retries: int | None = None,
                   on_result: Callable[[Any, Any], None] | None = None) -> list[int]:
    """Build ``units`` (:class:`harness.train.devices.Unit`: the nodes of one graph or several, parents first) as
    Ray tasks, each after its parent's task; returns the indices of the units this build trained, in the order
    they ended.

    ``tell(unit, event)`` hears ``"start"`` as a node's parent is done (Ray may still queue it for resources) and
    ``"built"``/``"found"`` as it ends, the bar advances the same; ``on_error(unit, error)`` hears of each node
    whose own task raised (a dependant of a failed node fails with that error and is not reported again). The
    first such error is raised once every other task has ended. ``gpu_fraction`` (default
    :func:`default_gpu_fraction`) is the share of a GPU a single-GPU node asks for on CUDA; ``max_retries``
    overrides Ray's retries of a task whose worker died (a retry starts the node afresh: its lock and temp
    folder died with the worker).

    A unit's after-work (``Unit.afters``) runs in its node's task, right after the node; ``on_result(unit,
    result)`` hears each task's :class:`harness.train.node.UnitResult` (its after-work's seconds). Units that
    only run after-work (``train`` False: nodes already built) are not Ray's: the caller leaves that work to
    whoever reads it (the claims session's main process)."""
    ray = connect(address, log_to_driver=worker_log is None)
    first_graph = units[0].graph
    if gpu_fraction is None:
        gpu_fraction = default_gpu_fraction(first_graph.device, first_graph.path(first_graph.plan.nodes[0].name)
                                            if first_graph.plan.base != "tiny" else None)
    if first_graph.device == "cuda" and not 0 < gpu_fraction <= 1:
        raise HarnessError(f"--ray-gpu-fraction {gpu_fraction}: give a share of one GPU, 0 < F <= 1")
    asks = [node_resources(u.graph.plan, u.name, u.graph.device, gpu_fraction) for u in units]
    have = ray.cluster_resources()
    for u, ask in zip(units, asks):
        for what, key in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
            if ask[what] > have.get(key, 0):
                raise HarnessError(f"node {u.label()!r} asks Ray for {ask[what]:g} {key}(s); the cluster has "
                                   f"{have.get(key, 0):g}")
    remote = ray.remote(build_task)
    shared: dict[int, Any] = {}  # each graph put in Ray's object store once
    log_path = str(worker_log) if worker_log else None
    refs: list[Any] = []
    for u, ask in zip(units, asks):
        if id(u.graph) not in shared:
            shared[id(u.graph)] = ray.put(u.graph)
        options: dict[str, Any] = {"name": f"fixtures:{u.label()}", **ask}
        if max_retries is not None:
            options["max_retries"] = max_retries
        deps = [refs[u.parent]] if u.parent is not None else []
        refs.append(remote.options(**options).remote(shared[id(u.graph)], u.name, u.inputs, u.forced, u.check,
                                                     log_path, u.afters, *deps))
    waiting = {ref: i for i, ref in enumerate(refs)}
    failed: dict[int, BaseException] = {}
    trained: list[int] = []
    first: BaseException | None = None
    running: set[int] = set()

    def start(i: int) -> None:
        running.add(i)
        tell(units[i], "start")
        bar.set_postfix(running=",".join(sorted(units[j].label() for j in running)))

    for i, u in enumerate(units):
        if u.parent is None:
            start(i)
    try:
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            for ref in ready:
                i = waiting.pop(ref)
                running.discard(i)
                try:
                    built = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    failed[i] = error = _cause(ray, units[i].name, exc)
                    if units[i].parent not in failed:  # its own error, not its parent's passed on
                        first = first or error
                        if on_error is not None:
                            on_error(units[i], error)
                    continue
                if on_result is not None:
                    on_result(units[i], built)
                built = trained_of(built)
                if built:
                    trained.append(i)
                bar.update()
                tell(units[i], "built" if built else "found")
                for j, child in enumerate(units):
                    if child.parent == i:
                        start(j)
    except BaseException:  # an interrupt: the tasks not ended are cancelled (their temp folders go)
        for ref in waiting:
            ray.cancel(ref)
        raise
    if first is not None:
        raise first
    return trained
