"""The stop-token codes are decided in one place (:func:`harness.train.preflight.stop_token_findings`): the
pre-flight (the base's tokenizer before training) and the post-flight (a node's saved folder) report the same
codes, fields and wording for the same tokenizer and generation EOS ids, each naming its own file. Real
tokenizers of the zoo (/work/shared/tokenizers), each against generation configs that stop on both of its
end tokens, on one, or on nothing."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from harness.audit.codes import end_of_turn
from harness.train import postflight, preflight

ROOT = Path(__file__).resolve().parents[2]
ZOO = next((z for z in (ROOT.parent / "shared" / "tokenizers", Path("/work/shared/tokenizers")) if z.is_dir()), None)
# glm4-chat loads only with trust_remote_code; every other folder of the zoo loads as it is
FOLDERS = sorted(p.name for p in ZOO.iterdir() if p.is_dir() and p.name != "glm4-chat") if ZOO else []

# generation EOS ids from the tokenizer's (eos, end-of-turn), and the codes they must give
CASES = {
    "both": (lambda eos, eot: [eos, eot], lambda eos, eot: []),
    "eos-only": (lambda eos, eot: [eos], lambda eos, eot: [] if eot == eos else ["end-of-turn-not-generation-eos"]),
    "eot-only": (lambda eos, eot: [eot], lambda eos, eot: [] if eot == eos else ["tokenizer-eos-not-generation-eos"]),
    "none": (lambda eos, eot: [], lambda eos, eot: ["end-of-turn-not-generation-eos"]),
}


@functools.lru_cache(maxsize=None)
def _tok(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ZOO / name)


def _both(tok, gen: list[int], gen_file: str = "generation_config.json") -> tuple[list[dict], list[dict]]:
    """(the pre-flight's stop findings, the post-flight's) for ``tok`` and ``gen``, as each records them;
    each also checked to carry the shared decision's own field and wording, with its own place named."""
    shared = preflight.stop_token_findings(tok, gen)[1]
    pre, post = preflight.stop_dicts(tok, gen)[1], postflight.stop_findings(tok, gen_file, gen)
    files = {preflight.TOKENIZER_SIDE: "tokenizer_config.json", preflight.GENERATION_SIDE: gen_file}
    for f, a, b in zip(shared, pre, post, strict=True):
        assert (a["code"], a["severity"], a["field"]) == (b["code"], b["severity"], b["field"]) \
            == (f.code, f.severity, f.field)
        assert a["message"].endswith(f.message) and b["message"] == f"{files[f.side]}: {f.message}"
        assert b["file"] == files[f.side]
    return pre, post


@pytest.mark.skipif(ZOO is None, reason="the tokenizer zoo is not here (../shared/tokenizers, /work/shared/tokenizers)")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("folder", FOLDERS)
def test_preflight_and_postflight_give_the_same_codes(folder, case):
    tok = _tok(folder)
    eos, eot = tok.eos_token_id, end_of_turn(tok)
    assert eos is not None and eot is not None, "every zoo template ends a turn with a special token"
    make_gen, want = CASES[case]
    pre, post = _both(tok, make_gen(eos, eot))
    assert [f["code"] for f in pre] == [f["code"] for f in post] == want(eos, eot)


@pytest.mark.skipif(ZOO is None, reason="the tokenizer zoo is not here")
@pytest.mark.parametrize("folder, want", [
    ("qwen2.5-instruct", []),
    ("gemma2-it", []),
    # Llama-3-Instruct at launch: generation stops on <|end_of_text|>, its template ends turns with <|eot_id|>
    ("llama3-instruct", ["end-of-turn-not-generation-eos"]),
])
def test_the_zoo_generation_configs_as_published(folder, want):
    tok = _tok(folder)
    gen_file, gen = postflight.generation_eos_of(ZOO / folder)
    pre, post = _both(tok, gen, gen_file)
    assert [f["code"] for f in pre] == [f["code"] for f in post] == want


@pytest.mark.skipif(ZOO is None, reason="the tokenizer zoo is not here")
@pytest.mark.parametrize("folder", ["qwen2.5-instruct", "llama3-instruct"])
def test_a_null_eos_and_a_template_without_a_stop_token(folder):
    """The two tokenizer-side codes, on a fresh copy of the tokenizer (the cached one stays as it is)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ZOO / folder)
    eot = end_of_turn(tok)
    tok.eos_token = None
    pre, post = _both(tok, [eot])
    assert [f["code"] for f in pre] == [f["code"] for f in post] == ["tokenizer-eos-missing"]
    assert pre[0]["message"] == "eos_token is null: nothing names the token that ends a sequence"

    tok = AutoTokenizer.from_pretrained(ZOO / folder)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    pre, post = _both(tok, [tok.eos_token_id])
    assert [f["code"] for f in pre] == [f["code"] for f in post] == ["template-no-end-of-turn"]
