"""Hypothesis: for a clean setup, whatever the prompt and reply text, trl trains exactly the reply and its stop."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from audit_synth import CLEAN, bpe, conv
from harness.audit import audit, trained_text
from harness.audit.codes import ERROR, IGNORE

TOK = bpe(CLEAN)
STOP = "<|im_end|>"
SPECIAL_TEXTS = ("<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<|eot|>", "<|header|>")

PIECES = st.sampled_from(["こんにちは", "ですわ", "。", "😀", "🎉", " ", "  ", "\n", "\n\n", "\t", "[INST]", "[/INST]",
                          "<<SYS>>", "### 応答:", "assistant", "<|im_start", "im_end|>", "<s", "s>", "user\n", "hello",
                          "world", "Hello there", "é", "A"])
TEXT = st.lists(st.one_of(PIECES, st.text(max_size=4)), max_size=8).map("".join).filter(
    lambda s: not any(t in s for t in SPECIAL_TEXTS))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=6))
@example(pairs=[(" leading and trailing ", "  reply with spaces  ")])
@example(pairs=[("prompt\n", "\nreply starting with a newline\n")])
@example(pairs=[("[/INST]", "<<SYS>> ### 応答: 😀")])
@example(pairs=[("", "")])
def test_clean_setup_trains_exactly_the_reply_and_its_stop(pairs):
    report = audit(TOK, data=[conv(p, r) for p, r in pairs])
    assert not [f for f in report.findings if f.severity == ERROR], [f.to_dict() for f in report.findings]
    mismatched = {i for f in report.findings if f.code == "prefix-mismatch" for i in f.examples}
    for a in report.sequences:
        seq, reply = a.seq, pairs[a.seq.index][1]
        # prompt tokens are never trained
        assert all(lab == IGNORE for lab in seq.labels[: seq.prompt_len])
        # the trained span is the reply plus its stop token (when tokens merge across the boundary,
        # trl starts the completion where the tokenizations diverge: the span then ends with it)
        text = trained_text(TOK, seq)
        if seq.index in mismatched:
            assert text.endswith(reply + STOP)
        else:
            assert text == reply + STOP
