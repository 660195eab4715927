"""The claims command end to end, cold, by phase (pytest-benchmark; run only when named). One command:

    python -m pytest tests/benchmarks/test_bench_claims_phases.py --benchmark-only -p no:xdist -s

runs ``python -m pytest claims`` as a subprocess into a fresh fixtures folder (so the base, its conversion,
every node, generation and diffs are paid) and reports where its wall time went, from the session's own
records (the findings JSON's ``meta.timing``: the graph builds' base, pre-flight and waves, each node's train
time, tokens/s and MFU, the diffs, generation, claims and report phases), with the GPU's utilisation sampled
every second by ``nvidia-smi`` (overall and within each wave; "n/a" without a GPU).

"Before" is the same command with ``HARNESS_LEGACY_STEPS=1`` (the Trainer's own per-step loop) and
``HARNESS_LEGACY_GRAPHS=1`` (the plan's graph, then each control's variant, one build after another) and
``HARNESS_LEGACY_PREFETCH=1`` (the claims' generations in the main process after the build), in the same run,
into its own fresh folder: each phase's before/after ratio is reported, and the two runs' verdicts must
agree (the only assertion; no time is asserted). With CUDA the command gets ``-m gpu --harness-device cuda``;
without it, ``--harness-device cpu``. Settings (environment):

- ``HARNESS_BENCH_PLAN``: a plan file (default the tiny plan); ``HARNESS_BENCH_VARIANT``: ``--harness-variant``;
- ``HARNESS_BENCH_BEFORE=0``: skip the "before" run;
- ``HARNESS_BENCH_BASELINE``: a stored findings JSON both runs are compared with (``--findings-baseline``);
- ``HARNESS_BENCH_ARGS``: more arguments for the claims command (e.g. ``-k C1``);
- ``HARNESS_BENCH_FIXTURES``: the "after" run's fixtures folder (default a fresh temp folder; it should be empty);
- ``HARNESS_BENCH_OUT``: a folder for ``claims_phases.json`` (every figure) and both runs' outputs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class GpuSampler:
    """``nvidia-smi``'s utilisation of every visible GPU, once a second, in a thread: [(unix time, [percent])]."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, list[float]]] = []
        self.available = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.samples.append((time.time(), [float(x) for x in out.split()]))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(1.0)

    def __enter__(self) -> "GpuSampler":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def mean(self, start: float | None = None, end: float | None = None) -> float | str:
        """Mean utilisation (percent, averaged over the GPUs) in [start, end]; "n/a" without samples."""
        xs = [sum(u) / len(u) for t, u in self.samples if u and (start is None or t >= start) and (end is None or t <= end)]
        return round(sum(xs) / len(xs), 1) if xs else "n/a"


def claims_command(fixtures: Path, findings: Path, run: str) -> list[str]:
    import torch

    cmd = [sys.executable, "-m", "pytest", "claims", "-q", "-p", "no:cacheprovider",
           "--fixtures-dir", str(fixtures), "--findings-dir", str(findings), "--harness-run-id", run]
    cmd += ["-m", "gpu", "--harness-device", "cuda"] if torch.cuda.is_available() else ["--harness-device", "cpu"]
    if os.environ.get("HARNESS_BENCH_PLAN"):
        cmd += ["--harness-plan", os.environ["HARNESS_BENCH_PLAN"]]
    if os.environ.get("HARNESS_BENCH_VARIANT"):
        cmd += ["--harness-variant", os.environ["HARNESS_BENCH_VARIANT"]]
    if os.environ.get("HARNESS_BENCH_BASELINE"):
        cmd += ["--findings-baseline", os.environ["HARNESS_BENCH_BASELINE"]]
    return cmd + shlex.split(os.environ.get("HARNESS_BENCH_ARGS", ""))


