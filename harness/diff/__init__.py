"""Weight-diff engine: per-layer L1/L2, sign conflicts and Conflict-Limited L2, streamed.

``compare(a, b, base=None)`` returns a :class:`DiffReport`; see the README's "Weight diff".
"""

from harness.diff.engine import compare
from harness.diff.names import layer_of, module_of
from harness.diff.report import DiffReport
from harness.diff.settings import DiffSettings
from harness.diff.stats import STATISTICS, Stats

__all__ = ["compare", "DiffReport", "DiffSettings", "Stats", "STATISTICS", "layer_of", "module_of"]
