"""EOS is learned for the zoo tokenizers a ``generations`` spec names (``zoo = [...]``; C6 in
fixtures/claims): a small model is trained here for each (CUDA only) and its greedy generations are
checked like the graph's SFT nodes are (those run in claims/test_claims.py with every other spec).

The cases come from the claims folder (``--claims-dir``), parametrized by the harness plugin.
"""

from __future__ import annotations

import pytest

from harness.findings import assert_holds, evaluate


def _prompts():
    from harness import data

    return data.eval_records()


@pytest.mark.gpu
@pytest.mark.tokenizers
def test_eos_learned_for_zoo_tokenizer(zoo_case, tokenizer_zoo, findings_session, claim_result):
    from transformers import AutoTokenizer

    from harness.findings.eos import cached_generations, folder_key, train_for_tokenizer

    import torch

    name, cache = zoo_case.tokenizer, findings_session.eos_cache()
    if not torch.cuda.is_available() or findings_session.options.device == "cpu":
        pytest.skip("gpu: training a small model for a full-size vocabulary until it can stop needs CUDA "
                    "(7.5 min on the 2-core CPU gave an undertrained model; see harness.findings.eos)")
    folder = tokenizer_zoo / name
    if not folder.is_dir():
        pytest.skip(f"tokenizers: {name!r} is not in the zoo at {tokenizer_zoo}")
    key = folder_key(folder)
    model_dir = train_for_tokenizer(AutoTokenizer.from_pretrained(str(folder)), cache / "models" / f"{name}-{key}",
                                    device="cuda")
    source = cached_generations(model_dir, f"zoo:{name}:{key}", _prompts(), cache, device="cuda")
    from harness import data
    from harness.inference.stopprob import cached_stop_probs

    records = data.sft_records("d1")  # what train_for_tokenizer trains on (no base kept: no gain, no base value)
    source.stop_probe = lambda limit: cached_stop_probs(model_dir, f"zoo:{name}:{key}", records[:limit], cache,
                                                        device="cuda", label=name)
    rows = evaluate(zoo_case.spec, source, zoo_case.pair, plan="zoo")
    claim_result(rows)
    assert_holds(rows)
