"""Nodes over device slots (fake "devices" on the CPU) and one node over two processes (DDP through
``accelerate launch``, gloo on the CPU): the scheduler, the pinning, the cache as the single source of truth."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.train import build, load_plan
from harness.train.devices import Slot, make_slots, schedule
from harness.train.gpus import parse_devices

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"
TINY = ROOT / "fixtures" / "plans" / "tiny.toml"


# ---- the scheduler alone (threads standing in for worker pools) ------------------------------

def run_schedule(plan, slots, work=0.05, gpus=lambda n: 1):
    """Schedule ``plan``'s trained nodes; returns (assignments, events) with (time, 'start'|'end', node, slots)."""
    events, lock = [], threading.Lock()
    pool = ThreadPoolExecutor(max_workers=16)

    def job(name, chosen):
        with lock:
            events.append((time.monotonic(), "start", name, chosen))
        time.sleep(work)
        with lock:
            events.append((time.monotonic(), "end", name, chosen))
        return True

    todo = [n for n in plan.names if plan.node(n).method != "base"]
    log = schedule(todo, lambda n: plan.node(n).parent, {plan.names[0]}, slots,
                   lambda n, ch: pool.submit(job, n, tuple(s.id for s in ch)), gpus)
    pool.shutdown()
    return log, events


def test_scheduler_runs_ready_nodes_on_free_slots_after_their_parents():
    plan = load_plan(TINY)  # base -> 5 children; sft_d1 and sft_d2 have 2 children each
    caps = {"0": 4, "1": 3}  # room for 7: more than the 5 nodes ready at first
    slots = [Slot(k, v) for k, v in caps.items()]
    log, events = run_schedule(plan, slots)
    assert sorted(a.node for a in log) == sorted(plan.names[1:]) and all(a.trained for a in log)
    ended = {}
    running = {"0": 0, "1": 0}
    for t, kind, name, chosen in sorted(events):
        (slot,) = chosen
        if kind == "start":
            parent = plan.node(name).parent
            assert parent == "base" or parent in ended, f"{name} started before its parent {parent} ended"
            running[slot] += 1
            assert running[slot] <= caps[slot], f"slot {slot} over its capacity"
        else:
            ended[name] = t
            running[slot] -= 1
    assert {a.slots[0] for a in log} == {"0", "1"}, "both slots got nodes"
    # The five ready nodes start at once, each on the slot with the most room left (ties: the first).
    assert [a.slots[0] for a in log[:5]] == ["0", "0", "1", "0", "1"]
    assert {a.node for a in log[:5]} == {n for n in plan.names if plan.node(n).parent == "base"}


def test_a_multi_gpu_node_takes_whole_idle_slots_and_too_wide_a_node_is_refused():
    plan = load_plan(MICRO)
    slots = [Slot("a", 2), Slot("b", 2)]
    log, events = run_schedule(plan, slots, gpus=lambda n: 2 if n == "dpo_d1@sft_d0" else 1)
    # the ORPO node, ready with the DPO node, waits while the DPO node holds both slots
    assert [(a.node, a.slots) for a in log] == [("sft_d0", ("a",)), ("dpo_d1@sft_d0", ("a", "b")),
                                                ("orpo_d1@sft_d0", ("a",))]
    with pytest.raises(HarnessError, match=r"node 'dpo_d1@sft_d0' asks for 3 GPUs; only 2 device\(s\) \(a, b\)"):
        run_schedule(plan, slots, gpus=lambda n: 3 if n == "dpo_d1@sft_d0" else 1)


def test_a_failed_node_raises_and_its_children_never_start():
    plan = load_plan(MICRO)
    pool = ThreadPoolExecutor(max_workers=2)
    started = []

    def start(name, chosen):
        started.append(name)
        return pool.submit(lambda: (_ for _ in ()).throw(RuntimeError(f"{name} broke")) if name == "sft_d0" else True)

    failed = []
    with pytest.raises(RuntimeError, match="sft_d0 broke"):
        schedule(["sft_d0", "dpo_d1@sft_d0"], lambda n: plan.node(n).parent, {"base"}, [Slot("a", 1)], start,
                 on_error=lambda name, error: failed.append((name, str(error))))
    assert started == ["sft_d0"]
    assert failed == [("sft_d0", "sft_d0 broke")]  # the build engine learns which node failed (fail fast)


