"""Nodes over GPUs: device slots, one worker pool per slot pinned with ``CUDA_VISIBLE_DEVICES``, and the
scheduler that hands each ready node (parent done) to the slot with the most room.

A *slot* is one GPU (its id as ``CUDA_VISIBLE_DEVICES`` spells it) holding ``capacity`` nodes at once. On a
machine without GPUs, ``devices = "a,b"`` names fake slots: the same scheduler, the same pinning, CPU
training. A node with ``gpus = N`` in its recipe (see :mod:`harness.train.distributed`) takes N whole idle slots and trains through
``accelerate launch`` from the main process. The fixture cache and its per-node locks stay the single
source of truth: a slot only decides *where* a node trains, never whether it does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.errors import HarnessError
from harness.train.gpus import parse_devices, visible_gpus, worker_init


@dataclass(frozen=True)
class Slot:
    """One device: ``id`` as ``CUDA_VISIBLE_DEVICES`` names it ("" = not pinned), nodes it holds at once."""

    id: str
    capacity: int


def _split(total: int, n: int) -> list[int]:
    """``total`` nodes over ``n`` slots, as evenly as possible (the first slots get the remainder)."""
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def make_slots(device: str, jobs: int | None, base_dir: Path | None = None,
               devices: str | Sequence[str] | None = None) -> list[Slot]:
    """The slots a build uses.

    ``devices`` (else every visible GPU on CUDA) names them; without any, one
    unpinned slot of ``jobs`` (default 1). ``jobs`` is the total over all slots; by default each GPU holds
    as many nodes as its free memory allows (:func:`per_gpu_capacity`), each fake slot one.
    """
    names = parse_devices(devices)
    if names is None and device == "cuda":
        names = visible_gpus() or None
    if names is None:
        return [Slot("", max(1, jobs or 1))]
    if jobs is not None:
        return [Slot(s, c) for s, c in zip(names, _split(max(1, int(jobs)), len(names))) if c > 0]
    if device != "cuda":
        return [Slot(s, 1) for s in names]
    return [Slot(s, per_gpu_capacity(s, base_dir, len(names))) for s in names]


def per_gpu_capacity(gpu: str, base_dir: Path | None, n_gpus: int) -> int:
    """Nodes one GPU holds at once: a small trainer is launch-bound and leaves a GPU idle, so several
    share it while its free memory holds them (a node needs about 2.5x its base's weight files, for the
    merge, plus 3 GiB) and the host has two cores per worker; the tiny base (a few MiB) by the cores alone."""
    import torch

    cores = os.cpu_count() or 1
    if base_dir is None:  # the tiny plan's 11 nodes (with the controls') in two rounds on a 16-core host, not three
        return max(1, cores // 2 // n_gpus)
    weights = sum(f.stat().st_size for f in Path(base_dir).glob("*.safetensors"))
    need = 2.5 * weights + 3 * 2**30
    index = visible_gpus().index(gpu) if gpu in visible_gpus() else 0
    free = torch.cuda.mem_get_info(index)[0]
    return max(1, min(max(1, cores // 2 // n_gpus), int(0.9 * free // need)))


def needs_launch(plan: Any, names: Sequence[str]) -> bool:
    """Whether any of ``names`` trains over several GPUs (and so goes through the slot scheduler)."""
    from harness.train.distributed import gpus_of

    return any(plan.node(n).method != "base" and gpus_of(plan.recipe(n)) > 1 for n in names)


def is_here(slot: Slot, device: str) -> bool:
    """Whether this process already trains on ``slot`` (no worker needed): an unpinned slot, or on CUDA the
    first GPU this process sees (where an in-process build puts the model; a process pinned to one GPU
    sees only that one)."""
    return not slot.id or (device == "cuda" and visible_gpus()[:1] == [slot.id])


# ---------------------------------------------------------------------------- the scheduler

@dataclass
class Assignment:
    """Which node ran on which slot(s), in start order."""

    node: str
    slots: tuple[str, ...]
    trained: bool = False  # False: another builder had built it (the lock), or it failed
    result: Any = None  # what its task returned (a harness.train.node.UnitResult in a build)


def trained_of(result: Any) -> bool:
    """Whether a task's result says it trained its node: a :class:`~harness.train.node.UnitResult`'s
    ``trained``, else anything but False."""
    return getattr(result, "trained", result) is not False


def schedule(todo: Sequence[str], parent_of: Callable[[str], str | None], done: set[str], slots: Sequence[Slot],
             start: Callable[[str, tuple[Slot, ...]], Any], gpus_of: Callable[[str], int] = lambda n: 1,
             on_change: Callable[[dict[str, tuple[str, ...]]], None] | None = None,
             on_error: Callable[[str, BaseException], None] | None = None,
             label: Callable[[Any], str] = str) -> list[Assignment]:
    """Run ``todo`` (parents first) on ``slots``: a node starts when its parent is in ``done`` and a slot has
    room (the one with the most free room; a ``gpus_of(node) = N`` node takes N idle slots). ``start``
    returns a ``concurrent.futures.Future``; a failed node's error is raised (the others finish first), and
    ``on_error(node, error)`` hears of each failed node as it fails; ``label(node)`` names a node in errors."""
    from concurrent.futures import FIRST_COMPLETED, wait

    free = {s.id: s.capacity for s in slots}
    cap = dict(free)
    order = [s.id for s in slots]
    by_id = {s.id: s for s in slots}
    pending = list(todo)
    running: dict[Any, tuple[str, tuple[str, ...]]] = {}
    log: list[Assignment] = []
    entry: dict[str, Assignment] = {}
    widest = len(slots)
    for name in pending:
        if gpus_of(name) > widest:
            raise HarnessError(f"node {label(name)!r} asks for {gpus_of(name)} GPUs; only {widest} device(s) "
                               f"({', '.join(order) or 'one'}) are available")
    error: BaseException | None = None
    while pending or running:
        for name in list(pending) if error is None else []:
            parent = parent_of(name)
            if parent is not None and parent not in done:
                continue
            k = gpus_of(name)
            if k > 1:
                idle = [s for s in order if free[s] == cap[s]][:k]
                if len(idle) < k:
                    continue
                chosen = tuple(idle)
                for s in chosen:
                    free[s] = 0
            else:
                best = max(order, key=lambda s: (free[s], -order.index(s)))
                if free[best] <= 0:
                    continue
                chosen = (best,)
                free[best] -= 1
            running[start(name, tuple(by_id[s] for s in chosen))] = (name, chosen)
            log.append(Assignment(name, chosen))
            entry[name] = log[-1]
            pending.remove(name)
        if not running:
            break
        if on_change is not None:
            on_change({n: s for n, s in running.values()})
        finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for fut in finished:
            name, chosen = running.pop(fut)
            for s in chosen:
                free[s] = cap[s] if len(chosen) > 1 else free[s] + 1
            exc = fut.exception()
            if exc is not None:
                error = error or exc
                if on_error is not None:
                    on_error(name, exc)
            else:
                entry[name].result = fut.result()
                entry[name].trained = trained_of(entry[name].result)
                done.add(name)
    if error is not None:
        raise error
    if pending:
        raise HarnessError(f"nodes {', '.join(map(label, pending))} could not start: their parents were not built")
    return log


def warm_worker() -> None:
    """Import what training needs (torch, transformers, trl's trainers, peft), so that workers started while
    the parent pre-flights the nodes begin their first node with it loaded."""
    import peft  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from trl import DPOTrainer, SFTTrainer  # noqa: F401

    from harness.train import dpo, sft  # noqa: F401


def open_pools(slots: Sequence[Slot], n_nodes: int, worker_log: str | Path | None = None) -> dict[str, Any]:
    """One spawned worker pool per slot (pinned to it), its workers started at once and warming up
    (:func:`warm_worker`) while this process carries on. ``worker_log``: a file the workers write their
    output to instead of this process's stdout (see :func:`harness.train.gpus.worker_init`)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    total = sum(s.capacity for s in slots)
    pools = {s.id: ProcessPoolExecutor(max_workers=s.capacity, mp_context=ctx, initializer=worker_init,
                                       initargs=(s.id, total, worker_log)) for s in slots}
    for s in slots:
        for _ in range(min(s.capacity, n_nodes)):  # a spawn pool starts one worker per waiting task
            pools[s.id].submit(warm_worker)
    return pools


def close_pools(pools: dict[str, Any]) -> None:
    """Shut ``pools`` down, dropping tasks not started."""
    for pool in pools.values():
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Unit:
    """One node a build trains: its graph and name, key inputs, whether it is forced, its pre-flight, the unit
    it waits for (its parent's, an index into the build's units; None: the parent is built already) and the
    graph's index in the build (:func:`harness.train.graph.build_graphs`). ``afters`` is the work run once the
    node exists (``(graph, name, fn)``, :data:`harness.train.node.After`); a unit with ``train`` False only
    runs that work, for a node trained by its parent unit or already built (it comes after every training unit:
    the lowest priority)."""

    graph: Any
    name: str
    inputs: dict
    forced: bool
    check: dict | None
    parent: int | None
    graph_index: int = 0
    afters: tuple = ()
    train: bool = True

    def label(self) -> str:
        v = self.graph.plan.variant_name
        name = self.name if self.train else f"{self.name}(after)"
        return name if self.graph_index == 0 else f"{name}[{v or self.graph.plan.seed}]"


def build_on_slots(units: Sequence[Unit], slots: Sequence[Slot], bar: Any, pools: dict[str, Any] | None = None,
                   worker_log: str | Path | None = None, tell: Callable[[Unit, str], None] = lambda u, event: None,
                   on_error: Callable[[Unit, BaseException], None] | None = None) -> list[Assignment]:
    """Train ``units`` (of one graph or several) over ``slots``: the slots' worker pools (``pools`` from
    :func:`open_pools`, else opened here), multi-GPU nodes through ``accelerate launch`` from a thread of this
    process on the slots they were given. ``tell(unit, event)`` hears of each node's start and end here,
    ``on_error(unit, error)`` of each node that failed (see :func:`harness.train.graph.build`). A unit's
    after-work runs in its task after its node, if any; a unit that trains nothing is not told of. The assignments name the units by their index."""
    from concurrent.futures import ThreadPoolExecutor

    from harness.train import distributed
    from harness.train.node import run_unit

    pools = pools if pools is not None else open_pools(slots, len(units), worker_log)
    threads = ThreadPoolExecutor(max_workers=max(1, len(slots)))

    def gpus_of(i: int) -> int:
        u = units[i]
        if not u.train or u.graph.plan.node(u.name).method == "base":
            return 1
        return distributed.gpus_of(u.graph.plan.recipe(u.name))

    pinned = any(s.id for s in slots)  # unpinned (the CPU): a multi-process node takes one slot

    futures: dict[int, Any] = {}

    def start(i: int, chosen: tuple[Slot, ...]) -> Any:
        u = units[i]
        args = (u.graph, u.name, u.inputs, u.forced, False, u.check)
        if u.train:
            tell(u, "start")
        if gpus_of(i) > 1:  # from a thread here, launching on the slots it was given
            futures[i] = threads.submit(run_unit, *args, None, tuple(s.id for s in chosen if s.id), u.afters)
        else:
            futures[i] = pools[chosen[0].id].submit(run_unit, *args, chosen[0].id or None, (), u.afters, u.train)
        return futures[i]

    def show(running: dict[int, tuple[str, ...]]) -> None:
        bar.set_postfix(running=",".join(sorted(f"{units[i].label()}@{'+'.join(s) or '-'}"
                                                for i, s in running.items())))

    class _Done(set):  # advances the bar as nodes finish
        def add(self, item: int) -> None:
            super().add(item)
            if units[item].train:
                bar.update()
                tell(units[item], "built" if trained_of(futures[item].result()) else "found")

    try:
        return schedule(list(range(len(units))), lambda i: units[i].parent, _Done(), slots, start,
                        gpus_of if pinned else (lambda i: 1), show,
                        None if on_error is None else (lambda i, exc: on_error(units[i], exc)),
                        label=lambda i: units[i].label())
    finally:
        threads.shutdown(wait=True)
        close_pools(pools)
