"""Study 003's loop as a plan node: a node whose data its parent makes (selfgen), then SFT or DPO on it,
built on the CPU micro plan; the node key covers the selfgen settings; bad tables name the field."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from harness.train import build
from harness.train.keys import node_records, plan_keys
from harness.train.plan import PlanError, plan_from_dict
from harness.train.selfgen_node import SELFGEN_FILE

MICRO = Path(__file__).resolve().parents[2] / "fixtures" / "plans" / "micro.toml"


def micro_with(*nodes: dict) -> dict:
    raw = tomllib.loads(MICRO.read_text(encoding="utf-8"))
    raw.pop("variants", None)
    raw["nodes"] = raw["nodes"] + list(nodes)
    return raw


SFT_SG = {"name": "sft_sg@sft_d0", "method": "sft", "dataset": "selfgen", "parent": "sft_d0",
          "selfgen": {"source": "d1", "method": "keep_low", "n": 3}}
DPO_SG = {"name": "dpo_sg@sft_d0", "method": "dpo", "dataset": "selfgen", "parent": "sft_d0",
          "selfgen": {"source": "d1", "method": "pick", "n": 3}}


def test_selfgen_nodes_build_and_train_on_their_parents_data(tmp_path):
    plan = plan_from_dict(micro_with(SFT_SG, DPO_SG), name="micro_selfgen")
    graph = build(plan, fixtures_dir=tmp_path, device="cpu", progress=False)
    sft = [json.loads(line) for line in (graph.path("sft_sg@sft_d0") / SELFGEN_FILE).read_text("utf-8").splitlines()]
    dpo = [json.loads(line) for line in (graph.path("dpo_sg@sft_d0") / SELFGEN_FILE).read_text("utf-8").splitlines()]
    meta = graph.meta("sft_sg@sft_d0")
    assert meta["selfgen"]["method"] == "keep_low" and meta["selfgen"]["items"] == 8 == len(sft)
    assert meta["n_records"] == len(sft) and meta["train"]  # SFT ran on exactly these records
    assert set(sft[0]) == {"prompt", "completion"} and set(dpo[0]) == {"prompt", "chosen", "rejected"}
    # keep_low: an original reply is used exactly when it ranked low, and it is the D1 reply.
    from harness import data

    d1 = {p.prompt: p.reply for p in data.dataset("d1")}
    used = sum(r["completion"][0]["content"] == d1[r["prompt"][-1]["content"]] for r in sft)
    assert used == meta["selfgen"]["original_used"]
    assert (graph.path("dpo_sg@sft_d0") / "config.json").is_file() and graph.is_built("dpo_sg@sft_d0")
    with pytest.raises(Exception, match="made from its parent"):
        node_records(plan, "sft_sg@sft_d0")


def test_node_key_covers_the_selfgen_settings():
    def key(**sg) -> str:
        node = dict(SFT_SG, selfgen={**SFT_SG["selfgen"], **sg})
        return plan_keys(plan_from_dict(micro_with(node), name="m"), "cpu")[0]["sft_sg@sft_d0"]

    base = key()
    assert base == key()  # stable
    assert len({base, key(n=4), key(method="pick"), key(method="drop_low"), key(source="d0")}) == 5


@pytest.mark.parametrize("node,field", [
    (dict(SFT_SG, selfgen={"method": "best"}), "selfgen.method"),
    (dict(SFT_SG, selfgen={"n": 0}), "selfgen.n"),
    (dict(SFT_SG, selfgen={"n": "4"}), "selfgen.n"),
    (dict(SFT_SG, selfgen={"source": "d9"}), "selfgen.source"),
    (dict(SFT_SG, selfgen={"k": 1}), "unknown field 'k'"),
    ({k: v for k, v in SFT_SG.items() if k != "selfgen"}, "selfgen: missing"),
    (dict(SFT_SG, dataset="d1"), "only a node with dataset = 'selfgen'"),
])
def test_bad_selfgen_tables_name_the_field(node, field):
    with pytest.raises(PlanError, match=rf"nodes\[\d+\] \(sft_sg@sft_d0\).*{field}"):
        plan_from_dict(micro_with(node), name="m")