def test_device_lists_and_slot_capacities():
    assert parse_devices("0, 1") == ["0", "1"] and parse_devices("") is None and parse_devices(None) is None
    with pytest.raises(HarnessError, match=r"--devices '0,,1': an empty device name"):
        parse_devices("0,,1")
    with pytest.raises(HarnessError, match=r"device '1' is listed twice"):
        parse_devices("1,0,1")
    assert make_slots("cpu", None) == [Slot("", 1)] and make_slots("cpu", 3) == [Slot("", 3)]
    assert make_slots("cpu", None, devices="a,b") == [Slot("a", 1), Slot("b", 1)]
    assert make_slots("cpu", 5, devices="a,b") == [Slot("a", 3), Slot("b", 2)]
    assert make_slots("cpu", 1, devices="a,b") == [Slot("a", 1)]


def test_the_cli_takes_its_devices_from_the_environment_and_names_a_bad_value(monkeypatch, capsys, tmp_path):
    """``$HARNESS_DEVICES`` is read once, by ``python -m harness fixtures build`` (the edge), not by the scheduler."""
    from harness.__main__ import main

    monkeypatch.setenv("HARNESS_DEVICES", "x,y,z")
    assert [s.id for s in make_slots("cpu", None)] == [""], "the scheduler itself reads no environment"
    monkeypatch.setenv("HARNESS_DEVICES", "x,x")
    assert main(["fixtures", "build", str(MICRO), "--device", "cpu", "--quiet",
                 "--fixtures-dir", str(tmp_path)]) == 2
    assert "$HARNESS_DEVICES 'x,x': device 'x' is listed twice" in capsys.readouterr().err


def test_worker_pools_start_at_once_and_warm_up_before_any_node(tmp_path):
    """A build opens its pools before the pre-flight: the workers start and import trl meanwhile; each is
    pinned to its slot and writes its output to the log it was given."""
    import multiprocessing

    from harness.train.devices import close_pools, open_pools

    log = tmp_path / "build.log"
    pools = open_pools([Slot("a", 2), Slot("b", 1)], n_nodes=5, worker_log=log)
    try:
        assert len(multiprocessing.active_children()) == 3, "every worker starts before a node is handed over"
        loaded = [pools[s].submit(eval, "'trl' in __import__('sys').modules").result(timeout=300) for s in "ab"]
        assert loaded == [True, True], "the workers imported trl's trainers while waiting"
        assert pools["a"].submit(eval, "__import__('os').environ['CUDA_VISIBLE_DEVICES']").result(timeout=60) == "a"
        pools["b"].submit(eval, "print('from slot b', flush=True)").result(timeout=60)
    finally:
        close_pools(pools)
    assert not multiprocessing.active_children()
    assert "from slot b" in log.read_text(encoding="utf-8")


# ---- real builds: micro plus a second child of the base, so two nodes are ready at once --------

def two_child_plan(tmp_path: Path) -> Path:
    text = MICRO.read_text(encoding="utf-8").split("[variants.", 1)[0]
    text += '\n[[nodes]]\nname = "sft_d1"\nmethod = "sft"\ndataset = "d1"\nparent = "base"\n'
    p = tmp_path / "micro2.toml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process reference: base and sft_d0 of the micro plan."""
    fx = tmp_path_factory.mktemp("single")
    graph = build(load_plan(MICRO), fixtures_dir=fx, device="cpu", progress=False, only="sft_d0")
    return graph


