"""The bug classes of issue 12: each reproduced with real tokenizers built here, each fixed."""

from __future__ import annotations

import json

import pytest

from audit_synth import (CLEAN, CONV, NO_BOS, NO_SYSTEM, PAIRS, ROLE_MARKERS, SHORT_SYSTEM, THINK, bpe, conv,
                         think_conv)
from harness.__main__ import main
from harness.audit import audit

# GPT-2 style: one token is BOS, EOS and (with the usual recipe) pad.
GPT2_TEXT = [{"prompt": f"Q: {p}\nA:", "completion": f" {r}"} for p, r in PAIRS]


def _codes(report):
    return {(f.code, f.severity) for f in report.findings}


def test_bos_equal_eos_trained_by_trl_is_clean():
    tok = bpe(None, eos="</s>", bos="</s>")
    report = audit(tok, fmt="prompt-completion", data=GPT2_TEXT)
    assert report.findings == [], [f.to_dict() for f in report.findings]
    for a in report.sequences:  # trl appends the EOS and trains it
        assert a.seq.ids[-1] == tok.eos_token_id and a.seq.labels[-1] == tok.eos_token_id


def test_bos_equal_eos_masked_as_pad_is_eos_masked():
    tok = bpe(None, eos="</s>", bos="</s>")
    data = [{"text": f"Q: {p}\nA: {r}</s>"} for p, r in PAIRS]
    assert _codes(audit(tok, fmt="text", data=data, pipeline="hf-clm")) == {("eos-masked", "error")}


def test_bos_equal_eos_opening_the_sequence_is_not_its_stop():
    tok = bpe(None, eos="</s>", bos="</s>")
    data = [{"text": f"</s>Q: {p}\nA: {r}"} for p, r in PAIRS]  # no EOS after the reply
    assert _codes(audit(tok, fmt="text", data=data, pipeline="hf-clm")) == {("eos-missing", "error")}
    # opened and closed by the same token, pad == eos: the closing one is the masked stop
    data = [{"text": f"</s>Q: {p}\nA: {r}</s>"} for p, r in PAIRS]
    assert _codes(audit(tok, fmt="text", data=data, pipeline="hf-clm")) == {("eos-masked", "error")}


def test_default_system_prompt_of_short_words_is_flagged():
    data = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": r}]}
            for p, r in PAIRS]
    report = audit(bpe(SHORT_SYSTEM, bos=None), data=data)
    assert _codes(report) == {("template-injects", "warning")}
    assert "You are a helpful assistant" in report.finding("template-injects").detail
    assert audit(bpe(NO_BOS, bos=None), data=data).findings == []  # the same template without it is clean


def test_eos_config_mismatch():
    tok = bpe(CLEAN)
    other = tok.convert_tokens_to_ids("</s>")
    report = audit(tok, data=CONV, generation_eos=[other])
    assert _codes(report) == {("eos-config-mismatch", "warning")}
    assert "</s>" in report.finding("eos-config-mismatch").detail
    assert audit(tok, data=CONV, generation_eos=[other, tok.eos_token_id]).findings == []


def test_think_block_written_by_the_template_is_flagged():
    tok = bpe(THINK, bos=None)
    report = audit(tok, data=[think_conv(p, r) for p, r in PAIRS])
    assert _codes(report) == {("think-injected", "warning")}
    f = report.finding("think-injected")
    seq = report.sequences[0].seq
    assert tok.decode([seq.ids[p] for p in f.positions[0]]).replace("\n", "") == "<think></think>"
    # Reasoning given in the data is trained as the data says: no finding.
    assert audit(tok, data=[think_conv(p, r, "let me think") for p, r in PAIRS]).findings == []


def test_reasoning_of_earlier_turns_dropped_by_the_template():
    tok = bpe(THINK, bos=None)
    msgs = [{"messages": [{"role": "user", "content": "hello"},
                          {"role": "assistant", "content": "<think>\nlet me think first\n</think>\n\nhello"},
                          {"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, r in PAIRS]
    report = audit(tok, fmt="messages", data=msgs, pipeline="hf-clm")
    f = report.finding("think-dropped")
    assert f is not None and f.count == len(PAIRS) and "let me think first" in f.detail


def test_role_marker_terminated_turn_names_the_marker():
    tok = bpe(ROLE_MARKERS, eos="</s>", bos=None)
    user = tok.convert_tokens_to_ids("<|user|>")
    data = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": r}]}
            for p, r in PAIRS]
    report = audit(tok, data=data, generation_eos=[tok.eos_token_id, user])
    f = report.finding("eos-missing")
    assert f is not None and "<|user|>" in f.detail and "next role marker" in f.detail
    # A reply that is followed by the next role marker, trained, stops correctly.
    msgs = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r},
                          {"role": "user", "content": "hello"}]} for p, r in PAIRS]
    report = audit(tok, fmt="messages", data=msgs, pipeline="hf-clm", generation_eos=[tok.eos_token_id, user])
    assert "eos-missing" not in report.codes and "stop-not-generation-eos" not in report.codes


