"""A pytest harness for fine-tuning hypotheses (SFT/DPO with trl + peft + QLoRA).

Engines, one sub-package or module each:

- ``harness.diff``      weight-diff engine (per-layer L1/L2, sign conflicts, Conflict-Limited L2)
- ``harness.audit``     label/EOS audit of the real trl pipeline
- ``harness.train``     fixture graph: plans, tiny base, SFT/DPO recipes, cache
- ``harness.evaluate``  generation, sacrebleu/BERTScore, LLM judge, self-generated data
- ``harness.findings``  claim specs, statistics, reports and the regression baseline
- ``harness.pytest_plugin``  the pytest glue
"""

__version__ = "0.1.0"