def own_copy(single, tmp_path: Path) -> Path:
    """A fixtures dir of this test's own, holding the single-process nodes: what another test trained over two
    processes into a shared dir would be found cached, and the test would not train it."""
    shutil.copytree(single.fixtures_dir / "nodes", tmp_path / "fx" / "nodes")
    return tmp_path / "fx"


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_two_builders_one_on_fake_slots_train_each_node_once_and_agree_with_one_process(tmp_path, single):
    import torch

    plan_file = two_child_plan(tmp_path)
    env = {**os.environ, "HARNESS_FIXTURES_DIR": str(tmp_path / "fx"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "harness", "fixtures", "build", str(plan_file), "--device", "cpu", "--quiet"]
    slotted = subprocess.Popen(cmd + ["--devices", "a,b"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    plain = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=400)[0] for p in (slotted, plain)]
    assert [p.returncode for p in (slotted, plain)] == [0, 0], outs
    trained = [set(o.split("\n", 1)[0].partition(": ")[2].split(", ")) - {""} for o in outs]
    plan = load_plan(plan_file)
    assert trained[0] | trained[1] == set(plan.names), outs
    assert not trained[0] & trained[1], f"a node was trained by both builders: {trained[0] & trained[1]}"
    graph = build(plan, fixtures_dir=tmp_path / "fx", device="cpu", progress=False)
    assert graph.trained == []
    for name in trained[0] - {"base"}:  # the slot builder's nodes trained in workers pinned to a slot
        worker = graph.meta(name)["worker"]
        assert worker["slot"] in ("a", "b") and worker["cuda_visible_devices"] == worker["slot"], worker
    # The same cache as one process: the same keys, and the same weights where both built a node.
    for name in ("base", "sft_d0"):
        assert graph.key(name) == single.key(name)
        a, b = weights(graph.path(name)), weights(single.path(name))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
    assert not any((tmp_path / "fx" / "tmp").iterdir())


def test_one_node_over_two_processes_matches_one_process(single, tmp_path):
    """gpus = 2: accelerate launch with 2 gloo processes on the CPU; each step sees the same global batch."""
    import torch

    from harness.train.distributed import with_gpus

    plan = with_gpus(load_plan(MICRO), 2)
    graph = build(plan, fixtures_dir=own_copy(single, tmp_path), device="cpu", progress=False, only="sft_d0")
    assert graph.trained == ["sft_d0"] and graph.key("sft_d0") != single.key("sft_d0")
    assert graph.key("base") == single.key("base")
    meta = graph.meta("sft_d0")
    assert meta["worker"]["launch"]["gpus"] == 2 and meta["train"]["gpus"] == 2
    config = json.loads((graph.path("sft_d0") / "_launch" / "accelerate.json").read_text())
    assert config["num_processes"] == 2 and config["distributed_type"] == "MULTI_GPU"
    one, two = single.log("sft_d0"), graph.log("sft_d0")
    assert len(one) == len(two) == meta["train"]["steps"] == 4, "the same number of optimizer steps"
    for a, b in zip(one, two):  # the same examples in every step: the same loss up to reduction order
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3), (a, b)
        assert b["num_tokens"] == a["num_tokens"]
    base = weights(graph.path("base"))
    d1 = torch.cat([(w - base[k]).flatten() for k, w in weights(single.path("sft_d0")).items()])
    d2 = torch.cat([(w - base[k]).flatten() for k, w in weights(graph.path("sft_d0")).items()])
    # LoRA dropout draws other masks per process: not the same bits, the same update within noise.
    assert torch.nn.functional.cosine_similarity(d1, d2, dim=0) > 0.5
    assert d2.norm() == pytest.approx(float(d1.norm()), rel=0.1)


def test_gpus_must_divide_the_global_batch():
    from harness.train.distributed import with_gpus

    with pytest.raises(HarnessError, match=r"micro\.toml: --gpus\.gpus: must be at least 1 and divide batch_size \(2\)"):
        with_gpus(load_plan(MICRO), 3)


