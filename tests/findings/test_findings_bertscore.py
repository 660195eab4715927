"""C7's BERTScore rows do not vanish offline: without the multilingual BERT in the local Hugging Face cache,
the plan's own base node is the encoder, and the rows say which encoder and layer scored them. The claims
suite runs on the micro plan in a child pytest with an empty Hugging Face cache and the hub offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"
BERT_CHECK = "BERTScore(own)-BERTScore(other)"


def c7_rows(tmp_path: Path, run: str, **env: str) -> list[dict]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", **env}
    for k in ("HARNESS_FINDINGS_DIR", "HARNESS_BERTSCORE_MODEL", "HARNESS_BERTSCORE_LAYERS", "HF_HUB_CACHE",
              "HUGGINGFACE_HUB_CACHE"):
        if k not in env:
            e.pop(k, None)
    fixtures = os.environ.get("HARNESS_FIXTURES_DIR") or str(tmp_path / "fx")
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:xdist",
                        str(ROOT / "claims" / "test_claims.py"), "--rootdir", str(ROOT), "--fixtures-dir", fixtures,
                        "--harness-device", "cpu", "--findings-dir", str(tmp_path / "out"), "--harness-plan", str(MICRO),
                        "--harness-run-id", run, "-k", "C7 and not control"],
                       cwd=ROOT, env=e, capture_output=True, text=True, timeout=900)
    path = tmp_path / "out" / "micro" / f"{run}.json"
    assert path.is_file(), r.stdout[-3000:] + r.stderr[-2000:]
    return [x for x in json.loads(path.read_text())["results"] if x["claim"] == "C7"]


def test_bertscore_rows_are_present_without_the_multilingual_bert(tmp_path):
    rows = c7_rows(tmp_path, "offline")
    bert = [x for x in rows if x["check"] == BERT_CHECK]
    assert [x["pair"] for x in bert] == ["sft_d0/d0"], [(x["pair"], x["check"]) for x in rows]
    [row] = bert
    assert isinstance(row["measured"], float) and row["verdict"] in ("pass", "fail")
    # micro's tiny base has 2 layers: bert-score's rule, three quarters of the depth rounded up, is layer 2
    assert ("model the plan's base node 'base' (tiny), as bert-base-multilingual-cased is not in the local cache "
            "(layer 2)") in row["note"], row["note"]


def test_harness_bertscore_model_still_chooses_the_encoder(tmp_path):
    rows = c7_rows(tmp_path, "chosen", HARNESS_BERTSCORE_MODEL="sft_d0", HARNESS_BERTSCORE_LAYERS="1")
    [row] = [x for x in rows if x["check"] == BERT_CHECK]
    assert "model plan node sft_d0 (layer 1)" in row["note"] and "the plan's base" not in row["note"], row["note"]
