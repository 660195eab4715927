"""Real zoo tokenizers through the real trl preparation: records that carry their own template settings
(``tools``, ``chat_template_kwargs``) are rendered as trl renders them; an error trl raises on the data is one
line naming the record (exit 2); an end-of-turn token used as pad is named as such."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.__main__ import main
from harness.audit import audit, load_tokenizer
from harness.errors import PipelineError

pytestmark = pytest.mark.tokenizers
ROOT = Path(__file__).resolve().parents[2]

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
PAIRS = [("Weather in Paris?", "It is sunny in Paris today."), ("And in Rome?", "Rome is rainy."),
         ("Oslo?", "Snowing in Oslo.")]


def _conv(extra: dict) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}], **extra}
            for q, a in PAIRS]


def _pref(extra: dict) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": a}],
             "rejected": [{"role": "assistant", "content": "No idea."}], **extra} for q, a in PAIRS]


@pytest.fixture(scope="module")
def qwen25(tokenizer_zoo):
    return load_tokenizer(tokenizer_zoo / "qwen2.5-instruct")


@pytest.fixture(scope="module")
def qwen3(tokenizer_zoo):
    return load_tokenizer(tokenizer_zoo / "qwen3")


def _trained(report, tok) -> list[str]:
    return [tok.decode([t for t, lab in zip(a.seq.ids, a.seq.labels) if lab != -100]) for a in report.sequences]


# ---- 1. per-record template settings, as trl forwards them (SFT and DPO)

@pytest.mark.parametrize("tools", [TOOLS, json.dumps(TOOLS)], ids=["list", "json-string"])
def test_tools_column_renders_as_trl_renders_it(qwen25, tools):
    report = audit(qwen25, data=_conv({"tools": tools}))
    assert report.exit_code == 0, [f.to_dict() for f in report.findings]
    assert "completion-masked" not in report.codes and "prefix-mismatch" not in report.codes
    # trl wrote the tool schema into the sequence, and the audit's prompt boundary is trl's
    assert all("get_weather" in qwen25.decode(a.seq.ids) for a in report.sequences)
    assert all(a.seq.prompt_len == a.seq.ref_prompt_len for a in report.sequences)
    assert _trained(report, qwen25) == [f"{a}<|im_end|>\n" for _, a in PAIRS]
    # the tool schema is the record's own content, not text the template made up
    injected = report.finding("template-injects")
    assert injected is None or "get_weather" not in injected.detail


@pytest.mark.parametrize("pipeline,records", [("trl-sft", _conv), ("trl-dpo", _pref)])
def test_chat_template_kwargs_reach_the_template(qwen3, pipeline, records):
    # Qwen3 with enable_thinking=False puts the empty think block into the generation prompt
    report = audit(qwen3, data=records({"chat_template_kwargs": {"enable_thinking": False}}), pipeline=pipeline,
                   fmt="preference" if pipeline == "trl-dpo" else "conversational")
    assert report.exit_code == 0, [f.to_dict() for f in report.findings]
    assert not report.codes & {"completion-masked", "prefix-mismatch", "think-injected"}
    assert all("<think>" in qwen3.decode(a.seq.ids[:a.seq.prompt_len]) for a in report.sequences)


def test_hf_clm_is_the_plain_recipe_and_says_so(qwen25):
    report = audit(qwen25, data=_conv({"tools": TOOLS}), pipeline="hf-clm")
    assert not any("get_weather" in qwen25.decode(a.seq.ids) for a in report.sequences)
    assert any("hf-clm renders without the records' tools" in n for n in report.notes)


def test_preflight_follows_the_records_settings(qwen25, tokenizer_zoo):
    from harness.train import preflight

    result = preflight.run("n", "sft", qwen25, tokenizer_zoo / "qwen2.5-instruct", _conv({"tools": TOOLS}), 1024)
    assert result.status != "error" and not any(f["severity"] == "error" for f in result.findings), result.findings


def test_a_record_without_the_settings_others_have_is_named(qwen3):
    recs = _conv({"chat_template_kwargs": {"enable_thinking": False}})
    del recs[1]["chat_template_kwargs"]  # datasets gives it null; trl would fail on **None
    with pytest.raises(PipelineError) as e:
        audit(qwen3, data=recs)
    assert e.value.example == 1 and "example 1" in str(e.value) and "chat_template_kwargs" in str(e.value)


# ---- 2. an error trl raises while preparing the data: one line naming the record, exit 2

GEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
                "{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>"
                "{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _one_line(cap) -> str:
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in cap.err + cap.out, cap.err
    return lines[0]


def test_record_without_an_assistant_turn_is_named(tokenizer_zoo, tmp_path, capsys):
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in PAIRS]
    rows.insert(2, {"messages": [{"role": "user", "content": "Only a question?"}]})
    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "gen.jinja").write_text(GEN_TEMPLATE, encoding="utf-8")
    code = main(["audit", "--tokenizer", str(tokenizer_zoo / "qwen2.5-instruct"), "--format", "messages",
                 "--data", str(data), "--assistant-only-loss", "--chat-template", str(tmp_path / "gen.jinja")])
    line = _one_line(capsys.readouterr())
    assert code == 2
    assert "trl-sft" in line and "example 2" in line and "no assistant tokens" in line


def test_template_trl_cannot_train_with_assistant_only_loss_exits_2(tokenizer_zoo):
    # a separate process: exit status and stderr exactly as a user sees them
    proc = subprocess.run([sys.executable, "-m", "harness", "audit", "--tokenizer", "llama3-instruct",
                           "--zoo", str(tokenizer_zoo), "--format", "messages", "--assistant-only-loss",
                           "--limit", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "trl-sft" in errors[0] and "generation" in errors[0]


def test_tools_that_are_not_json_are_named(qwen25):
    recs = _conv({"tools": json.dumps(TOOLS)})
    recs[2]["tools"] = "[{not json"
    with pytest.raises(PipelineError) as e:
        audit(qwen25, data=recs)
    assert e.value.example == 2 and "'tools'" in str(e.value)


# ---- 3. an end-of-turn token used as pad: masked by the collator, named as such

@pytest.fixture(scope="module")
def llama3_eot_pad(tokenizer_zoo):
    return tokenizer_zoo / "llama3-instruct"


def test_end_of_turn_as_pad_is_named(llama3_eot_pad):
    report = audit(llama3_eot_pad, pipeline="hf-clm", limit=3, tokenizer_kwargs={"pad_token": "<|eot_id|>"})
    f = report.finding("end-of-turn-is-pad")
    assert f is not None and f.count == 3 and report.exit_code == 1, [x.to_dict() for x in report.findings]
    assert "<|eot_id|>" in f.message and "pad token" in f.message and "collator masks it" in f.message
    assert "pad_token" in f.hint and "append" not in f.hint
    assert not report.codes & {"eos-missing", "completion-masked", "eos-masked"}


def test_end_of_turn_as_pad_stays_a_stop_for_trl(llama3_eot_pad):
    # trl's collator masks no token id: the verdict is the one without the pad override
    padded = audit(llama3_eot_pad, limit=3, tokenizer_kwargs={"pad_token": "<|eot_id|>"})
    assert padded.codes == {"stop-not-generation-eos", "trained-after-stop"}, [x.to_dict() for x in padded.findings]
