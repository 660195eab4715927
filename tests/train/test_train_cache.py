"""The cache: a build killed with SIGKILL leaves no partial node, and the rerun completes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import LoadError
from harness.train import build, load_plan
from harness.train.store import META_FILE, Store

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"


def complete_nodes(root: Path) -> dict[str, Path]:
    nodes = root / "nodes"
    return {p.name: p for p in nodes.iterdir()} if nodes.is_dir() else {}


def test_sigkill_leaves_no_partial_node_and_the_rerun_completes(tmp_path):
    env = {**os.environ, "HARNESS_FIXTURES_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "fixtures", "build", str(MICRO), "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        # Kill as soon as a trained node (not the base) is being written, wherever that is.
        while time.monotonic() < deadline and proc.poll() is None:
            dirs = [d for d in (tmp_path / "tmp", tmp_path / "nodes") if d.is_dir()]
            if any(not p.name.startswith("base-") and any(p.iterdir()) for d in dirs for p in d.iterdir()):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the build ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = complete_nodes(tmp_path)
    for path in before.values():  # whatever is in place is whole
        assert (path / META_FILE).is_file() and (path / "model.safetensors").is_file(), path
    assert any(p.name.startswith("base-") for p in before.values())
    assert len(before) < len(load_plan(MICRO).names)
    leftovers = list((tmp_path / "tmp").iterdir())
    assert leftovers, "the killed build left its temp folder (to be cleaned by the next run)"
    base_meta = next(p for n, p in before.items() if n.startswith("base-")) / META_FILE
    base_mtime = base_meta.stat().st_mtime_ns

    graph = build(load_plan(MICRO), fixtures_dir=tmp_path, device="cpu", progress=False)
    assert base_meta.stat().st_mtime_ns == base_mtime, "finished nodes are not rebuilt"
    assert all(graph.is_built(n) for n in graph.names)
    assert len(complete_nodes(tmp_path)) == len(graph.names)
    assert not any(p.exists() for p in leftovers), "stale temp folders of a dead build are removed"
    for name in ("sft_d0", "dpo_d1@sft_d0"):
        meta = graph.meta(name)
        assert meta["key"] == graph.key(name) and meta["n_records"] == 8
        assert (graph.adapter_path(name) / "adapter_model.safetensors").is_file()


def test_rebuild_and_zero_step_variant(tmp_path):
    """--rebuild replaces a node in place; a zero-step DPO variant equals its parent; others are shared."""
    import torch
    from safetensors.torch import load_file

    plan = load_plan(MICRO)
    graph = build(plan, fixtures_dir=tmp_path, device="cpu", progress=False)
    sft_meta = graph.path("sft_d0") / META_FILE
    zero = build(plan.variant("zero_dpo"), fixtures_dir=tmp_path, device="cpu", progress=False)
    assert zero.key("sft_d0") == graph.key("sft_d0") and zero.key("dpo_d1@sft_d0") != graph.key("dpo_d1@sft_d0")
    merged = load_file(str(zero.path("dpo_d1@sft_d0") / "model.safetensors"))
    parent = load_file(str(zero.path("sft_d0") / "model.safetensors"))
    assert merged.keys() == parent.keys() and all(torch.equal(merged[k], parent[k]) for k in merged)
    trained = load_file(str(graph.path("dpo_d1@sft_d0") / "model.safetensors"))
    assert any(not torch.equal(trained[k], parent[k]) for k in trained)
    assert zero.log("dpo_d1@sft_d0") == []
    weights = graph.path("sft_d0") / "model.safetensors"
    before = (sft_meta.stat().st_mtime_ns, weights.stat().st_ino)
    build(plan, fixtures_dir=tmp_path, device="cpu", only="sft_d0", rebuild=True, progress=False)
    # trained again: a new node folder renamed into place, so a new meta file and new weight file
    assert sft_meta.stat().st_mtime_ns != before[0] and weights.stat().st_ino != before[1]
    assert len(complete_nodes(tmp_path)) == len(plan.names) + 1  # and the zero-step variant's DPO node
    assert not any((tmp_path / "tmp").iterdir())


def test_bad_data_row_fails_before_training_naming_file_and_line(tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(ROOT / "fixtures" / "data", data)
    persona = data / "persona.jsonl"
    lines = persona.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace('"d1":', '"dx":')
    persona.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(LoadError, match=r"persona\.jsonl:3: missing field 'd1'"):
        build(load_plan(MICRO).with_data(data), fixtures_dir=tmp_path / "fx", device="cpu", progress=False)
    assert not (tmp_path / "fx" / "nodes").exists()


def test_cli_list_and_clean(tmp_path):
    env = {**os.environ, "HARNESS_FIXTURES_DIR": str(tmp_path)}
    Store(tmp_path).new_tmp("x", "0" * 16)
    out = subprocess.run([sys.executable, "-m", "harness", "fixtures", "clean", "--tmp-only"], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "removed 1 folder" in out.stdout
    out = subprocess.run([sys.executable, "-m", "harness", "fixtures", "build", str(tmp_path / "none.toml")],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "none.toml: no such plan file" in out.stderr


def test_parallel_build_in_worker_processes(tmp_path):
    """jobs=2: ready nodes train in spawned workers (the CUDA default); the result is the same graph."""
    plan = load_plan(MICRO)
    graph = build(plan, fixtures_dir=tmp_path, device="cpu", progress=False, jobs=2)
    assert all(graph.is_built(n) for n in graph.names)
    assert all(graph.meta(n)["pid"] != os.getpid() for n in graph.names)  # built by the workers
    from harness.train.keys import plan_keys

    assert [graph.key(n) for n in graph.names] == list(plan_keys(plan, "cpu")[0].values())
    assert not any((tmp_path / "tmp").iterdir())


def test_bf16_tiny_base_gives_bf16_merged_children(tmp_path):
    """tiny.dtype = "bfloat16" (the study's checkpoint dtype): the base and every merged child are bf16."""
    import torch
    from safetensors.torch import load_file

    from harness.train.keys import plan_keys

    plan = load_plan(MICRO)
    bf16 = plan.variant("bf16")
    k32, k16 = plan_keys(plan, "cpu")[0], plan_keys(bf16, "cpu")[0]
    assert all(k32[n] != k16[n] for n in k32)
    graph = build(bf16, fixtures_dir=tmp_path, device="cpu", progress=False, only="sft_d0")
    for name in ("base", "sft_d0"):
        weights = load_file(str(graph.path(name) / "model.safetensors"))
        assert {t.dtype for t in weights.values()} == {torch.bfloat16}, name
    assert json.loads((graph.path("sft_d0") / "config.json").read_text())["dtype"] == "bfloat16"
