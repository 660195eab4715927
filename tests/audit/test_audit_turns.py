"""Multi-turn conversations and tool turns through the installed trl with real zoo tokenizers (Qwen2.5 and Qwen3
with tools, Llama-3): which assistant turns and tool results trl trains under its options, named against the
intent the user states (``train_turns``), and end-of-turn tokens of earlier turns that disagree with their text."""

from __future__ import annotations

import json

import pytest

from harness.__main__ import main
from harness.audit import audit, load_tokenizer
from harness.errors import HarnessError

pytestmark = pytest.mark.tokenizers
TURNS = {"turn-trained", "turn-masked", "turn-stop-masked", "turn-stop-only", "tool-result-trained"}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
N = 3


def conversation(i: int) -> list[dict]:
    """user, an assistant tool call, the tool's result, the assistant's answer, user, the final reply."""
    return [{"role": "user", "content": f"Weather in city {i}?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": f"C{i}"}}}]},
            {"role": "tool", "content": f"sunny, {20 + i} degrees"},
            {"role": "assistant", "content": f"It is sunny, {20 + i} degrees."},
            {"role": "user", "content": "Thanks! And tomorrow?"},
            {"role": "assistant", "content": "Rain is expected tomorrow."}]


def messages() -> list[dict]:
    return [{"messages": conversation(i), "tools": TOOLS} for i in range(N)]


def history_in_prompt() -> list[dict]:
    """prompt/completion: the earlier turns in the prompt, the final reply as the completion."""
    return [{"prompt": conversation(i)[:-1], "completion": conversation(i)[-1:], "tools": TOOLS} for i in range(N)]


def tool_round_in_completion() -> list[dict]:
    """prompt/completion whose completion holds the tool call, the tool's result and the answer."""
    return [{"prompt": conversation(i)[:1], "completion": conversation(i)[1:4], "tools": TOOLS} for i in range(N)]


@pytest.fixture(scope="module")
def qwen25(tokenizer_zoo):
    return load_tokenizer(tokenizer_zoo / "qwen2.5-instruct")


@pytest.fixture(scope="module", params=["qwen2.5-instruct", "qwen3", "llama3-instruct"])
def tok(request, tokenizer_zoo):
    return load_tokenizer(tokenizer_zoo / request.param)


def _trained_in(report, code: str) -> list[str]:
    f = report.finding(code)
    assert f is not None, [x.to_dict() for x in report.findings]
    seqs = {a.seq.index: a.seq for a in report.sequences}
    return [report.tok.decode([seqs[e].ids[p] for p in f.positions[e]]) for e in f.examples]


# ---- tool results

def test_whole_conversation_training_trains_the_tool_result(tok):
    report = audit(tok, data=messages(), fmt="messages")
    assert all(f"{20 + i} degrees" in text for i, text in enumerate(_trained_in(report, "tool-result-trained")))
    assert report.finding("tool-result-trained").count == N and report.exit_code == 1


def test_a_tool_result_inside_the_completion_is_trained(tok):
    # completion_only_loss trains the whole completion: the tool's output with the replies
    report = audit(tok, data=tool_round_in_completion())
    assert all("sunny" in text for text in _trained_in(report, "tool-result-trained"))
    assert "prompt-trained" not in report.codes


def test_assistant_only_loss_keeps_the_tool_result_out(qwen25):
    report = audit(qwen25, data=messages(), fmt="messages", assistant_only_loss=True)
    assert not report.codes & TURNS, [f.to_dict() for f in report.findings]
    note = next(n for n in report.notes if "tool results" in n)
    assert note == f"trl-sft trains the text of {N}/{N} final and {2 * N}/{2 * N} earlier assistant turns " \
                   f"({2 * N}/{2 * N} earlier end-of-turn tokens) and 0/{N} tool results"


# ---- the intent: last turn only, or every assistant turn

