"""Label/EOS audit of the real trl training pipeline for any tokenizer.

``audit()`` runs the installed trl's own SFT/DPO dataset preparation and data collator (and
transformers' DataCollatorForLanguageModeling for plain causal LM) on a dataset and reports
named codes (see :data:`harness.audit.codes.CODES`).
"""

from harness.audit.core import audit, preflight, trained_text
from harness.audit.codes import CODES, ERROR, WARNING
from harness.audit.loading import FORMATS, load_tokenizer, zoo_dir
from harness.audit.pipelines import PIPELINES, Trained, clear_cache
from harness.audit.report import AuditReport, Finding

__all__ = ["audit", "preflight", "AuditReport", "Finding", "Trained", "CODES", "ERROR", "WARNING", "FORMATS",
           "PIPELINES", "load_tokenizer", "zoo_dir", "clear_cache", "trained_text"]
