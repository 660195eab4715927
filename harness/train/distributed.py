"""One node over several GPUs: DDP through ``accelerate launch``, run as a subprocess from a generated config.

A recipe's ``gpus = N`` (plan ``[sft]``/``[dpo]``/node overrides, or ``fixtures build --gpus N``) trains
that node on N GPUs, one process each holding a full replica (LoRA) or a full 4-bit replica (QLoRA):

- ``batch_size`` stays the *global* batch; each process takes ``batch_size / N`` (the plan refuses an N that
  does not divide it). Accelerate hands process *i* every N-th per-process batch of the same shuffled
  order, so each optimizer step sees the same examples as on one GPU, with the same schedule and step count.
- The node key includes ``gpus`` when N > 1. The method is the same, but the bits are not: reductions run
  in another order and each process draws its own LoRA-dropout masks, so a 2-GPU node is another
  realisation of the same training, like a second training seed. Its own key lets both live in one
  cache, and the findings of the two builds can be compared (``--findings-baseline``) within tolerances.
- Each process loads its replica with ``device_map={"": local_rank}``; ``device_map="auto"`` would shard
  one model over all GPUs (naive pipeline) and silently leave DDP out.
- FSDP is not used (DDP is the default and only engine here). QLoRA under FSDP would need
  ``bnb_4bit_quant_storage=torch.bfloat16`` so the 4-bit weights can be flattened with the bf16 ones.

The launch writes ``_launch/accelerate.json`` (the config) and ``_launch/launch.log`` (every process's
output) into the node folder; only the first process saves the adapter and merges it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from harness import atomic
from harness.errors import HarnessError
from harness.train import methods
from harness.train.common import SHARED_DATA_DIR, load_tokenizer
from harness.train.gpus import choose_threads, visible_gpus

LAUNCH_DIR = "_launch"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def gpus_of(recipe: Any) -> int:
    """GPUs a trained node's recipe asks for (1 unless ``gpus`` is set)."""
    return int(getattr(recipe, "gpus", 1) or 1)


def with_gpus(plan: Any, n: int) -> Any:
    """``plan`` with every trained node on ``n`` GPUs (node overrides that set ``gpus`` win)."""
    from harness.train.recipe import apply_table

    where = f"{plan.path or plan.name}: --gpus"
    return dataclasses.replace(plan, **{s: apply_table(getattr(plan, s), {"gpus": n}, where)
                                        for s in methods.sections()})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_config(n: int, device: str, port: int) -> dict[str, Any]:
    """The ``accelerate launch --config_file`` contents for DDP over ``n`` local processes.

    On the CPU the same launcher (torchrun) starts ``n`` gloo processes; the trainer's ``use_cpu`` makes
    them CPU ranks (accelerate's MULTI_CPU), which is how the CI tests this path."""
    return {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "num_machines": 1,
            "machine_rank": 0, "num_processes": n, "gpu_ids": "all", "main_process_ip": "127.0.0.1",
            "main_process_port": port, "rdzv_backend": "static", "same_network": True,
            "mixed_precision": "bf16" if device == "cuda" else "no", "downcast_bf16": "no", "use_cpu": False,
            "debug": False, "enable_cpu_affinity": False}


def launch_command(config: Path, job: Path) -> list[str]:
    """``accelerate launch`` (as ``python -m``) of this module's worker on ``job``."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "-m", "harness.train.distributed", str(job)]


def train(parent_dir: Path, method: str, records: list[dict], plan: Any, name: str, out: Path,
          device: str, gpu_ids: Sequence[str] = ()) -> dict[str, Any]:
    """Train node ``name`` of ``plan`` into ``out`` over ``gpus`` processes; returns what the launch was.
    On CUDA the processes run on ``gpu_ids`` (the scheduler's slots), else on the first visible GPUs."""
    recipe = plan.recipe(name)
    n = gpus_of(recipe)
    ids: list[str] = []
    if device == "cuda":
        ids = list(gpu_ids or visible_gpus()[:n])
        if len(ids) < n:
            raise HarnessError(f"node {name!r}: gpus = {n} but only {len(ids)} GPU(s) are visible "
                               f"({','.join(ids) or 'none'})")
    d = out / LAUNCH_DIR
    d.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(d / "records.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    job = {"parent": str(parent_dir), "method": method, "recipe": dataclasses.asdict(recipe),
           "lora": dataclasses.asdict(plan.lora), "quantize_4bit": plan.quantize_4bit, "seed": plan.seed,
           "lean": getattr(plan, "lean_steps", True),
           "device": device, "out": str(out), "records": str(d / "records.jsonl")}
    atomic.write_json(d / "job.json", job, indent=1)
    config = launch_config(n, device, _free_port())
    atomic.write_json(d / "accelerate.json", config, indent=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT)] + [p for p in [
        os.environ.get("PYTHONPATH")] if p])}
    if ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    t0 = time.perf_counter()
    log = d / "launch.log"
    with open(log, "w", encoding="utf-8") as fh:
        rc = subprocess.run(launch_command(d / "accelerate.json", d / "job.json"), env=env, cwd=PROJECT_ROOT,
                            stdout=fh, stderr=subprocess.STDOUT).returncode
    shutil.rmtree(out / SHARED_DATA_DIR, ignore_errors=True)
    if rc != 0:
        text = log.read_text(encoding="utf-8", errors="replace")
        raise HarnessError(f"node {name!r}: accelerate launch over {n} process(es) failed (exit {rc}): "
                           f"{root_cause(text)}\nlast lines of {log} (removed with the node's temporary folder):\n"
                           + "\n".join(text.splitlines()[-15:]))
    (d / "records.jsonl").unlink(missing_ok=True)
    return {"gpus": n, "devices": ids, "config": f"{LAUNCH_DIR}/accelerate.json", "log": f"{LAUNCH_DIR}/launch.log",
            "seconds": round(time.perf_counter() - t0, 3)}


def root_cause(log_text: str) -> str:
    """The exceptions the ranks raised (``[rankN]: SomeError: ...`` lines of a launch log), first one first;
    torchrun's own summary at the end of the log names only exit codes."""
    found = re.findall(r"^\[rank(\d+)\]: ((?:[\w.]+\.)?\w*(?:Error|Exception)\b.*)$", log_text, flags=re.M)
    seen = list(dict.fromkeys(f"rank {rank}: {line}" for rank, line in found))
    return "; ".join(seen[:3]) if seen else "no rank printed an exception"


def _worker(job_file: str) -> None:
    """One DDP process: the node's recipe, as in one process, on its share of every batch."""
    from harness.train.recipe import LoraSpec, Recipe

    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    choose_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    lora = job["lora"]
    if isinstance(lora["target_modules"], list):
        lora["target_modules"] = tuple(lora["target_modules"])
    records = [json.loads(line) for line in Path(job["records"]).read_text(encoding="utf-8").splitlines() if line]
    fn = methods.get(job["method"]).train_function()
    fn(job["parent"], load_tokenizer(Path(job["parent"])), records, Recipe(**job["recipe"]), job["out"],
       job["device"], lora=LoraSpec(**lora), quantize_4bit=job["quantize_4bit"], seed=job["seed"], progress=False,
       lean=job.get("lean", True))


if __name__ == "__main__":
    _worker(sys.argv[1])
