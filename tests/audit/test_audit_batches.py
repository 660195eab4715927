"""Packed and padding-free batches through the installed trl (SFTConfig packing / padding_free) with real zoo
tokenizers: the audit maps every token of the collated batch back to its example and names the batch's bugs
(examples attending to each other, a label trained as another example's continuation, a reply cut across
segments, a collator that loses the prepared labels). trl's bfd packing and padding-free mode are the clean
controls; the failing cases are configurations trl accepts (wrapped / bfd_split packing, a user collator)."""

from __future__ import annotations

import json

import pytest
from transformers import DataCollatorForLanguageModeling

from harness.__main__ import main
from harness.audit import audit, load_tokenizer
from harness.errors import HarnessError

pytestmark = pytest.mark.tokenizers
PACKED = {"packed-cross-attention", "packed-label-crosses", "packed-reply-cut", "batch-mask-changed"}
REPLIES = ["Sunny and warm today.", "Rain all day, take an umbrella.", "Snow.", "Cloudy with a light breeze.",
           "Windy in the afternoon, calm later."]


def _messages() -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Weather {i}?"}, {"role": "assistant", "content": a}]}
            for i, a in enumerate(REPLIES)]


def _conv() -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Weather {i}?"}], "completion": [{"role": "assistant", "content": a}]}
            for i, a in enumerate(REPLIES)]


@pytest.fixture(scope="module")
def qwen25(tokenizer_zoo):
    return load_tokenizer(tokenizer_zoo / "qwen2.5-instruct")


@pytest.fixture(scope="module")
def llama3(tokenizer_zoo):
    return load_tokenizer(tokenizer_zoo / "llama3-instruct")


def _labels(report) -> list[list[int]]:
    """Labels the loss uses: the first position of a sequence is never predicted (the batch view masks it)."""
    return [a.seq.labels[1:] for a in report.sequences]


# ---- trl's own packing: the clean controls

@pytest.mark.parametrize("options", [{"packing": "bfd"}, {"padding_free": True}, {"packing": "bfd", "padding_free": True}],
                         ids=["bfd", "padding-free", "bfd+padding-free"])
@pytest.mark.parametrize("fmt,records", [("messages", _messages), ("conversational", _conv)])
def test_trl_bfd_and_padding_free_train_each_example_as_unpacked(qwen25, options, fmt, records):
    plain = audit(qwen25, data=records(), fmt=fmt)
    packed = audit(qwen25, data=records(), fmt=fmt, **options)
    assert not packed.codes & PACKED, [f.to_dict() for f in packed.findings]
    assert packed.codes == plain.codes
    # every example, found back in the flattened batch, trains exactly the tokens it trains unpacked
    assert [a.seq.ids for a in packed.sequences] == [a.seq.ids for a in plain.sequences]
    assert _labels(packed) == _labels(plain)


# ---- wrapped packing: rows with an all-ones attention mask

def test_wrapped_packing_attends_and_trains_across_examples(qwen25):
    report = audit(qwen25, data=_messages(), fmt="messages", packing="wrapped", max_length=256)
    cross, over = report.finding("packed-cross-attention"), report.finding("packed-label-crosses")
    assert cross is not None and over is not None and report.exit_code == 1, [f.to_dict() for f in report.findings]
    # everything fits one row: examples 1..4 attend to the ones before them, from their first token
    assert cross.examples == [1, 2, 3, 4] and all(cross.positions[e] == [0] for e in cross.examples)
    # messages train every token: each example's first token is trained after the previous one's last token
    assert over.examples == [1, 2, 3, 4] and all(over.positions[e] == [0] for e in over.examples)
    assert "<|im_start|>" in over.detail and "of example 0" in over.detail
    assert "packed-reply-cut" not in report.codes


