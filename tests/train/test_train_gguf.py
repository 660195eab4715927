"""GGUF bases on the CPU: the real SmolLM2-135M-Instruct GGUF (from .ci/fetch-gguf) converted once into
a bf16 folder, its special tokens and chat template, the pre-flight on its tokenizer, the smollm2 plan's
ci variant built on the CPU, a GGUF given through a link into a hub cache, and bad GGUF inputs (missing,
corrupt, cut short, not the pinned file) refused with exit 2 and one line naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gguf_helpers import SMOL, SMOL_SHA, small_gguf
from harness.__main__ import main
from harness.errors import LoadError
from harness.train import build, load_plan
from harness.config import from_env
from harness.models import check_special_tokens, convert_gguf, gguf_tokens
from harness.models import convert as convert_mod

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smol_file(smol_gguf) -> Path:
    return smol_gguf


@pytest.fixture(scope="module")
def fx(smol_cache) -> Path:
    return smol_cache


@pytest.fixture(scope="module")
def converted(smol_converted) -> Path:
    return smol_converted


def test_smollm2_converts_to_a_bf16_folder_once(converted, smol_file, fx, monkeypatch):
    from safetensors import safe_open

    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "base_info.json"} <= names
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["dtype"] == "bfloat16" and "quantization_config" not in cfg
    with safe_open(str(converted / "model.safetensors"), "pt") as st:
        keys = list(st.keys())
        assert {str(st.get_slice(k).get_dtype()) for k in keys} == {"BF16"}
        n = sum(_numel(st.get_slice(k).get_shape()) for k in keys)
    assert n == 134_515_008  # SmolLM2-135M, embeddings tied to the LM head
    mtime, calls = (converted / "model.safetensors").stat().st_mtime_ns, []
    monkeypatch.setattr(convert_mod, "_convert_into", lambda *a: calls.append(a) or {})
    again, _ = convert_gguf(smol_file, fx, progress=False)
    assert again == converted and (converted / "model.safetensors").stat().st_mtime_ns == mtime
    assert calls == [], "the second call hashes the file, it does not convert again"


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def test_smollm2_special_tokens_and_chat_template(converted):
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(converted)
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert tok.pad_token_id == 2
    assert GenerationConfig.from_pretrained(converted).eos_token_id == 2
    text = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


def test_a_tokenizer_that_disagrees_with_the_gguf_is_named(converted, smol_file):
    """transformers 5.17 converted this GGUF with eos_token <|im_start|> (id 1): caught here, both named."""
    from transformers import AutoTokenizer

    meta = gguf_tokens(smol_file)
    assert (meta["bos"], meta["eos"], meta["pad"]) == (1, 2, 2)
    tok = AutoTokenizer.from_pretrained(converted)
    assert check_special_tokens(tok, meta, smol_file)["eos"] == {"id": 2, "token": "<|im_end|>"}
    tok.eos_token = "<|im_start|>"
    with pytest.raises(LoadError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf: the converted tokenizer's eos_token "
                                        r"is '<\|im_start\|>' \(id 1\) but the GGUF's tokenizer\.ggml\.eos_token_id "
                                        r"is 2 \('<\|im_end\|>'\)"):
        check_special_tokens(tok, meta, smol_file)


def test_preflight_refuses_a_tokenizer_eos_generation_does_not_stop_on(converted):
    """The same trap one step later: tokenizer EOS id 1, generation config stops on 2."""
    from transformers import AutoTokenizer

    from harness import data
    from harness.train.preflight import PreflightError, run

    tok = AutoTokenizer.from_pretrained(converted)
    recs = data.sft_records("d0")[:2]
    ok = run("sft_d0", "sft", tok, converted, recs, 256)
    assert ok.status in ("clean", "warning") and ok.generation_eos == [2] and ok.end_of_turn == 2
    tok.eos_token = "<|im_start|>"
    with pytest.raises(PreflightError, match=r"sft_d0 \[trl-sft\]: tokenizer-eos-not-generation-eos: the "
                                             r"generation config's eos_token_id 2 lacks the tokenizer's eos_token "
                                             r"'<\|im_start\|>' \(id 1\)"):
        run("sft_d0", "sft", tok, converted, recs, 256)


def test_smollm2_ci_variant_builds_on_the_cpu(converted, fx, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = load_plan(ROOT / "fixtures" / "plans" / "smollm2.toml").variant("ci")
    graph = build(plan, fixtures_dir=fx, device="cpu", progress=False)
    assert graph.path("base") == converted
    for name, steps in (("sft_d0", 2), ("dpo_d1", 1)):
        meta = graph.meta(name)
        assert meta["train"]["steps"] == steps and meta["quantize_4bit"] is False
        assert meta["preflight"]["generation_eos"] == [2] and meta["preflight"]["end_of_turn"] == 2
        assert meta["preflight"]["status"] in ("clean", "warning")
        assert meta["inputs"]["parent"] == graph.key("base")
    assert graph.meta("base")["key"] == graph.key("base")
    assert json.loads((graph.path("dpo_d1") / "config.json").read_text())["model_type"] == "llama"
    # where the time went: the build's phases add up, each node's phases come in order
    t = graph.timeline
    assert set(t) == {"base", "preflight", "nodes", "total"} and min(t.values()) >= 0
    assert t["base"] + t["preflight"] + t["nodes"] == pytest.approx(t["total"])
    assert graph.describe_timeline() == (f"build {t['total']:.1f} s: base ready {t['base']:.1f} s, "
                                         f"pre-flight {t['preflight']:.1f} s, nodes {t['nodes']:.1f} s")
    for name in ("sft_d0", "dpo_d1"):
        meta = graph.meta(name)
        at, tr = meta["timeline_s"], meta["train"]
        assert list(at) == ["parent_tokenizer", "imports", "trained", "postflight", "plotted"]
        assert list(at.values()) == sorted(at.values())
        assert at["plotted"] <= meta["wall_seconds"] and meta["started_unix"] > 0
        assert tr["median_step_s"] <= tr["p90_step_s"] <= tr["max_step_s"] <= tr["steps_s"] <= tr["train_call_s"]
        slow = tr["slowest_steps"]  # [step number, seconds], slowest first
        assert {n for n, _ in slow} <= set(range(1, tr["steps"] + 1)) and [t for _, t in slow] == sorted(
            (t for _, t in slow), reverse=True)
        assert slow[0][1] == round(max(tr["first_step_s"], tr["max_step_s"]), 3)


def test_preflight_audits_each_setup_once(converted, fx, monkeypatch):
    """smollm2's 9 trained nodes are 5 setups (SFT on d0-d2, DPO on d0-d1): the DPO nodes after an SFT parent
    share the base's tokenizer and their records with the DPO node on the base."""
    from harness.train import preflight
    from harness.train.preflight import preflight_nodes

    calls = []
    run = preflight.run
    monkeypatch.setattr(preflight, "run", lambda name, *a, **k: calls.append(name) or run(name, *a, **k))
    plan = load_plan(ROOT / "fixtures" / "plans" / "smollm2.toml")
    names = [n.name for n in plan.nodes if n.method != "base"]
    out = preflight_nodes(plan, names, converted)
    assert calls == ["sft_d0", "sft_d1", "sft_d2", "dpo_d0", "dpo_d1"]
    assert list(out) == names and all(out[n]["node"] == n for n in names)
    assert {k: v for k, v in out["dpo_d0@sft_d1"].items() if k != "node"} == {
        k: v for k, v in out["dpo_d0"].items() if k != "node"}