def run_claims(label: str, fixtures: Path, out: Path, legacy: bool) -> dict:
    """One cold claims run: its wall, exit code, phases (from the findings JSON) and GPU utilisation."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HARNESS_LEGACY_STEPS", "HARNESS_LEGACY_GRAPHS", "HARNESS_LEGACY_PREFETCH",
                        "HARNESS_FIXTURES_DIR")}
    if legacy:
        env["HARNESS_LEGACY_STEPS"] = env["HARNESS_LEGACY_GRAPHS"] = env["HARNESS_LEGACY_PREFETCH"] = "1"
    fixtures.mkdir(parents=True, exist_ok=True)
    findings = out / f"findings-{label}"
    cmd = claims_command(fixtures, findings, f"bench-{label}")
    t0 = time.time()
    with GpuSampler() as gpu, open(out / f"claims-{label}.log", "w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.time() - t0
    files = sorted(findings.glob(f"*/bench-{label}.json"))
    assert rc in (0, 1) and files, f"{label}: {' '.join(cmd)} exited {rc} without findings; see {out}/claims-{label}.log"
    data = json.loads(files[0].read_text(encoding="utf-8"))
    return {"label": label, "command": " ".join(cmd), "legacy_steps": legacy, "rc": rc, "wall_s": round(wall, 1),
            "gpu_util_pct": gpu.mean(t0), "timing": data["meta"].get("timing", {}),
            "verdicts": {f"{r['claim']} | {r['pair']} | {r['check']} | seed {r.get('seed')}": r["verdict"]
                         for r in data["results"]},
            "phases": phases(data["meta"].get("timing", {}), wall, gpu)}


def phases(timing: dict, wall: float, gpu: GpuSampler) -> dict[str, dict]:
    """``{phase: {"s": seconds, "gpu": utilisation}}``: the command, pytest's start-up and collection (the wall
    less the session), the session's phases, and each graph build's base, pre-flight and waves (with the GPU's
    utilisation within each wave) and its nodes' median step time, tokens/s and MFU."""
    out: dict[str, dict] = {"command (wall)": {"s": round(wall, 1), "gpu": gpu.mean()},
                            "pytest start-up and collection": {"s": round(wall - timing.get("session_s", 0.0), 1)}}
    for phase, s in (timing.get("phases") or {}).items():
        out[phase] = {"s": s}
    for b in timing.get("builds") or []:
        g = b["graph"]
        out[f"{g}: base ready"] = {"s": b.get("base_s")}
        out[f"{g}: pre-flight"] = {"s": b.get("preflight_s")}
        for wave, s in (b.get("waves_s") or {}).items():
            nodes = [n for n in b["nodes"] if str(n["wave"]) == wave and n.get("started_unix") is not None]
            start = min(n["started_unix"] for n in nodes)
            end = max(n["started_unix"] + n["wall_s"] for n in nodes)
            steps = [n["median_step_s"] for n in nodes if n.get("median_step_s") is not None]
            mfu = [n["mfu"] for n in nodes if n.get("mfu") is not None]
            tps = [n["tokens_per_s"] for n in nodes if n.get("tokens_per_s") is not None]
            out[f"{g}: wave {wave} ({len(nodes)} nodes)"] = {
                "s": s, "gpu": gpu.mean(start, end),
                "median step s": round(sorted(steps)[len(steps) // 2], 4) if steps else None,
                "tokens/s per node": round(sum(tps) / len(tps)) if tps else None,
                "MFU": f"{100 * sum(mfu) / len(mfu):.3f} %" if mfu else "n/a"}
    return out


def table(after: dict, before: dict | None) -> str:
    rows = [f"{'phase':58} {'after s':>9} {'before s':>9} {'ratio':>6}  GPU %  details"]
    for phase, a in after["phases"].items():
        b = (before or {}).get("phases", {}).get(phase, {})
        ratio = f"{b['s'] / a['s']:.2f}" if b.get("s") and a.get("s") else "-"
        extra = ", ".join(f"{k} {v}" for k, v in a.items() if k not in ("s", "gpu") and v is not None)
        rows.append(f"{phase[:58]:58} {a.get('s', '-')!s:>9} {b.get('s', '-')!s:>9} {ratio:>6}  "
                    f"{a.get('gpu', ''):>5}  {extra}")
    return "\n".join(rows)


def test_bench_claims_phases_cold(benchmark, tmp_path):
    benchmark.group = "claims-phases"
    out = Path(os.environ.get("HARNESS_BENCH_OUT") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    fixtures = Path(os.environ.get("HARNESS_BENCH_FIXTURES") or tmp_path / "fx-after")
    runs: dict[str, dict] = {}
    runs["after"] = benchmark.pedantic(run_claims, args=("after", fixtures, out, False), rounds=1, iterations=1)
    if os.environ.get("HARNESS_BENCH_BEFORE", "1") != "0":
        runs["before"] = run_claims("before", tmp_path / "fx-before", out, True)
    report = table(runs["after"], runs.get("before"))
    print(f"\n{runs['after']['command']}\n{report}")
    benchmark.extra_info.update({k: {x: r[x] for x in ("wall_s", "rc", "gpu_util_pct", "phases")} for k, r in runs.items()})
    (out / "claims_phases.json").write_text(json.dumps(runs, indent=1, default=str), encoding="utf-8")
    (out / "claims_phases.txt").write_text(report + "\n", encoding="utf-8")
    if "before" in runs:
        flips = {k: (v, runs["before"]["verdicts"].get(k)) for k, v in runs["after"]["verdicts"].items()
                 if runs["before"]["verdicts"].get(k) != v}
        assert not flips, f"the verdicts moved between the before and after runs: {flips}"


def test_bench_lean_step_host_work(benchmark, tmp_path):
    """The host work per step that :func:`harness.train.common.lean_steps` removes, on the tiny plan's sft_d0
    trainer (4-bit on CUDA, as the claims train it): the Trainer's FLOP count, gradient clipping and
    ``model.train()`` (kept: the same in both), each timed alone (median of 100 calls, milliseconds), the
    Trainer's own vs lean."""
    import statistics

    import torch
    from trl import SFTConfig, SFTTrainer

    from harness.train import build, common, load_plan
    from harness.train.keys import node_records

    benchmark.group = "claims-phases"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = load_plan(ROOT / "fixtures" / "plans" / "tiny.toml")
    fixtures = Path(os.environ.get("HARNESS_BENCH_FIXTURES") or tmp_path / "fx")
    base = build(plan, fixtures_dir=fixtures, device=device, only=["base"], progress=False, jobs=1).path("base")
    model = common.load_model(base, device, plan.quantize_4bit)
    kwargs = common.trainer_kwargs(plan.sft, tmp_path, device, 0, False, False)
    trainer = SFTTrainer(model=model, args=common.one_gpu(SFTConfig(**kwargs, completion_only_loss=True, packing=False)),
                         train_dataset=common.training_dataset(node_records(plan, "sft_d0"), tmp_path),
                         processing_class=common.load_tokenizer(base), peft_config=common.lora_config(plan.lora))
    batch = {k: v.to(trainer.model.device) for k, v in
             trainer.data_collator([trainer.train_dataset[i] for i in range(plan.sft.batch_size)]).items()}
    trainer.model(**batch).loss.backward()

    def per_call() -> dict[str, float]:
        out = {}
        for name, call in (("FLOP count", lambda: trainer.floating_point_ops(batch)),
                           ("gradient clipping", lambda: trainer._clip_grad_norm(trainer.model)),
                           ("model.train()", lambda: trainer.model.train())):
            xs = []
            for _ in range(100):
                t0 = time.perf_counter()
                call()
                if device == "cuda":
                    torch.cuda.synchronize()
                xs.append(time.perf_counter() - t0)
            out[name] = round(statistics.median(xs) * 1e3, 3)
        return out

    legacy = per_call()
    common.lean_steps(trainer)
    lean = benchmark.pedantic(per_call, rounds=1, iterations=1)
    benchmark.extra_info.update({"device": device, "legacy_ms": legacy, "lean_ms": lean})
    print(f"\nhost ms per step on {device}: legacy {legacy}, lean {lean}; "
          f"sum {sum(legacy.values()):.2f} -> {sum(lean.values()):.2f} ms")