def test_wrapped_packing_of_completions_crosses_attention_but_trains_no_prompt_token(llama3):
    # prompt/completion: each example opens with masked prompt tokens, so no label crosses, but attention does
    report = audit(llama3, data=_conv(), packing="wrapped", max_length=512)
    assert "packed-cross-attention" in report.codes
    assert "packed-label-crosses" not in report.codes, report.finding("packed-label-crosses").to_dict()


@pytest.mark.parametrize("options", [{"packing": "wrapped"}, {"packing": "wrapped", "padding_free": True},
                                     {"packing": "bfd_split"}], ids=["wrapped", "wrapped+padding-free", "bfd_split"])
def test_packing_that_cuts_a_reply_is_named(qwen25, options):
    report = audit(qwen25, data=_conv(), max_length=40, **options)
    cut = report.finding("packed-reply-cut")
    assert cut is not None, [f.to_dict() for f in report.findings]
    n = {a.seq.index: len(a.seq.ids) for a in report.sequences}
    assert all(0 < p < n[e] for e in cut.examples for p in cut.positions[e])
    # bfd_split keeps fragments apart (padding-free), wrapped rows mix examples
    assert ("packed-cross-attention" in report.codes) == (options["packing"] == "wrapped")


def test_bfd_truncation_is_eos_truncated(qwen25):
    report = audit(qwen25, data=_conv(), packing="bfd", max_length=40)
    assert "eos-truncated" in report.codes and not report.codes & PACKED
    longer = sum(len(a.seq.ids) > 40 for a in audit(qwen25, data=_conv()).sequences)
    assert longer and report.stats[0].truncated == longer


# ---- a collator trl accepts (no padding-free) that rebuilds labels from input_ids

def _ids_only_collator(tok, side: str = "right"):
    plain = DataCollatorForLanguageModeling(tok, mlm=False)

    def collate(features):
        old, tok.padding_side = tok.padding_side, side
        try:
            return plain([{"input_ids": f["input_ids"]} for f in features])
        finally:
            tok.padding_side = old
    return collate


@pytest.mark.parametrize("options,side", [({}, "right"), ({}, "left"), ({"packing": "wrapped", "max_length": 512}, "right")],
                         ids=["unpacked", "unpacked-left-padded", "wrapped"])
def test_collator_that_drops_the_prepared_labels_is_named(qwen25, options, side):
    if qwen25.pad_token is None:
        qwen25.pad_token = qwen25.eos_token
    report = audit(qwen25, data=_conv(), data_collator=_ids_only_collator(qwen25, side), **options)
    lost = report.finding("batch-mask-changed")
    assert lost is not None and lost.count == len(REPLIES), [f.to_dict() for f in report.findings]
    assert "prompt-trained" in report.codes
    assert lost.detail.startswith(f"{len(lost.positions[0])} tokens masked in the prepared labels are trained")


# ---- bad options and the CLI

def test_packing_options_are_checked(qwen25):
    with pytest.raises(HarnessError, match="packing strategy"):
        audit(qwen25, data=_conv(), packing="greedy")
    with pytest.raises(HarnessError, match="trl-sft pipeline only"):
        audit(qwen25, data=_conv(), pipeline="hf-clm", padding_free=True)


def test_cli_packing_and_padding_free(tokenizer_zoo, tmp_path, capsys):
    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _messages()), encoding="utf-8")
    base = ["audit", "--tokenizer", str(tokenizer_zoo / "qwen2.5-instruct"), "--format", "messages", "--data", str(data)]
    out = tmp_path / "r.json"
    assert main(base + ["--packing", "wrapped", "--max-length", "256", "--json", str(out), "--show", "0"]) == 1
    codes = {f["code"] for f in json.loads(out.read_text())["findings"]}
    assert {"packed-cross-attention", "packed-label-crosses"} <= codes
    capsys.readouterr()
    # trl refuses padding_free with a max_length and no packing: one line, exit 2
    assert main(base + ["--padding-free", "--max-length", "64"]) == 2
    err = capsys.readouterr().err
    assert "trl-sft rejected this setup" in err and "padding_free" in err
