"""Output evaluation (study 000 tables 24, 25, 27; study 003).

- :mod:`~harness.inference.generate`: ``generate(model_dir_or_model, prompts_or_messages, ...)``
  returning :class:`~harness.inference.generate.Generation` (``text``, ``token_ids``, ``stopped``,
  ``hit_max``); ``stop_token_ids``; ``load_model``.
- :mod:`~harness.evaluate.nodes`: every node of a fixture graph, cached in the fixture store.
- :mod:`~harness.evaluate.similarity`: sacrebleu BLEU, bert-score, tables 24 and 27.
- :mod:`~harness.evaluate.judge`: the LLM judge through the ``openai`` client (table 25).
- :mod:`~harness.inference.selfgen`: self-generated SFT/DPO data by centrality.
- :mod:`~harness.evaluate.claims`: the C7/C8 margins (named as claim statistics in
  :mod:`harness.findings.outputs`).

Submodules are imported on use, so importing this package costs nothing.
"""