def test_earlier_turns_trained_when_only_the_last_is_meant(qwen25):
    # assistant_only_loss trains every {% generation %} block, the tool call and the first answer included
    report = audit(qwen25, data=messages(), fmt="messages", assistant_only_loss=True, train_turns="last")
    texts = _trained_in(report, "turn-trained")
    assert all("get_weather" in t and "It is sunny" in t and "Rain" not in t for t in texts), texts
    assert "assistant turn 1 of 3 (message 1)" in report.finding("turn-trained").detail
    assert not report.codes & (TURNS - {"turn-trained"})


def test_every_turn_meant_and_trained_is_no_prompt_training(qwen25):
    last = audit(qwen25, data=messages(), fmt="messages", assistant_only_loss=True)
    every = audit(qwen25, data=messages(), fmt="messages", assistant_only_loss=True, train_turns="all")
    assert not every.codes & TURNS
    # what is left of prompt-trained is outside the assistant turns (trl's patched header '\n')
    assert sum(map(len, every.finding("prompt-trained").positions.values())) < \
        sum(map(len, last.finding("prompt-trained").positions.values()))


def test_earlier_turns_in_the_prompt_are_masked_when_all_are_meant(tok):
    report = audit(tok, data=history_in_prompt(), train_turns="all")
    texts = _trained_in(report, "turn-masked")
    assert all("It is sunny" in t and "Rain" not in t for t in texts), texts
    assert not report.codes & (TURNS - {"turn-masked"})
    assert not audit(tok, data=history_in_prompt(), train_turns="last").codes & TURNS


def test_completion_only_loss_off_trains_the_history(qwen25):
    report = audit(qwen25, data=history_in_prompt(), train_turns="last", completion_only_loss=False)
    assert {"turn-trained", "tool-result-trained", "prompt-trained"} <= report.codes
    assert any(f"{2 * N}/{2 * N} earlier assistant turns" in n for n in report.notes)


# ---- end-of-turn tokens of earlier turns (templates with {% generation %} blocks, as users write them)

HEAD = "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
TAIL = ("{% else %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# the block ends before <|im_end|>: every turn's text is trained, no turn's end
STOP_OUTSIDE = HEAD + "{% generation %}{{ m.content }}{% endgeneration %}<|im_end|>" + TAIL
# history masking that keeps the old turns' <|im_end|> trained (LLaMA-Factory #10827's label layout)
OLD_STOP_KEPT = HEAD + ("{% if loop.last %}{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}"
                        "{% else %}{{ m.content }}{% generation %}<|im_end|>{% endgeneration %}{% endif %}") + TAIL


def _chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"Hello number {i}."},
                         {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine, thanks."}]}


def test_earlier_turn_trained_without_its_end_of_turn(qwen25):
    report = audit(qwen25, data=[_chat(i) for i in range(N)], fmt="messages", assistant_only_loss=True,
                   chat_template=STOP_OUTSIDE)
    assert _trained_in(report, "turn-stop-masked") == ["<|im_end|>"] * N  # the positions name the masked stop
    assert "eos-masked" in report.codes  # the final turn: the existing detector


def test_old_turns_end_of_turn_trained_without_its_text(qwen25):
    report = audit(qwen25, data=[_chat(i) for i in range(N)], fmt="messages", assistant_only_loss=True,
                   chat_template=OLD_STOP_KEPT, train_turns="last")
    assert _trained_in(report, "turn-stop-only") == ["<|im_end|>"] * N
    assert "turn-trained" not in report.codes and "eos-masked" not in report.codes


# ---- options

def test_train_turns_is_checked(qwen25):
    with pytest.raises(HarnessError, match="train_turns"):
        audit(qwen25, data=messages(), fmt="messages", train_turns="first")


def test_cli_train_turns(tokenizer_zoo, tmp_path):
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in history_in_prompt()), encoding="utf-8")
    out = tmp_path / "r.json"
    base = ["audit", "--tokenizer", str(tokenizer_zoo / "qwen2.5-instruct"), "--data", str(data), "--show", "0",
            "--json", str(out)]
    assert main(base + ["--train-turns", "all"]) == 1
    report = json.loads(out.read_text())
    assert "turn-masked" in {f["code"] for f in report["findings"]}
    assert any("0/6 earlier assistant turns" in n for n in report["notes"])
    assert main(base + ["--train-turns", "last"]) == 0
