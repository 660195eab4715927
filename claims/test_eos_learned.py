"""C6, "EOS is learned" (seed 004), for the zoo tokenizers the spec names: a small model is trained
here for each (CUDA only) and its greedy generations are checked like the graph's SFT nodes are
(those run in claims/test_claims.py with every other spec).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.findings import assert_holds, evaluate
from harness.findings import session as fs
from harness.findings.spec import Pair, load_specs

ROOT = Path(__file__).resolve().parents[1]
SPEC = load_specs(ROOT / fs.CLAIMS_DIR, ids=["C6"])[0]


def _prompts():
    from harness import data

    return data.eval_records()


@pytest.fixture(scope="session")
def eos_cache(pytestconfig) -> Path:
    return fs.diff_cache_dir(pytestconfig.getoption("harness_fixtures_dir"), Path(str(pytestconfig.rootpath))).parent / "eos"


@pytest.mark.gpu
@pytest.mark.tokenizers
@pytest.mark.parametrize("name", SPEC.zoo, ids=[f"C6-zoo:{z}" for z in SPEC.zoo])
def test_eos_learned_for_zoo_tokenizer(name, tokenizer_zoo, eos_cache, pytestconfig, claim_result):
    from transformers import AutoTokenizer

    from harness.findings.eos import cached_generations, folder_key, train_for_tokenizer

    import torch

    device = pytestconfig.getoption("harness_device")
    if not torch.cuda.is_available() or device == "cpu":
        pytest.skip("gpu: training a small model for a full-size vocabulary until it can stop needs CUDA "
                    "(7.5 min on the 2-core CPU gave an undertrained model; see harness.findings.eos)")
    folder = tokenizer_zoo / name
    if not folder.is_dir():
        pytest.skip(f"tokenizers: {name!r} is not in the zoo at {tokenizer_zoo}")
    key = folder_key(folder)
    model_dir = train_for_tokenizer(AutoTokenizer.from_pretrained(str(folder)), eos_cache / "models" / f"{name}-{key}",
                                    device="cuda")
    source = cached_generations(model_dir, f"zoo:{name}:{key}", _prompts(), eos_cache, device="cuda")
    rows = evaluate(SPEC, source, Pair((("tokenizer", f"zoo:{name}"),)), plan="zoo")
    claim_result(rows)
    assert_holds(rows)
