"""Pre-flight: a node whose chat template ends turns in no stop token is refused before it trains, with
one line naming the plan, the node and the finding; --no-preflight trains it anyway; a sound setup's
result lands in the node's meta."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from harness.__main__ import main
from harness.train import build, plan_from_dict
from harness.train.tiny import CHAT_TEMPLATE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_folder(small_model_folder) -> Path:
    return small_model_folder


def _plan(tmp_path: Path, folder: Path, template: str | None) -> Path:
    """A one-node plan (limit 8, one SFT step) on ``folder``, with ``template`` as the plan's chat template."""
    extra = ""
    if template is not None:
        (tmp_path / "turns.jinja").write_text(template, encoding="utf-8")
        extra = 'chat_template = "./turns.jinja"\n'
    path = tmp_path / "plan.toml"
    path.write_text(f"""name = "pf"
[base]
model = "{folder}"
{extra}
[data]
limit = 8

[sft]
max_steps = 1
max_length = 512

[[nodes]]
name = "base"
method = "base"

[[nodes]]
name = "sft_d0"
method = "sft"
dataset = "d0"
parent = "base"
""", encoding="utf-8")
    return path


# the tiny template with the EOS after each reply removed: nothing teaches the model to stop
NO_STOP = CHAT_TEMPLATE.replace("{{ eos_token }}", "")


@pytest.mark.parametrize("slots", [[], ["--devices", "a,b"]], ids=["in-process", "worker-pools"])
def test_a_template_without_a_stop_token_is_refused_before_training(tmp_path, tiny_folder, capsys, slots):
    """With slots, the workers are already warming up during the pre-flight: the refusal stops them too."""
    import multiprocessing

    assert NO_STOP != CHAT_TEMPLATE
    plan = _plan(tmp_path, tiny_folder, NO_STOP)
    rc = main(["fixtures", "build", str(plan), "--quiet", "--fixtures-dir", str(tmp_path / "fx"), *slots])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: pre-flight {plan}: sft_d0 [trl-sft]: template-no-end-of-turn: the chat "
                          "template ends an assistant turn with no special token")
    assert "--no-preflight" in err
    assert not list((tmp_path / "fx" / "nodes").glob("*")), "nothing was trained"
    assert not multiprocessing.active_children(), "no worker outlives the refused build"


def test_the_audit_alone_refuses_it_too(tmp_path, tiny_folder):
    """Without the stop-token check, the label audit of the node's records finds the missing EOS."""
    from harness import data
    from harness.audit import audit
    from harness.train.common import load_tokenizer

    tok = load_tokenizer(tiny_folder)
    tok.chat_template = NO_STOP
    report = audit(tok, data=data.sft_records("d0")[:8], fmt="conversational", pipeline="trl-sft",
                   max_length=128, generation_eos=[tok.eos_token_id])
    assert "eos-missing" in report.codes


def test_no_preflight_trains_the_broken_setup_and_says_so(tmp_path, tiny_folder):
    raw = tomllib.loads(_plan(tmp_path, tiny_folder, NO_STOP).read_text(encoding="utf-8"))
    graph = build(plan_from_dict(raw, tmp_path / "plan.toml"), fixtures_dir=tmp_path / "fx", device="cpu",
                  progress=False, preflight=False)
    assert graph.meta("sft_d0")["preflight"] == {"status": "skipped", "reason": "--no-preflight"}
    assert graph.meta("sft_d0")["train"]["steps"] == 1
    post = graph.meta("sft_d0")["postflight"]  # the saved folder fails too, recorded, not refused
    assert post["status"] == "error" and "template-no-end-of-turn" in {f["code"] for f in post["findings"]}


def test_a_sound_setup_records_its_preflight(tmp_path, tiny_folder):
    raw = tomllib.loads(_plan(tmp_path, tiny_folder, None).read_text(encoding="utf-8"))
    graph = build(plan_from_dict(raw, tmp_path / "plan.toml"), fixtures_dir=tmp_path / "fx", device="cpu",
                  progress=False)
    pf = graph.meta("sft_d0")["preflight"]
    eos = pf["tokenizer_eos"]
    assert pf["status"] == "clean" and pf["pipeline"] == "trl-sft"
    assert pf["generation_eos"] == [eos] and pf["end_of_turn"] == eos


def test_a_base_without_an_eos_is_refused_naming_the_code(tiny_folder):
    """The pre-flight reports the stop-token check the post-flight makes too: with no eos_token the label
    audit cannot run, so the refusal is the stop-token code (not the audit's load error), and the plan can
    allow it."""
    from harness import data
    from harness.train.common import load_tokenizer
    from harness.train.preflight import PreflightError, run

    tok = load_tokenizer(tiny_folder)
    recs = data.sft_records("d0")[:2]
    tok.eos_token = None
    with pytest.raises(PreflightError, match=r"pf\.toml: sft_d0 \[trl-sft\]: tokenizer-eos-missing: eos_token is "
                                             r"null: nothing names the token that ends a sequence"):
        run("sft_d0", "sft", tok, tiny_folder, recs, 512, where="pf.toml: ")
    # the tiny template writes {{ eos_token }} after a reply: without one, a turn ends in no stop token either
    allow = {"tokenizer-eos-missing": "a test", "template-no-end-of-turn": "a test"}
    allowed = run("sft_d0", "sft", tok, tiny_folder, recs, 512, allow=allow)
    assert allowed.status == "allowed" and allowed.tokenizer_eos is None
    assert [f["code"] for f in allowed.findings] == list(allow)  # the stop tokens only: no audit ran


def test_a_base_whose_configs_name_no_generation_eos_is_refused(tiny_folder, tmp_path):
    """Neither generation_config.json nor config.json names an EOS: served, the base and every node saved
    from it stop on nothing (the post-flight's code, found before training)."""
    import json
    import shutil

    from harness import data
    from harness.train.common import load_tokenizer
    from harness.train.preflight import PreflightError, run

    base = shutil.copytree(tiny_folder, tmp_path / "base")
    for name in ("generation_config.json", "config.json"):
        cfg = json.loads((base / name).read_text(encoding="utf-8"))
        (base / name).write_text(json.dumps({**cfg, "eos_token_id": None}), encoding="utf-8")
    with pytest.raises(PreflightError, match=r"sft_d0 \[trl-sft\]: end-of-turn-not-generation-eos: the generation "
                                             r"config's eos_token_id is null \(and config\.json has none\)"):
        run("sft_d0", "sft", load_tokenizer(base), base, data.sft_records("d0")[:2], 512)
