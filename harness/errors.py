"""The one exception type the harness raises for bad input.

Every engine raises :class:`HarnessError` (or a subclass) with a message that names the
culprit: the file, tensor, token, dataset row or spec field. The CLI prints it as a single
line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Bad input or an unusable environment; the message names the culprit."""

    exit_code: int = 2


class LoadError(HarnessError):
    """Something could not be loaded (a path, a model id, a tokenizer, a data file)."""

    exit_code = 2


class PipelineError(HarnessError):
    """A training pipeline (trl's dataset preparation, a collator, a chat template) raised on the data.

    ``pipeline`` names the pipeline; ``example`` is the index of the record it was preparing (None when
    the error concerns the setup, not one record).
    """

    exit_code = 2

    def __init__(self, message: str, pipeline: str = "", example: int | None = None) -> None:
        super().__init__(message)
        self.pipeline = pipeline
        self.example = example


class NodeError(HarnessError):
    """One plan node's setup or saved folder is broken; the message names the node and the finding.

    ``node`` is the node's name (None when not known), so a build can tell which node failed.
    """

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node
