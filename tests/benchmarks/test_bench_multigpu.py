"""Beyond one GPU (pytest-benchmark, two GPUs or more; skipped with the reason otherwise). Run only when named:

    HARNESS_BENCH_OUT=bench pytest tests/benchmarks/test_bench_multigpu.py --benchmark-only -p no:xdist

Each benchmark runs the 1-GPU baseline and the 2-GPU run in the same session and reports the ratio in
``extra_info`` (and ``multigpu_bench.json`` under ``HARNESS_BENCH_OUT``):

- ``graph-2gpu``: the smollm2 study graph (``HARNESS_BENCH_VARIANT``: one of its variants, e.g. ``fast``), cold, on GPU 0 alone (``--devices 0``) and on GPUs 0 and 1 (nodes
  spread over both, several per GPU while memory allows). The base is resolved once (hub, cache or the
  plan's GGUF; ``HARNESS_BENCH_SMOLLM2`` names a folder or GGUF instead) so neither run pays the conversion.
- ``ddp-8b``: 8B-shaped QLoRA SFT (the study's recipe, random Llama-3-8B-shaped weights as in
  test_bench_train.py) for ``HARNESS_BENCH_STEPS`` steps on one GPU, and the same per-GPU batch over two
  GPUs through ``accelerate launch`` (DDP). Throughput = tokens/s over all GPUs (weak scaling: the global
  batch doubles). ``HARNESS_BENCH_DDP_BATCH`` per-GPU batch (default 2, the study's); ``HARNESS_BENCH_BIG_BATCH``
  adds a one-GPU run at that batch (a plan option, not the study's method); ``HARNESS_BENCH_BIG_OPTIONS`` lists the
  variants of that run (``default``, ``ckpt_off``, each optionally ``@BATCH``). A 5-step warm-up run goes first
  (``HARNESS_BENCH_WARMUP=0`` skips it) so the 1-GPU baseline carries no CUDA warm-up.
- ``claims-xdist``: ``pytest claims -m gpu -n 0`` against ``-n 2`` (cold, fresh fixture folders), then (with
  ``HARNESS_BENCH_CLAIMS_DDP=1``) the same claims on the plan with ``gpus = 2`` (each node DDP over both GPUs) with ``--findings-baseline`` on
  the 1-GPU findings: verdict flips and moves beyond the specs' tolerances are in its output.
  ``HARNESS_BENCH_PLAN`` (default fixtures/plans/tiny.toml).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness.train import build, load_plan

ROOT = Path(__file__).resolve().parents[2]
PLANS = ROOT / "fixtures" / "plans"
RESULTS: dict = {}

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                reason="needs 2 CUDA GPUs (multi-GPU benchmarks); "
                                       f"torch sees {torch.cuda.device_count() if torch.cuda.is_available() else 0}")


def _dump() -> None:
    out = os.environ.get("HARNESS_BENCH_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "multigpu_bench.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def test_bench_smollm2_graph_1_vs_2_gpus(benchmark, tmp_path):
    from harness.train.keys import resolve_base as _resolve_base
    from harness.train.store import Store

    benchmark.group = "graph-2gpu"
    plan = load_plan(PLANS / "smollm2.toml")
    variant = os.environ.get("HARNESS_BENCH_VARIANT")  # e.g. fast (bf16 LoRA, batch 16: not the study's method)
    if variant:
        plan = plan.variant(variant)
    src = os.environ.get("HARNESS_BENCH_SMOLLM2")
    if src:
        plan = plan.with_base(src)
    try:
        base_dir, _ = _resolve_base(plan, Store(tmp_path / "base"), progress=False)
    except Exception as exc:  # no hub, no cache, no GGUF
        pytest.skip(f"smollm2 base unavailable: {exc}")
    plan = plan.with_base(str(base_dir))
    t0 = time.perf_counter()
    one = build(plan, fixtures_dir=tmp_path / "one", devices="0", progress=False)
    one_s = time.perf_counter() - t0
    two = benchmark.pedantic(lambda: build(plan, fixtures_dir=tmp_path / "two", devices="0,1", progress=False),
                             rounds=1, iterations=1)
    two_s = benchmark.stats.stats.max
    assert [one.key(n) for n in one.names] == [two.key(n) for n in two.names]
    slots = {n: two.meta(n)["worker"].get("slot") for n in two.names[1:]}
    RESULTS["smollm2_graph"] = {"variant": variant or "seed method", "one_gpu_s": one_s, "two_gpus_s": two_s, "speedup": one_s / two_s,
                                "target_two_gpus_s": 120, "slots": slots,
                                "gpu": torch.cuda.get_device_name(0)}
    benchmark.extra_info.update(RESULTS["smollm2_graph"])
    _dump()


def test_bench_8b_qlora_sft_ddp_1_vs_2_gpus(benchmark, tmp_path_factory):
    from test_bench_train import _random_8b
    from transformers import AutoTokenizer

    from harness import data
    from harness.train import distributed
    from harness.train.common import SUMMARY_FILE
    from harness.train.sft import train_sft

    benchmark.group = "ddp-8b"
    steps = int(os.environ.get("HARNESS_BENCH_STEPS", "30"))
    per_gpu = int(os.environ.get("HARNESS_BENCH_DDP_BATCH", "2"))
    tmp = tmp_path_factory.mktemp("ddp8b")
    weights = _random_8b(Path(os.environ.get("HARNESS_BENCH_8B_DIR", tmp / "llama3-8b-random")))
    base = tmp / "base"  # the weights with a tokenizer beside them (the DDP workers load it from the folder)
    base.mkdir()
    for f in weights.iterdir():
        (base / f.name).symlink_to(f.resolve())
    tok_dir = os.environ.get("HARNESS_BENCH_TOKENIZER")
    if tok_dir:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    else:
        from harness.train.keys import tiny_texts as _tiny_texts
        from harness.train.tiny import make_tiny_tokenizer

        tokenizer = make_tiny_tokenizer(_tiny_texts()[1], 2000)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(str(base))
    plan = load_plan(PLANS / "study.toml").with_base(str(base))
    records = data.sft_records("d1")

    def summary(d: Path) -> dict:
        s = json.loads((d / SUMMARY_FILE).read_text())
        for f in d.glob("*.safetensors"):  # 16 GB of merged weights; the disk is small
            f.unlink()
        return s

    recipe = replace(plan.sft, max_steps=steps, logging_steps=5, batch_size=per_gpu)
    if os.environ.get("HARNESS_BENCH_WARMUP", "1") == "1":  # so the 1-GPU baseline carries no CUDA warm-up
        train_sft(base, tokenizer, records, replace(recipe, max_steps=5), tmp / "warm", "cuda", lora=plan.lora,
                  quantize_4bit=True, seed=0, progress=False)
        RESULTS["ddp_8b_warmup"] = summary(tmp / "warm")
    train_sft(base, tokenizer, records, recipe, tmp / "one", "cuda", lora=plan.lora, quantize_4bit=True, seed=0,
              progress=False)
    one = summary(tmp / "one")
    ddp_plan = distributed.with_gpus(replace(plan, sft=replace(recipe, batch_size=2 * per_gpu)), 2)
    launch = benchmark.pedantic(lambda: distributed.train(base, "sft", records, ddp_plan, "sft_d1", tmp / "two", "cuda"),
                                rounds=1, iterations=1)
    two = summary(tmp / "two")
    RESULTS["ddp_8b"] = {"steps": steps, "per_gpu_batch": per_gpu, "one_gpu": one, "two_gpus": two, "launch": launch,
                         "tokens_per_s_ratio": two["tokens_per_s"] / one["tokens_per_s"], "target_ratio": 1.8,
                         "tokenizer": tok_dir or "tiny", "gpu": torch.cuda.get_device_name(0)}
    benchmark.extra_info.update(RESULTS["ddp_8b"])
    _dump()
    big = int(os.environ.get("HARNESS_BENCH_BIG_BATCH", "0"))  # one GPU at a larger batch: a plan option, not the seed
    if big:  # HARNESS_BENCH_BIG_OPTIONS: comma-separated "default" / "ckpt_off" (gradient_checkpointing = "off"),
        # each optionally "@BATCH" for another batch than HARNESS_BENCH_BIG_BATCH
        RESULTS["ddp_8b_big_batch"] = {"batch": big}
        for option in os.environ.get("HARNESS_BENCH_BIG_OPTIONS", "default").split(","):
            name, _, batch = option.partition("@")
            over = {"default": {}, "ckpt_off": {"gradient_checkpointing": "off"}}[name]
            rec = replace(recipe, batch_size=int(batch or big), **over)
            train_sft(base, tokenizer, records, rec, tmp / "big", "cuda", lora=plan.lora, quantize_4bit=True, seed=0,
                      progress=False)
            RESULTS["ddp_8b_big_batch"]["one_gpu" if option == "default" else option] = summary(tmp / "big")
            _dump()
    assert one["steps"] == two["steps"] == steps and two["gpus"] == 2


def _claims(fx: Path, findings: Path, run: str, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keep a carried site
    env = {**os.environ, "HARNESS_FIXTURES_DIR": str(fx), "PYTHONPATH": path}
    # the child's output goes to a file as it runs (HARNESS_BENCH_OUT, else beside the findings), so a run cut
    # by a time limit still shows where its time went
    log = Path(os.environ.get("HARNESS_BENCH_OUT") or findings) / f"claims-{run}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w", encoding="utf-8") as f:
        proc = subprocess.run([sys.executable, "-m", "pytest", "claims", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                               "--durations", "15", "--findings-dir", str(findings), "--harness-run-id", run, *args],
                              cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
    proc.stdout, proc.stderr = log.read_text(encoding="utf-8"), ""
    return time.perf_counter() - t0, proc


def test_bench_claims_n0_vs_n2(benchmark, tmp_path):
    benchmark.group = "claims-xdist"
    plan_file = Path(os.environ.get("HARNESS_BENCH_PLAN", PLANS / "tiny.toml"))
    plan_args = ("--harness-plan", str(plan_file))
    n0_s, n0 = _claims(tmp_path / "fx0", tmp_path / "findings", "n0", "-n", "0", *plan_args)
    n2_s, n2 = benchmark.pedantic(lambda: _claims(tmp_path / "fx2", tmp_path / "findings", "n2", "-n", "2", *plan_args),
                                  rounds=1, iterations=1)
    name = load_plan(plan_file).name
    for run, proc in (("n0", n0), ("n2", n2)):
        assert (tmp_path / "findings" / name / f"{run}.json").is_file(), f"-n {run[1]}: " + proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r: json.loads((tmp_path / "findings" / name / f"{r}.json").read_text())["results"] for r in ("n0", "n2")}
    key = lambda r: (r["claim"], r["pair"], r["check"], r["seed"])  # noqa: E731
    # The same plan built twice on the GPU: QLoRA kernels are not bitwise deterministic, so compare verdicts.
    verdicts = {r: {key(x): x["verdict"] for x in rows[r]} for r in rows}
    RESULTS["claims_xdist"] = {"plan": str(plan_file), "n0_s": n0_s, "n2_s": n2_s, "speedup": n0_s / n2_s,
                               "exit": {"n0": n0.returncode, "n2": n2.returncode},
                               "same_verdicts": verdicts["n0"] == verdicts["n2"],
                               "verdicts_differ": sorted(k for k in verdicts["n0"]
                                                         if verdicts["n0"][k] != verdicts["n2"].get(k))}
    _dump()
    assert n0.returncode in (0, 1) and n2.returncode in (0, 1), n2.stdout[-3000:] + n2.stderr[-3000:]
    if os.environ.get("HARNESS_BENCH_CLAIMS_DDP") != "1":
        benchmark.extra_info.update(RESULTS["claims_xdist"])
        return
    # Each node over both GPUs (DDP), compared with the 1-GPU findings through the baseline report.
    ddp_plan = tmp_path / f"{name}.toml"
    ddp_plan.write_text(f'extends = "{plan_file.resolve()}"\nname = "{name}"\n[sft]\ngpus = 2\n[dpo]\ngpus = 2\n',
                        encoding="utf-8")
    ddp_s, ddp = _claims(tmp_path / "fxddp", tmp_path / "findings-ddp", "ddp2", "-n", "0",
                         "--harness-plan", str(ddp_plan), "--findings-baseline",
                         str(tmp_path / "findings" / name / "n0.json"))
    tail = ddp.stdout[ddp.stdout.find("harness findings"):][-4000:]
    RESULTS["claims_xdist"].update({"exit": {"n0": n0.returncode, "n2": n2.returncode, "ddp2": ddp.returncode},
                                    "ddp2_s": ddp_s, "ddp2_vs_1gpu_report": tail})
    benchmark.extra_info.update(RESULTS["claims_xdist"])
    _dump()
