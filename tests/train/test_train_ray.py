"""``--executor ray``: the micro plan as Ray tasks on a local 2-CPU Ray instance gives the embedded executor's keys
and bit-identical weights; a failing node fails its dependants; a worker killed mid-node commits nothing partial.
The tests that need Ray skip without it (``pip install -e ".[ray]"``; ``.[test]`` includes it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.train import build, load_plan
from harness.train.keys import plan_keys
from harness.train.preflight import PreflightError
from harness.train.store import META_FILE

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"
NO_RAY = 'ray is not installed (pip install -c constraints.txt -e ".[ray]")'


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance of 2 CPUs for this module, shut down after it."""
    ray = pytest.importorskip("ray", reason=NO_RAY)
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The micro plan built by the embedded executor (the reference)."""
    pytest.importorskip("ray", reason=NO_RAY)
    return build(load_plan(MICRO), fixtures_dir=tmp_path_factory.mktemp("embedded"), device="cpu", progress=False)


@pytest.fixture(scope="module")
def on_ray(ray_local, tmp_path_factory):
    """The micro plan built as Ray tasks, with the events ``on_node`` heard."""
    events: list[tuple[str, str]] = []
    graph = build(load_plan(MICRO), fixtures_dir=tmp_path_factory.mktemp("ray"), device="cpu", progress=False,
                  executor="ray", on_node=lambda name, event: events.append((name, event)))
    return graph, events


def weight_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def test_ray_builds_the_micro_plan_with_the_embedded_keys_and_bit_identical_weights(embedded, on_ray):
    graph, events = on_ray
    assert graph.trained and sorted(graph.trained) == sorted(graph.names)
    for name in graph.names:
        assert graph.key(name) == embedded.key(name), name
        ours, theirs = weight_files(graph.path(name)), weight_files(embedded.path(name))
        assert ours and ours.keys() == theirs.keys(), name
        assert all(ours[f] == theirs[f] for f in ours), f"{name}: weights differ from the embedded build's"
        assert graph.meta(name)["pid"] != os.getpid()  # built in a Ray worker
    for name in graph.names:  # each node starts after its parent ended, and ends once
        parent = graph.plan.node(name).parent
        assert [e for n, e in events if n == name] == ["start", "built"]
        if parent is not None:
            assert events.index((parent, "built")) < events.index((name, "start"))
    assert not any((graph.fixtures_dir / "tmp").iterdir())
    again = build(load_plan(MICRO), fixtures_dir=graph.fixtures_dir, device="cpu", progress=False, executor="ray")
    assert again.trained == []  # found by its key: nothing runs


def test_a_node_that_raises_fails_its_dependants_with_its_error(on_ray, tmp_path):
    """sft_d0 truncated to 8 tokens trains nothing: its pre-flight raises inside its Ray task; its two
    children (DPO, ORPO) then fail with that error without running, and nothing of the three is committed."""
    graph, _ = on_ray
    broken = tmp_path / "micro.toml"
    broken.write_text(MICRO.read_text() + '\n[variants.broken]\nnodes."sft_d0" = { max_length = 8 }\n')
    plan = load_plan(broken).variant("broken")
    errors: list[tuple[str, BaseException]] = []
    events: list[tuple[str, str]] = []
    with pytest.raises(PreflightError, match=r"sft_d0 \[trl-sft\]: all-masked"):
        build(plan, fixtures_dir=graph.fixtures_dir, device="cpu", progress=False, executor="ray",
              on_error=lambda name, error: errors.append((name, error)),
              on_node=lambda name, event: events.append((name, event)))
    assert [n for n, _ in errors] == ["sft_d0"]  # the dependants fail with its error, not reported as their own
    assert events == [("sft_d0", "start")]  # the base is cached; the children never started
    nodes = graph.fixtures_dir / "nodes"
    keys = plan_keys(plan, "cpu")[0]
    for name in ("sft_d0", "dpo_d1@sft_d0", "orpo_d1@sft_d0"):
        assert keys[name] != graph.key(name) and not graph.store.node_dir(name, keys[name]).exists(), name
    assert len(list(nodes.iterdir())) == len(graph.names)  # only the good graph's nodes


def test_a_worker_killed_mid_node_leaves_no_partial_entry_and_the_retry_is_identical(ray_local, embedded, tmp_path):
    """SIGKILL the Ray worker training sft_d0 as soon as its temp folder appears: Ray retries the task on a fresh
    worker, which takes the node's lock and builds it afresh; the killed attempt's folder stays in tmp/ (the next
    build removes it), and the committed node equals the embedded executor's bit for bit."""
    tmp = tmp_path / "tmp"
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["graph"] = build(load_plan(MICRO), fixtures_dir=tmp_path, device="cpu", progress=False,
                                    executor="ray", only="sft_d0")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        for p in tmp.iterdir() if tmp.is_dir() else []:
            if p.name.startswith("sft_d0-"):
                killed = int(p.name.rsplit("-", 2)[1])
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.05)
    thread.join(600)
    assert killed is not None, "sft_d0 ended before its worker could be killed"
    assert "error" not in result, result.get("error")
    graph = result["graph"]
    assert not (graph.path("sft_d0") / "_trainer").exists() and (graph.path("sft_d0") / META_FILE).is_file()
    assert graph.meta("sft_d0")["pid"] != killed
    assert weight_files(graph.path("sft_d0")) == weight_files(embedded.path("sft_d0"))
    left = [p for p in tmp.iterdir() if p.name.rsplit("-", 2)[1] == str(killed)]
    assert left, "the killed attempt's temp folder stays in tmp/, outside the cache"
    build(load_plan(MICRO), fixtures_dir=tmp_path, device="cpu", progress=False, only="base")
    assert not any(p.exists() for p in left), "the next build removes the dead worker's temp folder"


