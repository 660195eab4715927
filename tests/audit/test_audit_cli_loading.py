"""CLI exit codes and JSON schema; loading errors name what failed."""

from __future__ import annotations

import json

import pytest

from audit_synth import CLEAN, CONV, FAILS, NO_END, bpe
from harness.__main__ import main
from harness.audit import audit
from harness.errors import LoadError


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-cli")
    out = {}
    for name, template in (("clean", CLEAN), ("no-end", NO_END)):
        bpe(template).save_pretrained(root / name)
        out[name] = root / name
    data = root / "conv.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in CONV), encoding="utf-8")
    out["data"] = data
    return out


def _run(args, capsys):
    code = main(["audit", *map(str, args)])
    return code, capsys.readouterr()


def test_exit_0_when_clean_and_json_schema(folders, tmp_path, capsys):
    dest = tmp_path / "out" / "audit.json"
    code, cap = _run(["--tokenizer", folders["clean"], "--data", folders["data"], "--json", dest], capsys)
    assert code == 0, cap.err
    doc = json.loads(dest.read_text(encoding="utf-8"))
    assert set(doc) >= {"tokenizer", "pipeline", "examples", "findings"}
    assert doc["pipeline"] == "trl-sft" and doc["examples"] == len(CONV) and doc["findings"] == []
    assert "clean" in cap.out and not list(dest.parent.glob(".*.tmp"))


def test_exit_1_on_error_findings_json_to_stdout(folders, capsys):
    code, cap = _run(["--tokenizer", folders["no-end"], "--data", folders["data"], "--json", "-"], capsys)
    assert code == 1
    doc = json.loads(cap.out)
    (f,) = doc["findings"]
    assert set(f) >= {"code", "severity", "count", "examples", "message", "hint"}
    assert (f["code"], f["severity"], f["count"], f["examples"]) == ("eos-missing", "error", 3, [0, 1, 2])


def test_terminal_view_shows_ids_pieces_and_summary(folders, capsys):
    code, cap = _run(["--tokenizer", folders["no-end"], "--data", folders["data"], "--show", "1"], capsys)
    assert code == 1
    assert "eos-missing" in cap.out and "example 0" in cap.out and "example 1" not in cap.out
    first_id = bpe(NO_END).convert_tokens_to_ids("<s>")
    assert f"<s>({first_id})" in cap.out


def test_pipeline_all_runs_each_pipeline(folders, capsys):
    code, cap = _run(["--tokenizer", folders["clean"], "--data", folders["data"], "--pipeline", "all", "--json", "-"],
                     capsys)
    doc = json.loads(cap.out)
    assert code == 1  # hf-clm trains the prompt
    assert {f["pipeline"] for f in doc["findings"]} == {"hf-clm"}
    assert any("trl-dpo skipped" in n for n in doc["notes"])


@pytest.mark.parametrize("args,needle", [
    (["--tokenizer", "./no/such/tokenizer"], "'./no/such/tokenizer' does not exist"),
    (["--tokenizer", "nobody/uncached-model-xyz"], "'nobody/uncached-model-xyz'"),
])
def test_exit_2_when_the_tokenizer_cannot_be_loaded(args, needle, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, cap = _run(args, capsys)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_exit_2_on_a_jsonl_row_missing_a_field(folders, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    rows = [CONV[0], CONV[1], {"prompt": CONV[2]["prompt"]}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, cap = _run(["--tokenizer", folders["clean"], "--data", bad], capsys)
    assert code == 2
    assert f"{bad}:3" in cap.err and "completion" in cap.err


def test_tokenizer_without_eos_is_a_load_error():
    with pytest.raises(LoadError, match="synthetic-bpe.*no eos_token"):
        audit(bpe(CLEAN, eos=None), data=CONV)


def test_template_that_fails_to_render_names_the_example():
    with pytest.raises(LoadError, match="chat template failed to render example 0.*rejects every conversation"):
        audit(bpe(CLEAN), chat_template=FAILS, data=CONV)


def test_chat_template_file_replaces_the_tokenizers(tmp_path):
    path = tmp_path / "no_end.jinja"
    path.write_text(NO_END, encoding="utf-8")
    tok = bpe(CLEAN)
    assert audit(tok, chat_template=path, data=CONV).codes == {"eos-missing"}
    assert tok.chat_template == CLEAN  # the caller's tokenizer is left alone
    with pytest.raises(LoadError, match="missing.jinja"):
        audit(tok, chat_template=tmp_path / "missing.jinja", data=CONV)


def test_conversational_data_needs_a_chat_template():
    with pytest.raises(LoadError, match="no chat template"):
        audit(bpe(None), data=CONV)


def test_response_marker_missing_names_the_example():
    with pytest.raises(LoadError, match="example 1: response marker"):
        audit(bpe(CLEAN), fmt="text", data=[{"text": "a [/INST] b"}, {"text": "no marker"}],
              response_marker="[/INST]")


def test_default_data_is_the_persona_fixtures():
    from harness.data import load_persona

    report = audit(bpe(CLEAN), limit=5)
    assert report.examples == 5
    first = report.sequences[0].seq
    assert load_persona()[0].d1 in trained_text_of(report, first)


def trained_text_of(report, seq):
    from harness.audit import trained_text

    return trained_text(report.tok, seq)


def test_the_callers_tokenizer_is_left_as_it_was():
    tok = bpe(CLEAN)
    assert tok.pad_token is None
    for pipeline in ("trl-sft", "hf-clm"):
        audit(tok, data=CONV, pipeline=pipeline, chat_template=NO_END)
        assert tok.pad_token is None and tok.chat_template == CLEAN


def test_the_zoo_default_comes_from_the_run_configuration(folders, capsys, monkeypatch):
    monkeypatch.setenv("HARNESS_TOKENIZER_ZOO", str(folders["clean"].parent))
    code, cap = _run(["--tokenizer", "clean", "--data", folders["data"], "--json", "-"], capsys)
    assert code == 0, cap.err
    assert json.loads(cap.out)["tokenizer"] == "clean"


def test_exit_2_on_a_gguf_file_cut_short(tmp_path, capsys):
    """The models layer's one reader: an interrupted download is named in one line, before any conversion."""
    from gguf_helpers import cut_gguf

    whole, cut = cut_gguf(tmp_path)
    code, cap = _run(["--tokenizer", cut], capsys)
    assert code == 2
    assert cap.err.strip().splitlines()[-1].endswith(f"{cut}: incomplete file: 4096 bytes, but its tensors end at "
                                                     f"byte {whole.stat().st_size} (an interrupted download? fetch "
                                                     "it again)")