def test_conversion_runs_in_one_process_where_none_can_be_spawned(monkeypatch):
    """A spawned process re-runs ``__main__`` from its file: a script read from stdin has none."""
    import sys

    from harness.models.convert import can_spawn

    assert can_spawn()
    monkeypatch.setattr(sys.modules["__main__"], "__file__", "<stdin>", raising=False)
    assert not can_spawn()


# ---------------------------------------------------------------------------- bad inputs, exit 2


def _cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(["fixtures", "build", str(ROOT / "fixtures" / "plans" / "micro.toml"), "--quiet", *args])
    return rc, capsys.readouterr().err.strip()


def test_a_missing_gguf_file_exits_2_naming_it(tmp_path, capsys):
    rc, err = _cli(capsys, "--base", str(tmp_path / "nope.gguf"), "--fixtures-dir", str(tmp_path / "fx"))
    assert rc == 2 and err == f"error: {tmp_path / 'nope.gguf'}: no such GGUF file"


def test_a_corrupt_gguf_file_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "models" / "broken.gguf"
    bad.parent.mkdir()
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    rc, err = _cli(capsys, "--base", str(bad.parent), "--fixtures-dir", str(tmp_path / "fx"))
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {bad}: not a readable GGUF file")
    assert not list((tmp_path / "fx" / "bases").glob("*")) if (tmp_path / "fx" / "bases").exists() else True
    tmp = tmp_path / "fx" / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), "a failed conversion leaves no temp folder"