def test_executor_ray_without_ray_is_one_error_exit_2(tmp_path):
    """Without Ray (its import blocked), ``fixtures build --executor ray`` says how to install it and exits 2."""
    code = ("import sys; sys.modules['ray'] = None; from harness.__main__ import main; "
            f"sys.exit(main(['fixtures', 'build', {str(MICRO)!r}, '--executor', 'ray', '--fixtures-dir', "
            f"{str(tmp_path)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        'error: --executor ray needs Ray, which is not installed here; install it with: pip install -c '
        'constraints.txt -e ".[ray]" (or use the default --executor embedded)']
    assert not (tmp_path / "nodes").exists()


@pytest.mark.parametrize("args, env, says", [
    (["--harness-ray-address", "127.0.0.1:6379"], {}, "--harness-ray-address '127.0.0.1:6379' was given, but the "
                                                      "executor is 'embedded'"),
    ([], {"HARNESS_EXECUTOR": "dask"}, "HARNESS_EXECUTOR='dask': not one of embedded, ray"),
])
def test_contradicting_executor_options_are_a_usage_error(args, env, says):
    out = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider",
                          "tests/test_tomlfile.py", *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **env})
    assert out.returncode == 4 and says in out.stderr, out.stderr


def test_a_stale_temp_folder_is_removed_only_by_its_own_host(tmp_path):
    """A shared fixtures dir: a temp folder names its host, and a build removes only its own host's dead ones (a pid
    of another host means nothing here; that host's build may be alive)."""
    from harness.train.store import Store, host_tag

    store = Store(tmp_path)
    mine = store.new_tmp("sft_d0", "0" * 16)
    assert mine.name.endswith(f".{host_tag()}")
    dead = 2**22 + 17  # above the largest pid Linux allows (2**22): no live process has it
    ours = store.tmp_dir / f"sft_d0-{'1' * 16}-{dead}-abcdef01.{host_tag()}"
    theirs = store.tmp_dir / f"sft_d0-{'2' * 16}-{dead}-abcdef02.{'f' * 8 if host_tag() != 'f' * 8 else 'e' * 8}"
    legacy = store.tmp_dir / f"sft_d0-{'3' * 16}-{dead}-abcdef03"  # a name from before the host tag
    for p in (ours, theirs, legacy):
        p.mkdir()
    assert sorted(store.clean_stale_tmp()) == sorted([ours, legacy])
    assert mine.is_dir() and theirs.is_dir()


