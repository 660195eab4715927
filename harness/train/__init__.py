"""Fixture graph: plans, the tiny base, the training methods (:mod:`harness.train.methods`: SFT, DPO, ORPO
through trl + peft, QLoRA on CUDA) and the cache.

>>> plan = load_plan("fixtures/plans/tiny.toml")
>>> graph = build(plan)                      # cached: retrains only what changed
>>> graph.path("dpo_d1@sft_d1")              # merged checkpoint folder (safetensors)
"""

from harness.train.plan import BaseSource, LoraSpec, Node, Plan, PlanError, Recipe, TinySpec, load_plan, plan_from_dict

__all__ = ["BaseSource", "Graph", "LoraSpec", "Node", "Plan", "PlanError", "Recipe", "TinySpec", "build", "load_plan",
           "plan_from_dict", "default_fixtures_dir"]


def __getattr__(name: str):  # lazy: importing the plan loader must not import torch
    if name in ("build", "Graph"):
        from harness.train import graph as _g

        return getattr(_g, name)
    if name == "default_fixtures_dir":
        from harness.train.store import default_fixtures_dir

        return default_fixtures_dir
    raise AttributeError(name)