def test_a_dpo_node_with_precomputed_reference_logps_trains_over_two_processes(single, tmp_path):
    """trl caches the reference log-probs in a file named from the dataset's cache folder; for an in-memory
    dataset that folder is each process's own, and rank 1 failed to open rank 0's file (the tiny plan's
    DPO nodes under gpus = 2, 2026-11-30). Over two gloo processes the losses match one process's."""
    from dataclasses import replace

    from harness.train.common import SHARED_DATA_DIR
    from harness.train.distributed import with_gpus

    plan = load_plan(MICRO)
    plan = replace(plan, dpo=replace(plan.dpo, precompute_ref_log_probs=True))
    fx = own_copy(single, tmp_path)
    one = build(plan, fixtures_dir=fx, device="cpu", progress=False, only="dpo_d1@sft_d0")
    two = build(with_gpus(plan, 2), fixtures_dir=fx, device="cpu", progress=False, only="dpo_d1@sft_d0")
    assert two.trained == ["sft_d0", "dpo_d1@sft_d0"] and two.meta("dpo_d1@sft_d0")["train"]["gpus"] == 2
    a, b = one.log("dpo_d1@sft_d0"), two.log("dpo_d1@sft_d0")
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-3), (x, y)
    assert not (two.path("dpo_d1@sft_d0") / SHARED_DATA_DIR).exists()


def test_a_failed_launch_names_the_exception_a_rank_raised():
    from harness.train.distributed import root_cause

    log = ("[rank1]: Traceback (most recent call last):\n[rank1]:   File \"x.py\", line 1, in <module>\n"
           "[rank1]: FileNotFoundError: [Errno 2] Failed to open local file '/tmp/hf_datasets-a/cache-b.arrow'\n"
           "[rank0]: RuntimeError: Connection closed by peer [127.0.0.1]:49820.\n"
           "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n  exitcode  : 1 (pid: 2202)\n")
    assert root_cause(log) == ("rank 1: FileNotFoundError: [Errno 2] Failed to open local file "
                               "'/tmp/hf_datasets-a/cache-b.arrow'; rank 0: RuntimeError: Connection closed by "
                               "peer [127.0.0.1]:49820.")
    assert root_cause("exitcode  : 1\n") == "no rank printed an exception"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores: the load-based choice gave 2 threads idle, 1 busy")
