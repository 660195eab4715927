"""A user's own data (``dataset = "file.jsonl"`` on a plan node): formats, DPO chosen/rejected sources,
errors naming file:line:field, and the node's cache key following the file's content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import LoadError
from harness.userdata import Source, load_records

ROOT = Path(__file__).resolve().parents[2]


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_formats_are_detected_and_emitted_as_trl_conversations(tmp_path):
    pc = jsonl(tmp_path / "pc.jsonl", [{"prompt": "hi", "completion": "ごきげんよう"}])
    assert load_records(Source(pc), "sft", "SYS") == [{"messages": [
        {"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ごきげんよう"}]}]
    conv = jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "system", "content": "own"},
                                                      {"role": "user", "content": "q"},
                                                      {"role": "assistant", "content": "a"}]}])
    assert load_records(Source(conv), "sft", "SYS")[0]["messages"][0]["content"] == "own"  # its own system kept
    pref = jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "good": "yes", "bad": "no"}])
    [rec] = load_records(Source(pref, chosen="good", rejected="bad"), "dpo")
    assert rec == {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "yes"}],
                   "rejected": [{"role": "assistant", "content": "no"}]}


@pytest.mark.parametrize("rows,method,src_kw,message", [
    ([{"prompt": "q", "completion": "a"}, '{"prompt": "q"'], "sft", {}, ":2: invalid JSON"),
    ([{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": ""}], "sft", {}, ":2: completion: is an empty"),
    ([{"prompt": "q", "completion": "a"}, {"prompt": "q"}], "sft", {}, ":2: completion: missing"),
    ([{"messages": [{"role": "user", "content": "q"}]}], "sft", {}, ":1: messages: the last message must be the assistant"),
    ([{"messages": [{"role": "bot", "content": "q"}]}], "sft", {}, ":1: messages[0].role"),
    ([{"prompt": "q", "completion": "a"}], "dpo", {}, ":1: a DPO node needs preference rows"),
    ([{"prompt": "q", "good": "y", "rejected": "n"}], "dpo", {"chosen": "good"}, None),
    ([{"prompt": "q", "chosen": "y", "rejected": "n"}], "dpo", {"chosen": "good"}, ":1: good: missing"),
    ([{"question": "q"}], "sft", {}, ":1: keys ['question'] match no format"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, rows, method, src_kw, message):
    path = jsonl(tmp_path / "own.jsonl", rows)
    if message is None:
        assert load_records(Source(path, **src_kw), method)
        return
    with pytest.raises(LoadError) as e:
        load_records(Source(path, **src_kw), method)
    assert f"{path}{message}" in str(e.value)


def plan_text(dataset: str) -> str:
    text = f'name = "tiny"\nextends = "{ROOT / "fixtures" / "plans" / "tiny.toml"}"\n\n'  # its own graph, no variants
    return text + ('[[nodes]]\nname = "base"\nmethod = "base"\n\n'
                   f'[[nodes]]\nname = "sft_mine"\nmethod = "sft"\ndataset = {dataset}\nparent = "base"\n\n'
                   '[[nodes]]\nname = "dpo_mine"\nmethod = "dpo"\nparent = "sft_mine"\n'
                   'dataset = { path = "prefs.jsonl", chosen = "good", rejected = "bad" }\n')


def test_a_plan_node_trains_on_its_own_file_and_its_key_follows_the_content(tmp_path):
    from harness.train import load_plan
    from harness.train.keys import node_records, plan_keys
    from harness.train.plan import PlanError

    jsonl(tmp_path / "mine.jsonl", [{"prompt": "q1", "completion": "a1"}, {"prompt": "q2", "completion": "a2"}])
    jsonl(tmp_path / "prefs.jsonl", [{"prompt": "q", "good": "y", "bad": "n"}])
    (tmp_path / "own.toml").write_text(plan_text('"mine.jsonl"'), encoding="utf-8")
    plan = load_plan(tmp_path / "own.toml")
    assert [r["messages"][-1]["content"] for r in node_records(plan, "sft_mine")] == ["a1", "a2"]
    assert node_records(plan, "dpo_mine")[0]["chosen"][0]["content"] == "y"
    keys, _ = plan_keys(plan, "cpu", {"kind": "test"})
    jsonl(tmp_path / "mine.jsonl", [{"prompt": "q1", "completion": "a1 changed"}, {"prompt": "q2", "completion": "a2"}])
    keys2, _ = plan_keys(load_plan(tmp_path / "own.toml"), "cpu", {"kind": "test"})
    assert keys2["sft_mine"] != keys["sft_mine"] and keys2["dpo_mine"] != keys["dpo_mine"]  # the child follows
    (tmp_path / "bad.toml").write_text(plan_text('{ path = "mine.jsonl", format = "tsv" }'), encoding="utf-8")
    with pytest.raises(PlanError, match=r"bad\.toml: nodes\[1\] \(sft_mine\)\.dataset\.format"):
        load_plan(tmp_path / "bad.toml")
    (tmp_path / "gone.toml").write_text(plan_text('"nope.jsonl"'), encoding="utf-8")
    with pytest.raises(PlanError, match=r"sft_mine\)\.dataset\.path: no such data file"):
        load_plan(tmp_path / "gone.toml")
