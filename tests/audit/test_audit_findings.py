"""Each finding code is produced by a synthetic tokenizer reproducing its bug class, and absent when clean."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from audit_synth import (CLEAN, CONV, DEFAULT_SYSTEM, EOT_END, HEADER_AFTER, NEWLINE_AFTER, NO_BOS, NO_END, PAIRS,
                         SWALLOWS, WITH_EOS, bpe, conv, seed_text, sp)
from harness.audit import CODES, audit

PREF = [{"prompt": c["prompt"], "chosen": c["completion"],
         "rejected": [{"role": "assistant", "content": "no."}]} for c in CONV]
SEED = [seed_text(p, r) for p, r in PAIRS]
TRANSFORMERS_VERSION = tuple(int(x) for x in version("transformers").split(".")[:2])


@pytest.fixture(scope="module")
def clean_tok():
    return bpe(CLEAN)


@pytest.mark.parametrize("pipeline,fmt,data", [("trl-sft", "conversational", CONV), ("trl-dpo", "preference", PREF)])
def test_clean_setup_has_no_findings(clean_tok, pipeline, fmt, data):
    report = audit(clean_tok, fmt=fmt, data=data, pipeline=pipeline)
    assert report.findings == [], [f.to_dict() for f in report.findings]
    assert report.exit_code == 0
    assert report.examples == len(data)


def _codes(report):
    return {(f.code, f.severity) for f in report.findings}


CASES = {
    "eos-missing": (lambda: bpe(NO_END), dict(data=CONV), {("eos-missing", "error")}),
    "eos-split": (lambda: sp(split_special_tokens=True), dict(fmt="text", data=SEED, response_marker="[/INST]"),
                  {("eos-split", "error")}),
    "eos-masked": (lambda: sp(), dict(fmt="text", data=SEED, pipeline="hf-clm"),
                   {("eos-masked", "error"), ("double-bos", "error")}),
    "stop-not-generation-eos": (lambda: bpe(EOT_END, eos="</s>"), dict(data=CONV),
                                {("stop-not-generation-eos", "error")}),
    "eos-duplicated": (lambda: bpe(WITH_EOS), dict(data=[conv(p, r + "<|im_end|>") for p, r in PAIRS]),
                       {("eos-duplicated", "error")}),
    "double-bos": (lambda: sp(), dict(fmt="text", data=SEED, response_marker="[/INST]"), {("double-bos", "error")}),
    "prompt-trained": (lambda: bpe(CLEAN), dict(fmt="messages", data=[{"messages": c["prompt"] + c["completion"]}
                                                                    for c in CONV]), {("prompt-trained", "error")}),
    "completion-masked": (lambda: bpe(CLEAN, pad="。"), dict(pipeline="hf-clm", data=CONV),
                          {("completion-masked", "error"), ("prompt-trained", "error")}),
    # pad = the template's end-of-turn token (not the EOS): the plain collator masks every turn end
    "end-of-turn-is-pad": (lambda: bpe(EOT_END, pad="<|eot|>"), dict(pipeline="hf-clm", data=CONV),
                           {("end-of-turn-is-pad", "error"), ("prompt-trained", "error")}),
    "completion-masked-by-generation-prompt": (
        lambda: bpe(SWALLOWS), dict(data=[conv(p, "Sure, " + r) for p, r in PAIRS]), {("completion-masked", "error")}),
    "all-masked": (lambda: bpe(CLEAN), dict(data=CONV, max_length=6), {("all-masked", "error")}),
    "prefix-mismatch": (lambda: bpe(CLEAN, add_bos=True), dict(fmt="prompt-completion", data=[{"prompt": "the wor",
                                                                                   "completion": "ld is wide"}]),
                        {("prefix-mismatch", "warning")}),
    "template-injects": (lambda: bpe(DEFAULT_SYSTEM), dict(data=[conv(p, r) for p, r in PAIRS]),
                         {("template-injects", "warning")}),
    "trained-after-stop": (lambda: bpe(HEADER_AFTER, eos="<|eot|>"), dict(data=CONV),
                           {("trained-after-stop", "error")}),
    "trained-after-stop-whitespace": (lambda: bpe(NEWLINE_AFTER), dict(data=CONV),
                                      {("trained-after-stop", "warning")}),
    "bos-missing": (lambda: bpe(NO_BOS), dict(data=CONV), {("bos-missing", "warning")}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bug_class_gives_its_code(name):
    build, kwargs, expected = CASES[name]
    report = audit(build(), **kwargs)
    assert _codes(report) == expected, [f.to_dict() for f in report.findings]
    for f in report.findings:
        assert 1 <= f.count == len(f.examples) == len(f.positions) <= report.examples
        assert f.message and f.hint == CODES.get(f.code).hint
    assert report.exit_code == (1 if any(s == "error" for _, s in expected) else 0)


def test_every_code_is_covered():
    # eos-truncated below; the issue-12 codes in test_audit_bug_classes.py; packed batches in
    # test_audit_batches.py and multi-turn / tool turns in test_audit_turns.py (real zoo tokenizers)
    others = {"eos-truncated", "eos-config-mismatch", "think-injected", "think-dropped",
              "packed-cross-attention", "packed-label-crosses", "packed-reply-cut", "batch-mask-changed",
              "turn-trained", "turn-masked", "turn-stop-masked", "turn-stop-only", "tool-result-trained"}
    covered = {c for _, _, exp in CASES.values() for c, _ in exp} | others
    assert covered == set(CODES.names())


def test_eos_truncated_when_max_length_cuts_the_stop(clean_tok):
    rec = CONV[0]
    full = clean_tok.apply_chat_template(rec["prompt"] + rec["completion"], tokenize=True, return_dict=True)["input_ids"]
    report = audit(clean_tok, data=[rec], max_length=len(full) - 1)
    assert _codes(report) == {("eos-truncated", "error")}
    assert report.findings[0].positions[0] == [len(full) - 2]
    assert audit(clean_tok, data=[rec], max_length=len(full)).findings == []


def test_dpo_findings_are_per_side():
    data = [{"prompt": c["prompt"], "chosen": c["completion"], "rejected": [{"role": "assistant", "content": "no."}]}
            for c in CONV]
    report = audit(bpe(NO_END), fmt="preference", data=data, pipeline="trl-dpo")
    assert {(f.code, f.side) for f in report.findings} == {("eos-missing", "chosen"), ("eos-missing", "rejected")}
    assert len(report.sequences) == 2 * len(data)


def test_generation_eos_that_includes_the_stop_clears_the_finding():
    tok = bpe(EOT_END, eos="</s>")
    eot = tok.convert_tokens_to_ids("<|eot|>")
    assert audit(tok, data=CONV, generation_eos=[eot, tok.eos_token_id]).findings == []
    # without the tokenizer's own EOS among them, only the config mismatch is left
    assert audit(tok, data=CONV, generation_eos=[eot]).codes == {"eos-config-mismatch"}


def test_eos_split_positions_spell_the_eos_text():
    tok = sp(split_special_tokens=True)
    report = audit(tok, fmt="text", data=SEED[:1], response_marker="[/INST]")
    f = report.finding("eos-split")
    seq = report.sequences[0].seq
    assert tok.decode([seq.ids[p] for p in f.positions[0]]).strip() == "</s>"
    assert f.positions[0][-1] == len(seq.ids) - 1


def test_trl_appends_eos_to_text_completions_but_hf_clm_does_not():
    tok = sp()
    data = [seed_text(p, r, eos=False) for p, r in PAIRS]
    assert audit(tok, fmt="text", data=data, response_marker="[/INST]").codes == {"double-bos"}
    assert audit(tok, fmt="text", data=data, pipeline="hf-clm").codes == {"double-bos", "eos-missing"}


def test_plain_text_preference_pairs_get_trls_eos_per_side():
    tok = sp()
    data = [{"prompt": f"[INST] {p} [/INST]", "chosen": f" {r}", "rejected": " no."} for p, r in PAIRS]
    report = audit(tok, fmt="preference", data=data, pipeline="trl-dpo")
    assert report.findings == [], [f.to_dict() for f in report.findings]
    for a in report.sequences:  # trl appends the EOS to each side, and trains it
        assert a.seq.ids[-1] == tok.eos_token_id and a.seq.labels[-1] == tok.eos_token_id


def test_assistant_only_loss_follows_the_generation_blocks():
    from audit_synth import GEN, GEN_NO_END

    msgs = [{"messages": c["prompt"] + c["completion"]} for c in CONV]
    assert audit(bpe(GEN), fmt="messages", data=msgs).codes == {"prompt-trained"}
    assert audit(bpe(GEN), fmt="messages", data=msgs, assistant_only_loss=True).findings == []
    # trl only warns here; the audit names it: the end-of-turn token sits outside the block
    report = audit(bpe(GEN_NO_END), fmt="messages", data=msgs, assistant_only_loss=True)
    assert report.finding("eos-masked").examples == [0, 1, 2] and report.exit_code == 1
    # A block that ends right after an emoji: transformers < 5.24 mapped the span's end through
    # char_to_token(end - 1), which leaves the emoji's last byte tokens outside the mask (only
    # example 1 ends with one). 5.24 masks every token whose offsets overlap the span, so the whole
    # emoji is trained (tokenization_utils_base.apply_chat_template).
    if TRANSFORMERS_VERSION >= (5, 24):
        assert report.codes == {"eos-masked"}
    else:
        assert report.codes == {"eos-masked", "completion-masked"}
        assert report.finding("completion-masked").examples == [1]
