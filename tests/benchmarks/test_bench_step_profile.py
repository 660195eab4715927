"""Where an SFT step of the smollm2 plan goes (pytest-benchmark, CUDA only): run only when named.

    pytest tests/benchmarks/test_bench_step_profile.py --benchmark-only

One SFT node of ``fixtures/plans/smollm2.toml`` (its recipe, ``HARNESS_BENCH_STEPS`` steps, default 12) on the
converted SmolLM2 base (the plan's GGUF, ``.ci/fetch-gguf smollm2``), eager and with the plan variant
``cudagraphs``'s compile mode ("reduce-overhead"). Each run records in ``extra_info``:

- the wall time of every step: step 1 compiles, step 2 records the CUDA graphs, then they replay;
- the top-level aten ops per step (steps 2-3, each a kernel launch or more when eager), split into forward
  (with trl's loss and metrics), backward and optimizer, and the ``aten::item`` calls (host syncs) among them.

``HARNESS_BENCH_OUT`` (a folder) receives ``step_profile.json``.
"""

from __future__ import annotations

import collections
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness import data
from harness.train import common, load_plan

ROOT = Path(__file__).resolve().parents[2]
PROFILED = (2, 3)  # the steps profiled (1-based); step 1 carries the warm-up and compilation
RESULTS: dict = {}

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA: the step profile is of QLoRA and CUDA graphs on the GPU")


def _stage(event) -> str:
    """forward, backward or optimizer: the stage an op ran in, from its enclosing profiler ranges."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return "optimizer"
        if "backward" in parent.name.lower():
            return "backward"
        parent = parent.cpu_parent
    return "forward"


def op_counts(events, steps: int) -> dict:
    """Per step: top-level aten ops (an aten op not called by another), by stage, and the .item() calls."""
    top = [e for e in events if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return {"top_level_aten_ops_per_step": len(top) / steps,
            "by_stage_per_step": {s: n / steps for s, n in collections.Counter(map(_stage, top)).items()},
            "item_calls_per_step": {s: n / steps for s, n in
                                    collections.Counter(_stage(e) for e in top if e.name == "aten::item").items()},
            "most_common": collections.Counter(e.name for e in top).most_common(8)}


def _profiling_timer(record: dict):
    """The trainer's own step timer, plus per-step wall times and a torch.profiler window over PROFILED."""
    make = common.step_timer

    def timer():
        t = make()
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        begin, end = t.on_step_begin, t.on_step_end
        marks: list[float] = []

        def on_step_begin(args, state, control, **kw):
            if state.global_step + 1 == PROFILED[0]:
                prof.__enter__()
            marks.append(time.perf_counter())
            return begin(args, state, control, **kw)

        def on_step_end(args, state, control, **kw):
            torch.cuda.synchronize()
            record.setdefault("step_s", []).append(time.perf_counter() - marks[-1])
            if state.global_step == PROFILED[-1]:
                prof.__exit__(None, None, None)
                record.update(op_counts(prof.events(), len(PROFILED)))
            return end(args, state, control, **kw)

        t.on_step_begin, t.on_step_end = on_step_begin, on_step_end
        return t

    return timer


@pytest.fixture(scope="module")
def smollm2_base(tmp_path_factory):
    from harness.train.keys import resolve_base as _resolve_base
    from harness.train.store import Store

    from harness.config import from_env

    # $HARNESS_GGUF_DIR in the plan's offline base: the folder the environment names (as every CLI reads it)
    plan = load_plan(ROOT / "fixtures" / "plans" / "smollm2.toml").configured(from_env())
    try:
        base_dir, _ = _resolve_base(plan, Store(tmp_path_factory.mktemp("base")), progress=False)
    except Exception as exc:  # no GGUF file, no hub
        pytest.skip(f"smollm2 base unavailable (.ci/fetch-gguf smollm2): {exc}")
    return plan, base_dir


@pytest.mark.parametrize("mode", [False, "reduce-overhead"], ids=["eager", "cudagraphs"])
def test_bench_sft_step_profile(benchmark, smollm2_base, tmp_path, monkeypatch, mode):
    from harness.train.sft import train_sft

    benchmark.group = "step-profile"
    plan, base = smollm2_base
    steps = int(os.environ.get("HARNESS_BENCH_STEPS", "12"))
    record: dict = {}
    monkeypatch.setattr(common, "step_timer", _profiling_timer(record))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # cold, as in a fresh build
    recipe = replace(plan.recipe("sft_d0"), max_steps=steps, compile=mode)
    benchmark.pedantic(lambda: train_sft(base, common.load_tokenizer(base), data.sft_records("d0"), recipe,
                                         tmp_path / "sft", "cuda", lora=plan.lora,
                                         quantize_4bit=plan.quantize_4bit, seed=plan.seed, progress=False),
                       rounds=1, iterations=1)
    assert len(record["step_s"]) == steps and record["top_level_aten_ops_per_step"] > 0
    later = sorted(record["step_s"][len(PROFILED) + 1:]) or [float("nan")]
    result = {**record, "mode": mode or "eager", "first_step_s": record["step_s"][0],
              "second_step_s": record["step_s"][1], "median_later_step_s": later[len(later) // 2],
              "gpu": torch.cuda.get_device_name(0)}
    RESULTS[result["mode"]] = result
    benchmark.extra_info.update(result)
    out = os.environ.get("HARNESS_BENCH_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "step_profile.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    print(f"\n{result['mode']}: steps 1/2 {result['first_step_s']:.2f}/{result['second_step_s']:.2f} s, then "
          f"{result['median_later_step_s']:.3f} s; {result['top_level_aten_ops_per_step']:.0f} top-level aten ops "
          f"per step {result['by_stage_per_step']}, .item() {result['item_calls_per_step']}")
