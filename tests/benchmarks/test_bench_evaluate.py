"""Benchmarks of the output evaluation, each against a naive baseline in the same run.

Run: ``pytest tests/benchmarks/test_bench_evaluate.py --benchmark-only -s`` (not in CI);
``HARNESS_BENCH_DEVICE=cuda`` for the GPU figures of the batched and judge benchmarks;
``HARNESS_BENCH_JUDGE=SmolLM2-135M-Instruct.Q4_1.gguf`` (+ ``HARNESS_BENCH_JUDGE_TOKENS=64``) serves a real judge.

- **Whole tiny plan generation.** Ten nodes of the tiny default base's shape (harness.train.tiny:
  8 layers, hidden 128, its BPE tokenizer and chat template) generate greedily on all dataset
  and evaluation prompts (202 + 100) through :func:`graph_generations`. The weights are random,
  so every reply runs to ``max_new_tokens``: an upper bound on the trained plan, whose nodes stop
  early. Cold (empty store) and cached rerun are timed. ``HARNESS_BENCH_EVAL_NODES`` changes the
  node count (default 10).
- **Batched vs naive.** The same prompts one at a time (batch 1) against left-padded batches,
  and torch's default thread count (2 here) against the single thread generation uses on the CPU.
- **Judge concurrency.** 16 rubric prompts against ``transformers serve`` on loopback (a constructed
  tiny judge, real HTTP): 8 concurrent requests against 1, with the server generating one request
  at a time and with continuous batching.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from harness import data
from harness.inference.generate import generate
from harness.evaluate.nodes import GenSettings, graph_generations, prompts

NODES = int(os.environ.get("HARNESS_BENCH_EVAL_NODES", "10"))
#: ``cuda`` runs the batched-vs-one-by-one and judge benchmarks on the GPU (default: the CPU).
DEVICE = os.environ.get("HARNESS_BENCH_DEVICE", "cpu")
SETTINGS = GenSettings(max_new_tokens=48, batch_size=64)
RESULTS: dict[str, float] = {}


class Graph:
    def __init__(self, model_dir: Path, n: int, root: Path) -> None:
        self.dir, self.fixtures_dir = model_dir, root
        self.names = tuple(f"node{i}" for i in range(n))

    def path(self, name: str) -> Path:
        return self.dir

    def key(self, name: str) -> str:
        return f"bench-{name}"


@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory) -> Path:
    from harness.train.tiny import make_tiny_model, make_tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny_base")
    tok = make_tiny_tokenizer(data.pretrain_texts() + [i.d1 for i in data.load_persona()])
    make_tiny_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _report(name: str, value: float, unit: str = "s") -> None:
    RESULTS[name] = value
    print(f"\n[bench evaluate] {name}: {value:.2f} {unit}", file=sys.stderr)


def test_bench_whole_tiny_plan_cold_then_cached(benchmark, tiny_base_dir, tmp_path):
    graph = Graph(tiny_base_dir, NODES, tmp_path)
    t0 = time.perf_counter()
    gens = graph_generations(graph, ["persona", "eval"], SETTINGS, device="cpu", progress=False)
    cold = time.perf_counter() - t0
    n = sum(len(g) for g in gens.values())
    _report(f"cold, {NODES} nodes x {n // NODES} prompts", cold)
    cached = benchmark.pedantic(graph_generations, args=(graph, ["persona", "eval"], SETTINGS),
                                kwargs={"device": "cpu", "progress": False}, rounds=3, iterations=1)
    assert cached == gens
    benchmark.extra_info.update({"cold_s": cold, "generations": n, "cold_over_cached": cold / benchmark.stats["mean"]})
    _report("cached rerun (mean)", benchmark.stats["mean"])


def test_bench_batched_vs_one_by_one(benchmark, tiny_base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_base_dir
    real = os.environ.get("HARNESS_BENCH_GEN_MODEL")  # e.g. SmolLM2-135M-Instruct.Q4_1.gguf on the GPU
    if real:
        from harness.inference.serve import resolve_model

        folder = resolve_model(real)[0]
    budget = int(os.environ.get("HARNESS_BENCH_GEN_TOKENS", "48"))
    model = AutoModelForCausalLM.from_pretrained(folder).to(DEVICE).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    msgs = [list(m) for m in prompts("eval").messages[:32]]
    t0 = time.perf_counter()
    naive = generate(model, msgs, tokenizer=tok, max_new_tokens=budget, batch_size=1, progress=False)
    naive_s = time.perf_counter() - t0
    batched = benchmark.pedantic(generate, args=(model, msgs), rounds=2, iterations=1,
                                 kwargs={"tokenizer": tok, "max_new_tokens": budget, "batch_size": 32,
                                         "progress": False})
    t0 = time.perf_counter()
    generate(model, msgs, tokenizer=tok, max_new_tokens=budget, batch_size=32, progress=False, threads=0)
    default_threads_s = time.perf_counter() - t0
    assert len(batched) == len(naive)
    ratio = naive_s / benchmark.stats["mean"]
    benchmark.extra_info.update({"naive_s": naive_s, "speedup": ratio, "torch_default_threads_s": default_threads_s,
                                 "model": real or "tiny base", "max_new_tokens": budget,
                                 "new_tokens": sum(len(g.token_ids) for g in naive)})
    _report(f"[{DEVICE}] {real or 'tiny base'}: 32 prompts one by one {naive_s:.2f} s; batched speedup", ratio, "x")
    _report(f"batched with torch's default threads {default_threads_s:.2f} s; 1-thread speedup",
            default_threads_s / benchmark.stats["mean"], "x")


@pytest.mark.parametrize("continuous_batching", [False, True], ids=["sequential", "continuous-batching"])
def test_bench_judge_concurrency(benchmark, tmp_path, continuous_batching):
    """The judge against ``transformers serve`` on loopback (a constructed 2-layer judge that answers
    "8"), 16 distinct rubric prompts: 8 concurrent requests against 1. The server generates one
    request at a time unless it runs with continuous batching."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "evaluate" / "conftest.py"
    spec = importlib.util.spec_from_file_location("evaluate_conftest", path)
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)  # the evaluate tests' model builders

    from harness.evaluate.judge import Judge, JudgeConfig
    from harness.inference.serve import JudgeServer

    real = os.environ.get("HARNESS_BENCH_JUDGE")  # e.g. SmolLM2-135M-Instruct.Q4_1.gguf on the GPU
    if real:
        from harness.inference.serve import resolve_model

        folder = resolve_model(real)[0]
    else:
        (tmp_path / "tok").mkdir()
        folder = helpers.build_bigram_model(tmp_path / "judge", helpers.build_chat_tokenizer(tmp_path / "tok"),
                                            helpers.SCORE_RULES)
    max_tokens = int(os.environ.get("HARNESS_BENCH_JUDGE_TOKENS", "4"))
    pairs = [(f"質問{i}", "ごきげんよう") for i in range(16)]
    with JudgeServer(str(folder), device=DEVICE, continuous_batching=continuous_batching,
                     log_path=tmp_path / "serve.log") as srv:
        def run(conc: int) -> list:
            return Judge(JudgeConfig(model=srv.model_id, base_url=srv.base_url, max_tokens=max_tokens,
                                     concurrency=conc)).score(pairs, progress=False)

        run(8)  # warm-up: the first requests pay for lazy initialisation
        t0 = time.perf_counter()
        serial_res = run(1)
        serial = time.perf_counter() - t0
        res = benchmark.pedantic(run, args=(8,), rounds=2, iterations=1)
    assert len(res) == len(serial_res) == 16 and all(not r.reason.startswith("error") for r in res + serial_res)
    if not real:
        assert [r.score for r in res] == [r.score for r in serial_res] == [8] * 16
    mode = "continuous batching" if continuous_batching else "sequential"
    benchmark.extra_info.update({"serial_s": serial, "speedup": serial / benchmark.stats["mean"], "server": mode})
    _report(f"[{DEVICE}] judge 16 items via transformers serve ({mode}) serial {serial:.2f} s; 8-concurrent speedup",
            serial / benchmark.stats["mean"], "x")
