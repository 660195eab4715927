"""The models layer: a hub id, a model folder or a GGUF file -> a local folder, its tokenizer and model.

:func:`resolve` is the one resolver; GGUF files are read by :mod:`harness.models.gguffile` and
converted once into the content-addressed cache of :mod:`harness.models.convert`.
"""

from harness.models.convert import CONVERT_VERSION, INFO_FILE, PinMismatch, convert_gguf, default_cache_root
from harness.models.gguffile import check_complete, check_special_tokens, eos_ids, gguf_tokens, sha256_file
from harness.models.resolve import Resolved, expand, find_gguf, resolve

__all__ = ["CONVERT_VERSION", "INFO_FILE", "PinMismatch", "Resolved", "check_complete", "check_special_tokens",
           "convert_gguf", "default_cache_root", "eos_ids", "expand", "find_gguf", "gguf_tokens", "resolve",
           "sha256_file"]