def test_a_gguf_that_does_not_match_its_pinned_sha256_exits_2(tmp_path, capsys):
    """``--base`` over a plan that pins its GGUF: the refusal names the plan file, the field, and the line that
    lets this file through."""
    from harness.models import sha256_file

    f = small_gguf(tmp_path / "x.gguf")
    digest = sha256_file(f)
    plan = tmp_path / "plan.toml"
    text = (ROOT / "fixtures" / "plans" / "micro.toml").read_text()
    plan.write_text(text.replace('model = "tiny"', f'model = "$HARNESS_GGUF_DIR/{SMOL}"\nsha256 = "{SMOL_SHA}"'))
    rc = main(["fixtures", "build", str(plan), "--base", str(f), "--quiet", "--fixtures-dir", str(tmp_path / "fx")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (f"error: {f}: sha256 {digest} does not match the pinned {SMOL_SHA} (the pin is "
                               f"base.sha256 in {plan}); to build on this file, set base.sha256 = \"{digest}\" "
                               "there or delete that line")


def test_a_gguf_cut_short_exits_2_at_once_saying_so(tmp_path, capsys):
    """An interrupted download: one line naming the file, before any conversion starts."""
    whole = small_gguf(tmp_path / "whole.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[:100_000])
    rc, err = _cli(capsys, "--base", str(cut), "--fixtures-dir", str(tmp_path / "fx"))
    assert rc == 2 and err == (f"error: {cut}: incomplete file: 100000 bytes, but its tensors end at byte "
                               f"{whole.stat().st_size} (an interrupted download? fetch it again)")
    assert not (tmp_path / "fx" / "tmp").exists() or not any((tmp_path / "fx" / "tmp").iterdir())


def test_a_gguf_through_a_link_into_a_hub_cache_builds(converted, smol_file, fx, tmp_path, capsys):
    """A hub cache holds ``snapshots/<rev>/model.gguf -> ../../blobs/<sha>``: the target has no suffix, and
    ``--base`` resolves the link to it. The file is a GGUF by its first bytes, and converts to the same folder."""
    blob = tmp_path / "hub" / "blobs" / SMOL_SHA
    blob.parent.mkdir(parents=True)
    try:
        os.link(smol_file, blob)
    except OSError:
        blob.write_bytes(smol_file.read_bytes())
    link = tmp_path / "hub" / "snapshots" / "main" / SMOL
    link.parent.mkdir(parents=True)
    link.symlink_to(Path("..") / ".." / "blobs" / SMOL_SHA)
    rc = main(["fixtures", "build", str(ROOT / "fixtures" / "plans" / "micro.toml"), "--quiet", "--base", str(link),
               "--only", "base", "--fixtures-dir", str(fx)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"  {converted}" in out


def test_the_gguf_dir_follows_the_environment(tmp_path):
    from harness.models import expand

    assert expand("$HARNESS_GGUF_DIR/a.gguf", from_env({"HARNESS_GGUF_DIR": str(tmp_path)}).gguf_folder) == \
        f"{tmp_path}/a.gguf"
    assert expand("${HARNESS_GGUF_DIR}/a.gguf", from_env({}).gguf_folder) == \
        str(Path("~/.cache/harness/gguf/a.gguf").expanduser())
    plan = load_plan(ROOT / "fixtures" / "plans" / "gemma3.toml")
    assert plan.base == "$HARNESS_GGUF_DIR/gemma-3-270m-q4_k_m.gguf"
    assert plan.source.chat_template == str(ROOT / "fixtures" / "templates" / "gemma3.jinja")