def test_a_variants_node_runs_as_a_ray_task_beside_the_plans(on_ray, tmp_path):
    """build_graphs on Ray over the plan and its zero_dpo variant: one task set over both graphs, so the variant's
    DPO node runs while the plan's runs (the plan's DPO takes 300 steps here, so that the variant's task, on a
    worker Ray may have to start, still meets it), both after sft_d0, which both share and is found cached."""
    import shutil

    from harness.train.graph import BuildRequest, build_graphs

    graph, _ = on_ray
    fx = tmp_path / "fx"
    shutil.copytree(graph.fixtures_dir / "nodes", fx / "nodes")
    dpo = "dpo_d1@sft_d0"
    block = f'name = "{dpo}"\nmethod = "dpo"\ndataset = "d1"\nparent = "sft_d0"\n'
    text = MICRO.read_text(encoding="utf-8")
    assert block in text
    (tmp_path / "micro.toml").write_text(text.replace(block, block + "overrides = { max_steps = 300 }\n"),
                                         encoding="utf-8")
    plan = load_plan(tmp_path / "micro.toml")
    events: list[tuple[str, str]] = []
    main_g, var_g = build_graphs(
        [BuildRequest(plan, [dpo], lambda n, e: events.append(("plan", e)) if n == dpo else None),
         BuildRequest(plan.variant("zero_dpo"), [dpo], lambda n, e: events.append(("variant", e)) if n == dpo else None)],
        fixtures_dir=fx, device="cpu", progress=False, executor="ray")
    assert main_g.trained == [dpo] and var_g.trained == [dpo]  # base and sft_d0: found, with on_ray's keys
    assert main_g.key("sft_d0") == var_g.key("sft_d0") == graph.key("sft_d0")
    assert sorted(events) == [("plan", "built"), ("plan", "start"), ("variant", "built"), ("variant", "start")]
    spans = [(g.meta(dpo)["started_unix"], g.meta(dpo)["started_unix"] + g.meta(dpo)["wall_seconds"])
             for g in (main_g, var_g)]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans  # the two tasks ran at the same time


def mark_after(graph, name: str) -> None:
    """An after-work that leaves a file saying in which process it ran and whether its node was built then."""
    import json

    folder = Path(graph.fixtures_dir) / "after"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"built": graph.is_built(name), "pid": os.getpid()}))


def test_after_work_runs_in_the_trained_nodes_task_and_cached_nodes_are_left_out(on_ray, tmp_path):
    """On Ray, a node's after-work runs in its own task, right after the node; a cached node's (here the base's) is
    not Ray's: no task runs it (the claims session computes it later in its own process)."""
    import json
    import shutil

    from ray import cloudpickle

    from harness.train.graph import BuildRequest, build_graphs

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # a Ray worker cannot import this test module
    graph, _ = on_ray
    orpo = "orpo_d1@sft_d0"
    fx = tmp_path / "fx"
    shutil.copytree(graph.fixtures_dir / "nodes", fx / "nodes", ignore=shutil.ignore_patterns("orpo_d1@sft_d0-*"))
    (g,) = build_graphs([BuildRequest(load_plan(MICRO), [orpo], after={"base": mark_after, orpo: mark_after})],
                        fixtures_dir=fx, device="cpu", progress=False, executor="ray")
    assert g.trained == [orpo]
    mark = json.loads((fx / "after" / f"{orpo}.json").read_text())
    assert mark["built"] and mark["pid"] == g.meta(orpo)["pid"] != os.getpid(), mark
    assert not (fx / "after" / "base.json").exists() and list(g.after_s) == [orpo]
