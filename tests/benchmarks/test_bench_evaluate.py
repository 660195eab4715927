"""Benchmarks of the output evaluation, each against a naive baseline in the same run.

Run: ``pytest tests/benchmarks/test_bench_evaluate.py --benchmark-only -s`` (not in CI).

- **Whole tiny plan generation.** Ten nodes of the tiny default base's shape (harness.train.tiny:
  8 layers, hidden 128, its BPE tokenizer and chat template) generate greedily on all dataset
  and evaluation prompts (202 + 100) through :func:`graph_generations`. The weights are random,
  so every reply runs to ``max_new_tokens``: an upper bound on the trained plan, whose nodes stop
  early. Cold (empty store) and cached rerun are timed. ``HARNESS_BENCH_EVAL_NODES`` changes the
  node count (default 10).
- **Batched vs naive.** The same prompts one at a time (batch 1) against left-padded batches,
  and torch's default thread count (2 here) against the single thread generation uses on the CPU.
- **Judge concurrency.** 32 items against a loopback OpenAI-compatible server answering in
  0.1 s: 8 concurrent requests against 1.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from harness import data
from harness.evaluate.generate import generate
from harness.evaluate.nodes import GenSettings, graph_generations, prompts

NODES = int(os.environ.get("HARNESS_BENCH_EVAL_NODES", "10"))
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

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    msgs = [list(m) for m in prompts("eval").messages[:32]]
    t0 = time.perf_counter()
    naive = generate(model, msgs, tokenizer=tok, max_new_tokens=48, batch_size=1, progress=False)
    naive_s = time.perf_counter() - t0
    batched = benchmark.pedantic(generate, args=(model, msgs), rounds=2, iterations=1,
                                 kwargs={"tokenizer": tok, "max_new_tokens": 48, "batch_size": 32, "progress": False})
    t0 = time.perf_counter()
    generate(model, msgs, tokenizer=tok, max_new_tokens=48, batch_size=32, progress=False, threads=0)
    default_threads_s = time.perf_counter() - t0
    assert len(batched) == len(naive)
    ratio = naive_s / benchmark.stats["mean"]
    benchmark.extra_info.update({"naive_s": naive_s, "speedup": ratio, "torch_default_threads_s": default_threads_s})
    _report(f"32 prompts one by one {naive_s:.2f} s; batched speedup", ratio, "x")
    _report(f"batched with torch's default threads {default_threads_s:.2f} s; 1-thread speedup",
            default_threads_s / benchmark.stats["mean"], "x")


def test_bench_judge_concurrency(benchmark, monkeypatch, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))
    import threading

    from test_eval_judge import _Server  # the loopback OpenAI-compatible test server

    from harness.evaluate.judge import Judge, JudgeConfig

    server = _Server(limit=10_000, delay=0.1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    pairs = [(f"質問{i}", "ごきげんよう") for i in range(32)]
    t0 = time.perf_counter()
    Judge(JudgeConfig(concurrency=1)).score(pairs, progress=False)
    serial = time.perf_counter() - t0
    res = benchmark.pedantic(lambda: Judge(JudgeConfig(concurrency=8)).score(pairs, progress=False), rounds=2,
                             iterations=1)
    server.shutdown()
    assert all(r.ok for r in res)
    benchmark.extra_info.update({"serial_s": serial, "speedup": serial / benchmark.stats["mean"]})
    _report(f"judge 32 items serial {serial:.2f} s; 8-concurrent speedup", serial / benchmark.stats["mean"], "x")
