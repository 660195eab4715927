"""Benchmark: static label/EOS audit (trl-sft on a cached trainer) of 1,000 persona examples.

Target: >= 500 examples/s on the 2-core CPU. The naive baseline in the same run audits
examples one call at a time (a trl dataset preparation per example, as a per-example loop would);
the ratio is reported in extra_info and printed.

Run: pytest tests/benchmarks/test_bench_audit.py --benchmark-only -s
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from harness.audit import audit, zoo_dir
from harness.data import sft_records

N = 1000
NAIVE_N = 20


@pytest.fixture(scope="module")
def tokenizer():
    from harness.audit import load_tokenizer

    zoo = zoo_dir()
    if zoo is None or not (Path(zoo) / "llama3-instruct").is_dir():
        pytest.skip("needs the tokenizer zoo (llama3-instruct): --harness-zoo or HARNESS_TOKENIZER_ZOO")
    return load_tokenizer(Path(zoo) / "llama3-instruct")


@pytest.fixture(scope="module")
def records():
    # D0 and D1 conversational records, cycled to 1,000; the pipeline caches nothing per content.
    base = sft_records("d0") + sft_records("d1")
    return list(itertools.islice(itertools.cycle(base), N))


def test_bench_audit_1000_persona_examples(benchmark, tokenizer, records):
    audit(tokenizer, data=records[:2])  # build the cached throwaway trainer once
    report = benchmark.pedantic(audit, args=(tokenizer,), kwargs={"data": records}, rounds=3, iterations=1)
    assert report.examples == N and report.codes == {"stop-not-generation-eos", "trained-after-stop"}
    rate = N / benchmark.stats.stats.mean
    c0 = time.process_time()  # CPU seconds of this process: less sensitive to other jobs on the CPU
    audit(tokenizer, data=records)
    cpu_rate = N / (time.process_time() - c0)

    t0 = time.perf_counter()
    for rec in records[:NAIVE_N]:
        audit(tokenizer, data=[rec])
    naive_rate = NAIVE_N / (time.perf_counter() - t0)
    benchmark.extra_info.update(examples_per_s=round(rate, 1), examples_per_cpu_s=round(cpu_rate, 1),
                                naive_examples_per_s=round(naive_rate, 1),
                                ratio=round(rate / naive_rate, 2))
    print(f"\naudit: {rate:.0f} examples/s wall, {cpu_rate:.0f} examples per CPU-second (batched), naive per-example loop {naive_rate:.0f} examples/s, "
          f"ratio {rate / naive_rate:.1f}x")


def test_bench_audit_large_vocabulary_gemma2(benchmark):
    """32 persona examples on Gemma 2's 256k vocabulary, trainer cached: the audit skips datasets'
    fingerprint hashing of in-memory datasets (which pickles the whole tokenizer on every map).
    Baseline in the same run: the same audit with datasets' hashing (HASH_FINGERPRINTS = True)."""
    from harness.audit import load_tokenizer, pipelines

    zoo = zoo_dir()
    if zoo is None or not (Path(zoo) / "gemma2-it").is_dir():
        pytest.skip("needs the tokenizer zoo (gemma2-it): --harness-zoo or HARNESS_TOKENIZER_ZOO")
    tok = load_tokenizer(Path(zoo) / "gemma2-it")
    data = sft_records("d1", system=False)[:32]
    first = audit(tok, data=data)  # build the cached throwaway trainer once
    report = benchmark.pedantic(audit, args=(tok,), kwargs={"data": data}, rounds=3, iterations=1)
    assert report.codes == first.codes and report.examples == 32
    fast = benchmark.stats.stats.mean
    pipelines.HASH_FINGERPRINTS = True
    try:
        t0 = time.perf_counter()
        hashed = audit(tok, data=data)
        naive = time.perf_counter() - t0
    finally:
        pipelines.HASH_FINGERPRINTS = False
    assert [a.seq.labels for a in hashed.sequences] == [a.seq.labels for a in report.sequences]
    benchmark.extra_info.update(seconds=round(fast, 3), hashed_seconds=round(naive, 2), ratio=round(naive / fast, 1))
    print(f"\naudit of 32 examples on a 256k vocabulary: {fast:.2f} s; with datasets' fingerprint hashing "
          f"{naive:.2f} s; ratio {naive / fast:.0f}x")