def test_fold_system_for_a_template_that_rejects_it():
    tok = bpe(NO_SYSTEM)
    data = [conv(p, r, "be polite") for p, r in PAIRS]
    from harness.errors import LoadError

    with pytest.raises(LoadError, match="fold-system"):
        audit(tok, data=data)
    report = audit(tok, data=data, fold_system=True)
    assert report.findings == []
    assert "be polite" in tok.decode(report.sequences[0].seq.ids)


@pytest.mark.parametrize("kwargs,needle", [(dict(max_length=0), "max_length"), (dict(limit=0), "limit"),
                                           (dict(max_length=-3), "max_length")])
def test_non_positive_lengths_are_refused(kwargs, needle):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match=needle):
        audit(bpe(CLEAN), data=CONV, **kwargs)


# ---- loading: one line and exit 2 ----------------------------------------------------------

def _run(args, capsys):
    code = main(["audit", *map(str, args)])
    return code, capsys.readouterr()


@pytest.fixture()
def clean_folder(tmp_path):
    bpe(CLEAN).save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def _one_error_line(cap, *needles):
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), cap.err
    for n in needles:
        assert n in lines[0], lines[0]


def test_folder_without_vocabulary_exits_2(clean_folder, capsys):
    for f in clean_folder.iterdir():
        if f.name != "tokenizer_config.json":
            f.unlink()
    code, cap = _run(["--tokenizer", clean_folder], capsys)
    assert code == 2
    _one_error_line(cap, str(clean_folder), "no vocabulary")


def test_tokenizer_that_cannot_encode_the_data_gives_no_verdict():
    from tokenizers import Tokenizer, models

    from harness.errors import LoadError
    from transformers import PreTrainedTokenizerFast

    empty = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token="</s>", bos_token="<s>")
    empty.chat_template = CLEAN
    with pytest.raises(LoadError, match="cannot encode the data"):
        audit(empty, data=CONV)


@pytest.mark.parametrize("content", ['{"eos_token_id": "</s>"}', '{"eos_token_id": [1, "x"]}', "[1, 2]", "{oops"])
def test_malformed_generation_config_exits_2(clean_folder, capsys, content):
    (clean_folder / "generation_config.json").write_text(content, encoding="utf-8")
    code, cap = _run(["--tokenizer", clean_folder], capsys)
    assert code == 2
    _one_error_line(cap, "generation_config.json")


def test_data_path_that_is_a_folder_exits_2(clean_folder, tmp_path, capsys):
    code, cap = _run(["--tokenizer", clean_folder, "--data", tmp_path], capsys)
    assert code == 2
    _one_error_line(cap, str(tmp_path), "is a folder")


def test_max_length_0_exits_2(clean_folder, capsys):
    code, cap = _run(["--tokenizer", clean_folder, "--max-length", "0"], capsys)
    assert code == 2
    _one_error_line(cap, "--max-length", "positive")


def test_zoo_name_typo_answers_did_you_mean_at_once(tmp_path, capsys, monkeypatch):
    """A typo of a zoo name is answered before any hub lookup (which would cost 48 s of retries offline)."""
    import socket

    bpe(CLEAN).save_pretrained(tmp_path / "llama3-instruct")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # The hub endpoint is a loopback socket that counts connection attempts: the kernel completes them
    # into its backlog, so one shows up there even though nothing accepts it.
    with socket.socket() as hub:
        hub.bind(("127.0.0.1", 0))
        hub.listen(8)
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{hub.getsockname()[1]}")
        code, cap = _run(["--tokenizer", "llama3-instuct", "--zoo", tmp_path], capsys)
        hub.setblocking(False)
        with pytest.raises(BlockingIOError):  # no connection is waiting: the hub was never asked
            hub.accept()
    assert code == 2
    _one_error_line(cap, "did you mean llama3-instruct")


def test_unreachable_hub_fails_after_one_attempt(monkeypatch):
    from harness.audit import loading
    from harness.errors import LoadError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    with pytest.raises(LoadError, match="could not be reached.*one attempt.*HF_HUB_OFFLINE=1"):
        loading.load_tokenizer("nobody/uncached-model-xyz")


def test_snapshot_json_names_versions(clean_folder, tmp_path, capsys):
    snap = tmp_path / "snap.json"
    code, cap = _run(["--tokenizer", clean_folder, "--snapshot", snap], capsys)
    assert code == 0, cap.err
    doc = json.loads(snap.read_text(encoding="utf-8"))
    assert {"trl", "transformers", "tokenizers"} <= set(doc["versions"])


def test_corrupt_tokenizer_json_exits_2(clean_folder, capsys):
    (clean_folder / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 3}}', encoding="utf-8")
    code, cap = _run(["--tokenizer", clean_folder], capsys)
    assert code == 2
    _one_error_line(cap, str(clean_folder))


@pytest.mark.parametrize("content", [b"\xff\xfe{{ not utf-8 \xff", None])
def test_unreadable_template_file_exits_2(clean_folder, tmp_path, capsys, content):
    path = tmp_path / "t.jinja"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    code, cap = _run(["--tokenizer", clean_folder, "--chat-template", path], capsys)
    assert code == 2
    _one_error_line(cap, str(path))
