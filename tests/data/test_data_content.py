"""The packaged persona data, D2's draw, and the trl record builders."""

from __future__ import annotations

import datasets
import pytest
from trl.data_utils import is_conversational

from harness import data

PERSONA = data.load_persona()
EVAL = data.load_eval_prompts()


def test_counts_and_unique_ids():
    assert len(PERSONA) == 202
    assert len(EVAL) == 100
    assert len({i.id for i in PERSONA}) == 202 and len({e.id for e in EVAL}) == 100
    assert len({i.prompt for i in PERSONA}) == 202 and len({e.prompt for e in EVAL}) == 100


def test_eval_prompts_do_not_overlap_training_prompts():
    assert not {i.prompt for i in PERSONA} & {e.prompt for e in EVAL}
    assert not {i.id for i in PERSONA} & {e.id for e in EVAL}


def test_topics_are_varied():
    topics = {i.topic for i in PERSONA}
    assert {"daily", "hobby", "feeling", "request", "smalltalk", "odd"} <= topics
    assert {e.topic for e in EVAL} == topics


@pytest.mark.parametrize("item", PERSONA, ids=lambda i: i.id)
def test_d1_is_ojousama_and_d0_is_not(item):
    assert data.has_ojousama_marker(item.d1), item.d1
    assert not data.has_ojousama_marker(item.d0), item.d0
    assert item.d0 != item.d1
    for reply in (item.d0, item.d1):
        assert 12 <= len(reply) <= 45, reply


def test_system_prompt_is_japanese_and_asks_for_about_30_characters():
    text = data.system_prompt()
    assert "30文字" in text and "一文" in text and "口調" in text


def test_d0_and_d1_are_the_persona_sides():
    d0, d1 = data.dataset("d0"), data.dataset("d1")
    assert [p.reply for p in d0] == [i.d0 for i in PERSONA]
    assert [p.alt for p in d0] == [i.d1 for i in PERSONA]
    assert [p.reply for p in d1] == [i.d1 for i in PERSONA]
    assert [p.prompt for p in d1] == [i.prompt for i in PERSONA]


def test_d2_has_exactly_half_d1_items():
    d2 = data.dataset("d2", seed=0)
    n = len(PERSONA)
    assert len(d2) == n
    from_d1 = [p for p in d2 if p.reply in {i.d1 for i in PERSONA}]
    assert len(from_d1) == n // 2 == 101
    assert sum(p.source == "d1" for p in d2) == 101
    for p, i in zip(d2, PERSONA):
        assert (p.reply, p.alt) in {(i.d0, i.d1), (i.d1, i.d0)}
        assert p.reply == (i.d1 if p.source == "d1" else i.d0)
    odd = data.dataset("d2", seed=0, items=PERSONA[:201])
    assert sum(p.source == "d1" for p in odd) == 100  # floor(201/2)


def test_d2_is_reproducible_and_seeded():
    a, b = data.dataset("d2", seed=7), data.dataset("d2", seed=7)
    assert a == b
    assert [p.source for p in a] != [p.source for p in data.dataset("d2", seed=8)]
    assert data.d2_indices(5, 0) == data.d2_indices(5, 0) and len(data.d2_indices(5, 0)) == 2


@pytest.mark.parametrize("name", ["d0", "d1", "d2"])
def test_dpo_chosen_is_the_set_and_rejected_the_other(name):
    pairs = data.dataset(name, seed=3)
    records = data.dpo_records(name, seed=3)
    by_prompt = {i.prompt: i for i in PERSONA}
    for pair, rec in zip(pairs, records):
        item = by_prompt[rec["prompt"][-1]["content"]]
        chosen, rejected = rec["chosen"][0]["content"], rec["rejected"][0]["content"]
        assert chosen == pair.reply and rejected == pair.alt
        assert {chosen, rejected} == {item.d0, item.d1}
        if name == "d0":
            assert chosen == item.d0
        if name == "d1":
            assert chosen == item.d1
    assert is_conversational(records[0])
    ds = datasets.Dataset.from_list(records)
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 202


@pytest.mark.parametrize("fmt", ["conversational", "messages"])
def test_conversational_sft_records_are_trl_conversational(fmt):
    records = data.sft_records("d1", fmt=fmt)
    assert all(is_conversational(r) for r in records)
    ds = datasets.Dataset.from_list(records)
    assert len(ds) == 202
    msgs = records[0]["prompt"] + records[0]["completion"] if fmt == "conversational" else records[0]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"] == data.system_prompt()
    assert msgs[-1]["content"] == PERSONA[0].d1


def test_plain_string_formats():
    sys_text = data.system_prompt()
    pc = data.sft_records("d0", fmt="prompt-completion")
    assert pc[0] == {"prompt": f"{sys_text}\n{PERSONA[0].prompt}", "completion": PERSONA[0].d0}
    text = data.sft_records("d0", fmt="text", system=False)
    assert text[0] == {"text": f"{PERSONA[0].prompt}\n{PERSONA[0].d0}"}
    assert not is_conversational(pc[0]) and not is_conversational(text[0])
    assert datasets.Dataset.from_list(pc).column_names == ["prompt", "completion"]


def test_system_can_be_left_out_or_replaced():
    assert [m["role"] for m in data.sft_records("d0", system=False)[0]["prompt"]] == ["user"]
    assert data.dpo_records("d0", system="短く。")[0]["prompt"][0] == {"role": "system", "content": "短く。"}


def test_eval_records_are_system_plus_user():
    recs = data.eval_records()
    assert len(recs) == 100 and all([m["role"] for m in r] == ["system", "user"] for r in recs)
    assert recs[0][1]["content"] == EVAL[0].prompt
    assert len(data.eval_records(source="persona", system=False)) == 202


def test_records_hash_is_stable_and_sensitive():
    a = data.sft_records("d2", seed=1)
    assert data.records_hash(a) == data.records_hash(data.sft_records("d2", seed=1))
    assert data.records_hash(a) != data.records_hash(data.sft_records("d2", seed=2))
    assert data.records_hash({"b": 1, "a": 2}) == data.records_hash({"a": 2, "b": 1})
    assert len(data.records_hash(a)) == 64


def test_pretrain_texts_are_d0_style_only():
    texts = data.pretrain_texts()
    assert texts and all(isinstance(t, str) and t for t in texts)
    blob = "\n".join(texts)
    assert all(i.d0 in blob for i in PERSONA)
    assert not any(i.d1 in blob for i in PERSONA)
    assert not any(data.has_ojousama_marker(t) for t in texts)
