"""Inference: generation from a model folder, a judge served on loopback, self-generated records.

- :mod:`~harness.inference.generate`: ``generate(model_dir_or_model, prompts_or_messages, ...)``
  returning :class:`~harness.inference.generate.Generation` (``text``, ``token_ids``, ``stopped``,
  ``hit_max``); ``stop_token_ids``; ``load_model``.
- :mod:`~harness.inference.serve`: ``transformers serve`` on loopback as an OpenAI-compatible endpoint.
- :mod:`~harness.inference.selfgen`: self-generated SFT/DPO records by centrality (a training
  method's record builder, :mod:`harness.train.selfgen_node`).

This layer sits below training: it reads model folders and never builds a fixture graph.
Submodules are imported on use, so importing this package costs nothing.
"""
