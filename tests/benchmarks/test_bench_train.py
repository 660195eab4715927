"""Fixture-graph benchmarks (pytest-benchmark): run only when named.

    pytest tests/benchmarks/test_bench_train.py --benchmark-only

- ``tiny`` group: the cold build of ``tiny.toml`` (the naive baseline: retrain everything) and
  the cached rebuild (hashing only), on the CPU or, when CUDA is present, with QLoRA on the GPU.
  The ratio cold/cached is in ``extra_info``.
- ``seed-8b`` group (CUDA only): the study's recipe (QLoRA nf4, r 8, alpha 128, all-linear, batch 2)
  for ``HARNESS_BENCH_STEPS`` steps (default 30) of SFT and of DPO on a Llama-3-8B-shaped base
  initialised at random (``HARNESS_BENCH_8B_DIR``, made when absent). Records tokens/s and peak
  GPU memory, and projects the full study graph (3 SFT + 6 DPO nodes, 202 examples, 3 epochs).
  ``HARNESS_BENCH_TOKENIZER`` names a tokenizer folder (a Llama-3 one for realistic lengths).
  ``HARNESS_BENCH_OUT`` (a folder) receives ``train_bench.json``.
- ``gguf-conversion`` group: SmolLM2's GGUF converted with the tokenizer in a second process against both
  halves in one process (CPU; skips without the GGUF).
- ``smollm2-graph`` group (CUDA only): the smollm2 study graph cold, eager against variant ``cudagraphs``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness.train import build, load_plan

ROOT = Path(__file__).resolve().parents[2]
PLANS = ROOT / "fixtures" / "plans"
RESULTS: dict = {}


def _dump() -> None:
    out = os.environ.get("HARNESS_BENCH_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "train_bench.json").write_text(json.dumps(RESULTS, indent=1, default=str))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fixtures")


def test_bench_tiny_cold_build(benchmark, tiny_dir):
    benchmark.group = "tiny"
    plan = load_plan(PLANS / "tiny.toml")
    graph = benchmark.pedantic(lambda: build(plan, fixtures_dir=tiny_dir, progress=False), rounds=1, iterations=1)
    nodes = {n: {"wall_s": graph.meta(n).get("wall_seconds"), **(graph.meta(n).get("train") or {})}
             for n in graph.names}
    RESULTS["tiny_cold"] = {"seconds": benchmark.stats.stats.max, "device": graph.device, "nodes": nodes,
                            "pretrain_steps": graph.meta("base").get("pretrain_steps"),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    benchmark.extra_info.update(RESULTS["tiny_cold"])
    _dump()


def test_bench_tiny_cached_build(benchmark, tiny_dir):
    benchmark.group = "tiny"
    plan = load_plan(PLANS / "tiny.toml")
    graph = benchmark.pedantic(lambda: build(plan, fixtures_dir=tiny_dir, progress=False), rounds=3, iterations=1)
    assert all(graph.is_built(n) for n in graph.names)
    cached = benchmark.stats.stats.mean
    cold = RESULTS.get("tiny_cold", {}).get("seconds")
    RESULTS["tiny_cached"] = {"seconds": cached, "cold_over_cached": cold / cached if cold else None}
    benchmark.extra_info.update(RESULTS["tiny_cached"])
    _dump()


# ---------------------------------------------------------------------------- 8B-shaped, CUDA

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                 rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128009,
                 tie_word_embeddings=False)


def _random_8b(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    config = LlamaConfig(**LLAMA3_8B)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(str(folder), safe_serialization=True, max_shard_size="5GB")
    del model
    torch.cuda.empty_cache()
    return folder


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (QLoRA on an 8B-shaped base)")
def test_bench_seed_recipe_8b_shaped(benchmark, tmp_path_factory):
    from transformers import AutoTokenizer

    from harness import data
    from harness.train.common import SUMMARY_FILE
    from harness.train.dpo import train_dpo
    from harness.train.sft import train_sft

    benchmark.group = "seed-8b"
    steps = int(os.environ.get("HARNESS_BENCH_STEPS", "30"))
    tmp = tmp_path_factory.mktemp("bench8b")
    t0 = time.perf_counter()
    base = _random_8b(Path(os.environ.get("HARNESS_BENCH_8B_DIR", tmp / "llama3-8b-random")))
    make_s = time.perf_counter() - t0
    tok_dir = os.environ.get("HARNESS_BENCH_TOKENIZER")
    if tok_dir:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    else:  # the tiny tokenizer: ids fit any vocabulary, sequences are shorter than Llama-3's
        from harness.train.keys import tiny_texts as _tiny_texts
        from harness.train.tiny import make_tiny_tokenizer

        tokenizer = make_tiny_tokenizer(_tiny_texts()[1], 2000)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    plan = load_plan(PLANS / "study.toml")
    n_records = len(data.sft_records("d1"))

    def run() -> dict:
        out = {}
        for method, train, recs, recipe in (
            ("sft", train_sft, data.sft_records("d1"), plan.sft),
            ("dpo", train_dpo, data.dpo_records("d1"), plan.dpo),
        ):
            node_dir = tmp / method
            train(base, tokenizer, recs, replace(recipe, max_steps=steps, logging_steps=5), node_dir, "cuda",
                  lora=plan.lora, quantize_4bit=True, seed=0, progress=False)
            out[method] = json.loads((node_dir / SUMMARY_FILE).read_text())
            shutil.rmtree(node_dir)  # 16 GB of merged weights; the device disk is small
        return out

    res = benchmark.pedantic(run, rounds=1, iterations=1)
    full_steps = math.ceil(n_records / plan.sft.batch_size) * int(plan.sft.epochs)

    def node_seconds(s: dict) -> float:  # setup + full training at the measured rate + merge/save
        return s["setup_s"] + full_steps / s["steps_per_s"] + s["merge_save_s"]

    projection = 3 * node_seconds(res["sft"]) + 6 * node_seconds(res["dpo"])
    RESULTS["seed_8b"] = {"steps_measured": steps, "full_steps_per_node": full_steps, "make_random_base_s": make_s,
                          "tokenizer": tok_dir or "tiny", "sft": res["sft"], "dpo": res["dpo"],
                          "projected_seed_graph_minutes": projection / 60,
                          "gpu": torch.cuda.get_device_name(0)}
    benchmark.extra_info.update(RESULTS["seed_8b"])
    _dump()
    assert res["sft"]["steps"] == steps and res["dpo"]["steps"] == steps


# ---------------------------------------------------------------------------- real shapes, CUDA
#
# HARNESS_BENCH_BASE_DIR: a folder with a real model's config.json and tokenizer (SmolLM2-135M or
# Gemma-3-270M, converted from its GGUF); the weights are drawn at random (the timings depend on
# the shapes and the tokenizer's lengths, not on the values). HARNESS_BENCH_LIMIT examples per node.

H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s of one H200 (data sheet); MFU = 6 N tokens/s / peak


def _random_from_config(src: Path, dest: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (dest / "model.safetensors").is_file():
        return dest
    config = AutoConfig.from_pretrained(src)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    for f in ("generation_config.json",):
        if (src / f).is_file():
            shutil.copy(src / f, dest / f)
    return dest


def _n_params(folder: Path) -> int:
    from safetensors import safe_open

    n = 0
    with safe_open(str(folder / "model.safetensors"), "pt") as st:
        for k in st.keys():
            n += math.prod(st.get_slice(k).get_shape())
    return n


def _mfu(tokens_per_s: float | None, n_params: int) -> float | None:
    return 6 * n_params * tokens_per_s / H200_BF16_PEAK if tokens_per_s else None


@pytest.fixture(scope="module")
def real_shape_base(tmp_path_factory):
    src = os.environ.get("HARNESS_BENCH_BASE_DIR")
    if not src or not torch.cuda.is_available():
        pytest.skip("needs CUDA and HARNESS_BENCH_BASE_DIR (a real model's config and tokenizer)")
    return _random_from_config(Path(src), tmp_path_factory.mktemp("realshape") / "base")


# name -> (method, quantize_4bit, recipe overrides): the study's method first, then plan options (each one a
# different node key), then the per-step overhead of logging every step. HARNESS_BENCH_STEP_OPTIONS (comma
# separated names) picks and orders them; "warmup" runs first so that no measured option carries the
# process's CUDA warm-up. Each option reports its first step (compilation lands there) and the median step.
STEP_OPTIONS = {
    "warmup": ("sft", True, {"logging_steps": 10, "max_steps": 5}),
    "seed_qlora_b2_log1": ("sft", True, {}),
    "qlora_b2_log10": ("sft", True, {"logging_steps": 10}),
    "qlora_b2_log10_compile": ("sft", True, {"logging_steps": 10, "compile": True}),
    "lora_bf16_b2": ("sft", False, {}),
    "lora_bf16_b16": ("sft", False, {"batch_size": 16}),
    "dpo_qlora_b2_log10": ("dpo", True, {"logging_steps": 10}),
    "dpo_qlora_b2_log10_compile": ("dpo", True, {"logging_steps": 10, "compile": True}),
    # compile mode "reduce-overhead": the compiled regions replay as CUDA graphs (no per-kernel launch cost)
    "qlora_b2_log10_cudagraphs": ("sft", True, {"logging_steps": 10, "compile": "reduce-overhead"}),
    "dpo_qlora_b2_log10_cudagraphs": ("dpo", True, {"logging_steps": 10, "compile": "reduce-overhead",
                                                    "precompute_ref_batch_size": 32}),
}
DEFAULT_STEP_OPTIONS = "seed_qlora_b2_log1,qlora_b2_log10,lora_bf16_b2,lora_bf16_b16"


def test_bench_step_options(benchmark, real_shape_base, tmp_path):
    """Step time and tokens/s of SFT and DPO on a real-shape base, per plan option."""
    from transformers import AutoTokenizer

    from harness import data
    from harness.train.common import SUMMARY_FILE
    from harness.train.dpo import train_dpo
    from harness.train.sft import train_sft

    benchmark.group = "real-shape-steps"
    steps = int(os.environ.get("HARNESS_BENCH_STEPS", "30"))
    names = os.environ.get("HARNESS_BENCH_STEP_OPTIONS", DEFAULT_STEP_OPTIONS).split(",")
    unknown = [n for n in names if n not in STEP_OPTIONS]
    if unknown:
        raise pytest.UsageError(f"HARNESS_BENCH_STEP_OPTIONS: unknown {unknown}; known: {', '.join(STEP_OPTIONS)}")
    plan = load_plan(PLANS / "smollm2.toml")
    tok = AutoTokenizer.from_pretrained(real_shape_base)
    n = _n_params(real_shape_base)
    out: dict = {}

    def run() -> None:
        for name in names:
            method, q4, over = STEP_OPTIONS[name]
            train, recipe, records = ((train_sft, plan.sft, data.sft_records("d1")) if method == "sft"
                                      else (train_dpo, plan.dpo, data.dpo_records("d1")))
            rec = replace(recipe, **{"max_steps": steps, **over})
            t0 = time.perf_counter()
            train(real_shape_base, tok, records, rec, tmp_path / name, "cuda", lora=plan.lora,
                  quantize_4bit=q4, seed=0, progress=False)
            s = json.loads((tmp_path / name / SUMMARY_FILE).read_text())
            s["node_wall_s"] = time.perf_counter() - t0
            s["step_s"] = 1 / s["steps_per_s"] if s.get("steps_per_s") else None
            s["mfu"] = _mfu(s.get("tokens_per_s"), n)
            out[name] = s
            shutil.rmtree(tmp_path / name)
            RESULTS["real_shape_steps"] = {"partial": out}  # on disk as each option ends (a cut run keeps them)
            _dump()
            print(f"{name}: first step {s.get('first_step_s')} s, median {s.get('median_step_s')} s, "
                  f"{s.get('tokens_per_s')} tokens/s, node {s['node_wall_s']:.1f} s", flush=True)

    benchmark.pedantic(run, rounds=1, iterations=1)
    first = out[next(n for n in names if n != "warmup")]
    RESULTS["real_shape_steps"] = {"base": os.environ.get("HARNESS_BENCH_BASE_DIR"), "params": n, "steps": steps,
                                   "options": out,
                                   "median_step_over_first_option": {k: first["median_step_s"] / v["median_step_s"]
                                                                     for k, v in out.items() if v.get("median_step_s")},
                                   "tokens_per_s_over_first_option": {k: v["tokens_per_s"] / first["tokens_per_s"]
                                                                      for k, v in out.items()}}
    benchmark.extra_info.update(RESULTS["real_shape_steps"])
    _dump()
    assert all(v["steps"] == (STEP_OPTIONS[k][2].get("max_steps") or steps) for k, v in out.items())


def test_bench_graph_concurrent_vs_sequential(benchmark, real_shape_base, tmp_path):
    """The smollm2 study graph on a real-shape base, cold: one node at a time (the old build) against
    ready nodes trained concurrently on the GPU (default jobs), in the same run."""
    from harness.train.graph import default_jobs

    benchmark.group = "real-shape-graph"
    limit = int(os.environ.get("HARNESS_BENCH_LIMIT", "40"))
    plan = replace(load_plan(PLANS / "smollm2.toml").with_base(str(real_shape_base)), limit=limit)
    t0 = time.perf_counter()
    seq = build(plan, fixtures_dir=tmp_path / "seq", jobs=1, progress=False)
    sequential_s = time.perf_counter() - t0
    jobs = default_jobs("cuda", real_shape_base)
    graph = benchmark.pedantic(lambda: build(plan, fixtures_dir=tmp_path / "par", progress=False),
                               rounds=1, iterations=1)
    concurrent_s = benchmark.stats.stats.max
    n = _n_params(real_shape_base)
    nodes = {}
    for name in graph.names[1:]:
        t = graph.meta(name)["train"]
        nodes[name] = {"wall_s": graph.meta(name)["wall_seconds"], "sequential_wall_s": seq.meta(name)["wall_seconds"],
                       "steps": t["steps"], "step_s": 1 / t["steps_per_s"], "tokens_per_s": t["tokens_per_s"],
                       "sequential_tokens_per_s": seq.meta(name)["train"]["tokens_per_s"],
                       "mfu": _mfu(t["tokens_per_s"], n), "peak_gpu_mem_gib": t.get("peak_gpu_mem_gib")}
    RESULTS["real_shape_graph"] = {"limit": limit, "jobs": jobs, "sequential_s": sequential_s,
                                   "concurrent_s": concurrent_s, "speedup": sequential_s / concurrent_s,
                                   "nodes": nodes}
    benchmark.extra_info.update(RESULTS["real_shape_graph"])
    _dump()


def test_bench_gguf_conversion_two_processes_vs_one(benchmark, tmp_path, monkeypatch):
    """SmolLM2's GGUF to a bf16 folder, cold: the tokenizer half in a spawned process beside the weights
    (what ``convert_gguf`` does) against both halves in this process (its fallback), in the same run."""
    from harness.config import from_env
    from harness.models import convert as bases

    benchmark.group = "gguf-conversion"
    path = from_env().gguf_folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is absent: run .ci/fetch-gguf smollm2")
    with monkeypatch.context() as m:
        m.setattr(bases, "can_spawn", lambda: False)
        t0 = time.perf_counter()
        one, _ = bases.convert_gguf(path, tmp_path / "one", progress=False)
        one_s = time.perf_counter() - t0
    two, _ = benchmark.pedantic(lambda: bases.convert_gguf(path, tmp_path / "two", progress=False),
                                rounds=1, iterations=1)
    two_s = benchmark.stats.stats.max
    same = {f.name: f.read_bytes() == (two / f.name).read_bytes() for f in one.iterdir()}
    RESULTS["gguf_conversion"] = {"one_process_s": one_s, "two_processes_s": two_s, "speedup": one_s / two_s,
                                  "cpu_count": os.cpu_count()}
    benchmark.extra_info.update(RESULTS["gguf_conversion"])
    _dump()
    assert all(same.values()), same


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (QLoRA, CUDA graphs)")
def test_bench_smollm2_graph_cudagraphs_vs_eager(benchmark, tmp_path, monkeypatch):
    """The smollm2 study graph cold on one GPU: eager (the plan as written) against variant ``cudagraphs``, in
    the same run, each with a fresh fixture folder and inductor cache; the base converted once beforehand."""
    from harness.train.keys import resolve_base as _resolve_base
    from harness.train.store import Store

    benchmark.group = "smollm2-graph"
    plan = load_plan(PLANS / "smollm2.toml")
    try:
        base_dir, _ = _resolve_base(plan, Store(tmp_path / "base"), progress=False)
    except Exception as exc:  # no hub, no cache, no GGUF
        pytest.skip(f"smollm2 base unavailable: {exc}")
    plan = plan.with_base(str(base_dir))
    t0 = time.perf_counter()
    build(plan, fixtures_dir=tmp_path / "eager", devices="0", progress=False)
    eager_s = time.perf_counter() - t0
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # the workers inherit it
    graphs = plan.variant("cudagraphs")
    graph = benchmark.pedantic(lambda: build(graphs, fixtures_dir=tmp_path / "cg", devices="0", progress=False),
                               rounds=1, iterations=1)
    cg_s = benchmark.stats.stats.max
    RESULTS["smollm2_graph_cudagraphs"] = {"eager_s": eager_s, "cudagraphs_s": cg_s, "speedup": eager_s / cg_s,
                                           "timeline": graph.timeline, "gpu": torch.cuda.get_device_name(0)}
    benchmark.extra_info.update(RESULTS["smollm2_graph_cudagraphs"])
    _dump()
