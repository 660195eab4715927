"""Per-node generation cached in the fixture store, the generation table, and the C7/C8 statistics."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from harness.errors import HarnessError
from harness.evaluate.claims import c7_margins, c8_margins, last_data, sft_nodes_by_data
from harness.evaluate.cli import generation_table
from harness.evaluate.nodes import GenSettings, graph_generations, prompts
from harness.evaluate.similarity import Table


class Graph:
    """The graph protocol of harness.train (names, path, key) over real tiny model folders."""

    def __init__(self, dirs: dict[str, Path], keys: dict[str, str], root: Path) -> None:
        self.dirs, self.keys, self.fixtures_dir, self.loads = dirs, keys, root, []

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.dirs)

    def path(self, name: str) -> Path:
        self.loads.append(name)
        return self.dirs[name]

    def key(self, name: str) -> str:
        return self.keys[name]


def test_generations_are_cached_by_node_key_and_settings(chat_model_dir, tmp_path):
    g = Graph({"base": chat_model_dir, "sft_d0": chat_model_dir}, {"base": "k0", "sft_d0": "k1"}, tmp_path)
    s = GenSettings(max_new_tokens=4, batch_size=8)
    first = graph_generations(g, ["eval"], s, eval_limit=6, device="cpu", progress=False)
    assert set(first) == {("base", "eval"), ("sft_d0", "eval")} and len(first[("base", "eval")]) == 6
    files = sorted((tmp_path / "generations").iterdir())
    assert len(files) == 2 and not [f for f in files if f.name.startswith(".")]
    g.loads.clear()
    again = graph_generations(g, ["eval"], s, eval_limit=6, device="cpu", progress=False)
    assert g.loads == [] and again == first  # served from the cache, no model loaded
    graph_generations(g, ["eval"], GenSettings(max_new_tokens=5, batch_size=8), nodes=["base"], eval_limit=6, device="cpu",
                      progress=False)
    g.keys["sft_d0"] = "k1-retrained"
    graph_generations(g, ["eval"], s, nodes=["sft_d0"], eval_limit=6, device="cpu", progress=False)
    assert g.loads == ["base", "sft_d0"] and len(list((tmp_path / "generations").iterdir())) == 4
    data = json.loads(files[0].read_text(encoding="utf-8"))
    assert data["ids"] == list(prompts("eval").ids[:6])


def test_persona_limit_and_unknown_inputs(chat_model_dir, tmp_path):
    assert len(prompts("persona", limit=5).ids) == 5
    with pytest.raises(HarnessError, match="unknown prompt source 'web'; known: persona, eval"):
        prompts("web")
    g = Graph({"base": chat_model_dir}, {"base": "k"}, tmp_path)
    with pytest.raises(HarnessError, match="unknown node.*sft_d9.*known: base"):
        graph_generations(g, ["eval"], nodes=["sft_d9"], progress=False)


def test_generation_table_rates():
    from harness.inference.generate import Generation

    gens = {("base", "eval"): [Generation("p", "t", (1, 2), True, False), Generation("p", "t", (1,) * 4, False, True)]}
    t = generation_table(gens)
    assert t.values == [[0.5, 0.5, 3.0]]


def _t24(rows: dict[str, list[float]]) -> Table:
    return Table("table24", "t", list(rows), ["BLEU(D0)", "BERTScore(D0)", "BLEU(D1)", "BERTScore(D1)"],
                 list(rows.values()))


PLAN = SimpleNamespace(nodes=[SimpleNamespace(name="base", method="base", dataset=None),
                              SimpleNamespace(name="sft_d0", method="sft", dataset="d0"),
                              SimpleNamespace(name="sft_d1", method="sft", dataset="d1"),
                              SimpleNamespace(name="sft_d2", method="sft", dataset="d2"),
                              SimpleNamespace(name="dpo_d0@sft_d1", method="dpo", dataset="d0")])


def test_c7_margins_hold_on_the_seed_table_and_fail_on_a_swapped_one():
    seed = _t24({"sft_d0": [0.10713, 0.79208, 0.02214, 0.76002], "sft_d1": [0.01768, 0.74124, 0.09295, 0.78445]})
    nodes = sft_nodes_by_data(PLAN)
    assert nodes == {"sft_d0": "d0", "sft_d1": "d1"}
    ms = c7_margins(seed, nodes)
    assert len(ms) == 4 and all(m.measured > 0 and m.measured == pytest.approx(m.seed) for m in ms)
    swapped = _t24({"sft_d0": [0.02, 0.76, 0.10, 0.79], "sft_d1": [0.09, 0.78, 0.02, 0.74]})
    assert all(m.measured < 0 for m in c7_margins(swapped, nodes))


def test_c8_margins_signs():
    data_of = last_data(PLAN)
    good = c8_margins({"base": 6.6, "sft_d0": 5.8, "sft_d1": 8.6, "sft_d2": 7.0, "dpo_d0@sft_d1": 5.7}, data_of)
    assert {m.node: round(m.measured, 6) for m in good} == {"sft_d0": 0.8, "sft_d1": 2.0, "dpo_d0@sft_d1": 0.9}
    bad = c8_margins({"base": 6.6, "sft_d0": 7.0, "sft_d1": 6.0}, data_of)
    assert all(m.measured < 0 for m in bad)


def test_evaluate_cli_writes_tables(chat_model_dir, tiny_bert_dir, tmp_path, monkeypatch):
    """The evaluate command on the real tiny plan file, its graph standing on tiny model folders."""
    import harness.train
    from harness.__main__ import main

    names = ["base", "sft_d0", "sft_d1"]
    graph = Graph({n: chat_model_dir for n in names}, {n: f"k-{n}" for n in names}, tmp_path / "store")
    monkeypatch.setattr(harness.train, "build", lambda plan, **kw: graph, raising=False)
    out = tmp_path / "out"
    rc = main(["evaluate", "fixtures/plans/tiny.toml", "--only", *names, "--sources", "persona",
               "--max-new-tokens", "4", "--limit", "12", "--bertscore-model", str(tiny_bert_dir), "--bertscore-layers", "2",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    t24 = json.loads((out / "table24.json").read_text(encoding="utf-8"))
    assert t24["rows"] == names and all(v is not None for row in t24["values"] for v in row)
    assert any("tokenize=" in n for n in t24["notes"])
    for name in ("table27_bleu", "table27_bertscore", "generation"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.md").is_file()
    rows = (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 * 12
    assert main(["evaluate", "fixtures/plans/tiny.toml", "--sources", "web"]) == 2


# ---------------------------------------------------------------- the generation budget


def _chatml_reply_tokens(tok, reply: str) -> int:
    """The reply as a ChatML model generates it: its text, then ``<|im_end|>`` and the newline."""
    return len(tok(reply + "<|im_end|>\n", add_special_tokens=False)["input_ids"])


def _smollm2_tokenizer():
    from harness.audit.gguf import gguf_tokenizer_folder
    from harness.config import from_env

    f = from_env().gguf_folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not f.is_file():
        pytest.skip(f"real model: {f} is absent (fetch it with .ci/fetch-gguf smollm2)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_tokenizer_folder(f)))


def test_the_budget_covers_every_trained_reply_in_the_model_tokenizer():
    """SmolLM2's vocabulary needs up to 73 tokens for a D1 reply: the study's fixed 48 counted healthy
    replies as "never stopped" (C6 0.58 on the H200). The budget is 1.5x the longest, rounded up to 8."""
    from harness import data
    from harness.evaluate.nodes import MIN_NEW_TOKENS, reply_budget

    tok = _smollm2_tokenizer()
    records = data.sft_records("d0") + data.sft_records("d1") + data.dpo_records("d0")
    budget, longest = reply_budget(tok, records)
    expected = max(_chatml_reply_tokens(tok, r["completion"][0]["content"])
                   for r in data.sft_records("d0") + data.sft_records("d1"))
    assert longest == expected > MIN_NEW_TOKENS
    assert budget >= 1.5 * longest and budget % 8 == 0 and budget - 1.5 * longest < 8


@pytest.mark.tokenizers
def test_short_replies_keep_the_study_budget():
    from transformers import AutoTokenizer

    from harness import data
    from harness.audit.loading import zoo_dir
    from harness.evaluate.nodes import MIN_NEW_TOKENS, reply_budget

    zoo = zoo_dir()
    if zoo is None or not (zoo / "qwen2.5-instruct").is_dir():
        pytest.skip("real tokenizers: ../shared/tokenizers (qwen2.5-instruct) is absent")
    tok = AutoTokenizer.from_pretrained(str(zoo / "qwen2.5-instruct"))
    short = [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
              "rejected": [{"role": "assistant", "content": "No."}]}]
    assert reply_budget(tok, short) == (MIN_NEW_TOKENS, _chatml_reply_tokens(tok, "Hello."))
    assert reply_budget(tok, data.sft_records("d0", fmt="text")) == (MIN_NEW_TOKENS, 0)  # no chat turns to measure
    msgs = data.sft_records("d1", fmt="messages")
    assert reply_budget(tok, msgs)[1] == max(_chatml_reply_tokens(tok, m["messages"][-1]["content"]) for m in msgs)


def test_the_c6_source_names_its_budget():
    from harness.findings.statistics import GenerationSource

    src = GenerationSource([True, False], ["a", "b"], meta={"n": 2, "hit_max": 1, "max_new_tokens": 112,
                                                            "longest_reply": 73})
    assert src.notes == ["2 prompts, budget 112 new tokens (1.5x the longest trained reply, 73 tokens), 1 hit it"]
    assert GenerationSource([True], ["a"]).notes == []


@given(st.integers(min_value=0, max_value=100_000))
@example(43)  # 1.5 x 43 = 64.5: truncating to 64 first gave a budget of 64, below the slack
@example(11)
def test_the_scaled_budget_is_the_slack_rounded_up_to_eight(longest):
    from harness.evaluate.nodes import BUDGET_SLACK, MIN_NEW_TOKENS, scaled_budget

    b = scaled_budget(longest)
    assert b >= MIN_NEW_TOKENS and b % 8 == 0 and b >= longest * BUDGET_SLACK
    assert b == MIN_NEW_TOKENS or b - longest * BUDGET_SLACK < 8