def test_cpu_weights_do_not_depend_on_the_machines_load(tmp_path, monkeypatch):
    """The same key, the same weights: the tiny base's pretraining summed over 2 threads (an idle machine)
    differs from 1 thread's (a busy one), and that moved C6 sft_d0 from 0.97 to 0.89 (2026-11-30)."""
    from dataclasses import replace

    import torch

    plan = load_plan(TINY)
    plan = replace(plan, tiny=replace(plan.tiny, pretrain_max_steps=4, pretrain_min_steps=2))
    threads = torch.get_num_threads()
    graphs = []
    try:
        for load in (0.0, 1.9):  # idle, then busy
            monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
            graphs.append(build(plan, fixtures_dir=tmp_path / str(load), device="cpu", only="base", progress=False,
                                jobs=1))
    finally:
        torch.set_num_threads(threads)
    assert graphs[0].key("base") == graphs[1].key("base")
    a, b = (weights(g.path("base")) for g in graphs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert graphs[0].meta("base")["worker"]["torch_threads"] == 1


def test_a_variants_nodes_train_in_the_same_waves_as_the_plans(single, tmp_path):
    """build_graphs over the plan and a variant (zero_dpo changes only the DPO node's key) on two fake slots:
    the nodes both graphs share (base, sft_d0) train once; the variant's DPO node starts as soon as sft_d0 is
    built, beside the plan's DPO node, not after the whole plan's graph; both graphs get their own keys."""
    from harness.train.graph import BuildRequest, build_graphs

    plan = load_plan(MICRO)
    variant = plan.variant("zero_dpo")
    dpo = "dpo_d1@sft_d0"
    events: list[tuple[float, str, str, str]] = []

    def hear(which):
        return lambda name, event: events.append((time.monotonic(), which, name, event))

    main_g, var_g = build_graphs([BuildRequest(plan, [dpo], hear("plan")), BuildRequest(variant, [dpo], hear("variant"))],
                                 fixtures_dir=own_copy(single, tmp_path), device="cpu", progress=False, devices="a,b")
    assert main_g.trained == [dpo] and var_g.trained == [dpo]  # base and sft_d0: cached by `single`
    assert var_g.key("sft_d0") == main_g.key("sft_d0") == single.key("sft_d0") and var_g.key(dpo) != main_g.key(dpo)
    at = {(which, event): t for t, which, name, event in events if name == dpo}
    assert set(at) == {("plan", "start"), ("plan", "built"), ("variant", "start"), ("variant", "built")}, events
    assert max(at["plan", "start"], at["variant", "start"]) < min(at["plan", "built"], at["variant", "built"]), events
    assert {main_g.meta(dpo)["worker"]["slot"], var_g.meta(dpo)["worker"]["slot"]} == {"a", "b"}
    assert main_g.timeline["nodes"] == var_g.timeline["nodes"] > 0


def test_a_node_two_graphs_share_trains_once_and_the_other_hears_it_found(tmp_path):
    """Cold: the plan and its zero_dpo variant want sft_d0 and the DPO node; base and sft_d0 (the same keys in
    both) train once, in the plan's build, and the variant hears "found" for each as it ends; its DPO waits for
    sft_d0."""
    from harness.train.graph import BuildRequest, build_graphs

    plan = load_plan(MICRO)
    dpo = "dpo_d1@sft_d0"
    heard: dict[str, list[tuple[str, str]]] = {"plan": [], "variant": []}
    main_g, var_g = build_graphs([BuildRequest(plan, [dpo], lambda n, e: heard["plan"].append((n, e))),
                                  BuildRequest(plan.variant("zero_dpo"), [dpo],
                                               lambda n, e: heard["variant"].append((n, e)))],
                                 fixtures_dir=tmp_path / "fx", device="cpu", progress=False, devices="a,b")
    assert main_g.trained == ["base", "sft_d0", dpo] and var_g.trained == [dpo]
    # the shared nodes are found as they end in the plan's build, before the variant's own node starts
    assert heard["variant"] == [("base", "found"), ("sft_d0", "found"), (dpo, "start"), (dpo, "built")]
    assert var_g.meta(dpo)["started_unix"] >= main_g.meta("sft_d0")["started_unix"] + main_g.meta("sft_d0")["wall_seconds"]
    assert len(list((tmp_path / "fx" / "nodes").glob("sft_d0-*"))) == 1


# ---- after-work: what the build runs on a slot once a node exists (BuildRequest.after) -------------

def mark_after(tag: str, graph, name: str) -> None:
    """An after-work that leaves a file saying when and where it ran and whether its node was built then; the
    ``fail`` tag raises after that."""
    folder = Path(graph.fixtures_dir) / "after"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}-{os.getpid()}-{time.monotonic_ns()}.json").write_text(json.dumps(
        {"node": name, "built": graph.is_built(name), "unix": time.time(), "pid": os.getpid(),
         "slot": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    if tag == "fail":
        raise RuntimeError(f"the after-work of {name} broke")


def marks(fx: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((fx / "after").glob("*.json"))]


def test_after_work_runs_once_per_node_after_it_on_the_slots_and_its_failure_fails_no_build(single, tmp_path):
    """On two fake slots, base and sft_d0 cached: the DPO node trains and its after-work runs on a slot after it;
    the cached base and sft_d0 get a unit of their own that trains nothing; sft_d0's after-work
    raises: the build still returns, the error is in the graph and in the workers' log, with the node's name."""
    from functools import partial

    from harness.train.graph import BuildRequest, build_graphs

    plan = load_plan(MICRO)
    dpo = "dpo_d1@sft_d0"
    fx, log = own_copy(single, tmp_path), tmp_path / "workers.log"
    heard: list[tuple[str, str]] = []
    after = {"base": partial(mark_after, "ok"), "sft_d0": partial(mark_after, "fail"), dpo: partial(mark_after, "ok")}
    (graph,) = build_graphs([BuildRequest(plan, [dpo], lambda n, e: heard.append((n, e)), after=after)],
                            fixtures_dir=fx, device="cpu", progress=False, devices="a,b", worker_log=log)
    assert graph.trained == [dpo] and heard == [(dpo, "start"), (dpo, "built")], heard
    got = marks(fx)
    assert sorted(m["node"] for m in got) == sorted(after), got  # once per node asked
    assert all(m["built"] and m["slot"] in ("a", "b") and m["pid"] != os.getpid() for m in got), got
    meta = graph.meta(dpo)
    [dpo_mark] = [m for m in got if m["node"] == dpo]
    assert dpo_mark["unix"] >= meta["started_unix"] + meta["wall_seconds"], "after-work ran before its node was built"
    assert set(graph.after_s) == set(after) and list(graph.after_errors) == ["sft_d0"], graph.after_errors
    assert "the after-work of sft_d0 broke" in graph.after_errors["sft_d0"]
    text = log.read_text(encoding="utf-8")
    assert "after-work of node 'sft_d0' (micro) failed" in text and "RuntimeError" in text, text[-2000:]


def test_a_nodes_children_train_before_its_after_work(single, tmp_path):
    """One fake slot of one node, only the base cached: sft_d0 trains, then its child, and only then sft_d0's
    after-work (a unit of its own waiting for sft_d0, the lowest priority): a child never waits for its parent's
    after-work."""
    from functools import partial

    from harness.train.graph import BuildRequest, build_graphs

    plan = load_plan(MICRO)
    dpo = "dpo_d1@sft_d0"
    fx = tmp_path / "fx"
    shutil.copytree(single.fixtures_dir / "nodes", fx / "nodes", ignore=shutil.ignore_patterns("sft_d0-*"))
    (graph,) = build_graphs([BuildRequest(plan, [dpo], after={"sft_d0": partial(mark_after, "ok")})],
                            fixtures_dir=fx, device="cpu", progress=False, devices="a")
    assert graph.trained == ["sft_d0", dpo]
    [mark] = marks(fx)
    assert mark["node"] == "sft_d0" and mark["built"], mark
    assert graph.meta(dpo)["started_unix"] < mark["unix"], "the child waited for its parent's after-work"
    assert list(graph.after_s) == ["sft_d0"]


def test_after_work_in_process_runs_after_each_node(single, tmp_path):
    """One job on the CPU (no slots): the after-work runs in this process, after the node it follows; the
    cached base's too, after the trained node (the lowest priority)."""
    from functools import partial

    from harness.train.graph import BuildRequest, build_graphs

    plan = load_plan(MICRO)
    dpo = "orpo_d1@sft_d0"
    fx = own_copy(single, tmp_path)
    (graph,) = build_graphs([BuildRequest(plan, [dpo], after={"base": partial(mark_after, "ok"),
                                                              dpo: partial(mark_after, "ok")})],
                            fixtures_dir=fx, device="cpu", progress=False)
    got = marks(fx)
    assert [m["node"] for m in sorted(got, key=lambda m: m["unix"])] == [dpo, "base"], got
    assert all(m["built"] and m["pid"] == os.getpid() for m in got), got
    assert set(graph.after_s) == {"base", dpo} and not graph.after_errors


def test_after_work_of_cached_nodes_waits_for_the_ready_training(single, tmp_path):
    """One fake slot of one node: the DPO node (ready: sft_d0 is cached) trains first, with its after-work; the
    cached nodes' after-work units (the lowest priority) run after it."""
    from functools import partial

    from harness.train.graph import BuildRequest, build_graphs

    plan = load_plan(MICRO)
    dpo = "dpo_d1@sft_d0"
    fx = own_copy(single, tmp_path)
    after = {"base": partial(mark_after, "ok"), "sft_d0": partial(mark_after, "ok"), dpo: partial(mark_after, "ok")}
    (graph,) = build_graphs([BuildRequest(plan, [dpo], after=after)], fixtures_dir=fx, device="cpu", progress=False,
                            devices="a")
    got = sorted(marks(fx), key=lambda m: m["unix"])
    assert [m["node"] for m in got] == [dpo, "base", "sft_d0"] and {m["slot"] for m in got} == {"a"}, got
    assert graph.trained == [dpo]
