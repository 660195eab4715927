"""Bases other than "tiny": a local folder builds like any base; a hub id that is not reachable,
or a CUDA-only plan on the CPU, fails with one error naming the plan and the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness.errors import HarnessError, LoadError
from harness.train import build, load_plan, plan_from_dict
from harness.train.store import META_FILE

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"


def test_a_local_folder_base_is_used_in_place(tmp_path):
    from harness.train.keys import tiny_texts as _tiny_texts
    from harness.train.tiny import make_tiny_model, make_tiny_tokenizer

    folder = tmp_path / "my-base"
    tok = make_tiny_tokenizer(_tiny_texts()[1][:200], 400)
    make_tiny_model(tok, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2).save_pretrained(folder)
    tok.save_pretrained(folder)
    raw = tomllib.loads(MICRO.read_text(encoding="utf-8"))
    raw["base"] = {"model": str(folder)}
    raw["nodes"] = raw["nodes"][:2]
    raw.pop("variants")
    raw["sft"]["max_length"] = 16
    with pytest.raises(HarnessError, match=r"plan\.toml: sft_d0 \[trl-sft\]: all-masked: .* in 8 of 8 examples"):
        build(plan_from_dict(raw, tmp_path / "plan.toml"), fixtures_dir=tmp_path / "fx", device="cpu", progress=False)
    # without the pre-flight, the trainer's own check stops it
    with pytest.raises(HarnessError, match=r"\[sft\] max_length = 16: all 8 records lost their completion"):
        build(plan_from_dict(raw, tmp_path / "plan.toml"), fixtures_dir=tmp_path / "fx", device="cpu", progress=False,
              preflight=False)
    assert not list((tmp_path / "fx" / "nodes").glob("sft_d0-*"))
    assert not any((tmp_path / "fx" / "tmp").iterdir()), "a failed node leaves no temp folder"
    raw["sft"]["max_length"] = 512
    plan = plan_from_dict(raw, tmp_path / "plan.toml")
    graph = build(plan, fixtures_dir=tmp_path / "fx", device="cpu", progress=False)
    assert graph.path("base") == folder.resolve()
    assert graph.meta("sft_d0")["inputs"]["parent"] == graph.key("base")
    assert (graph.path("sft_d0") / "model.safetensors").is_file()
    assert json.loads((graph.path("sft_d0") / "config.json").read_text())["num_hidden_layers"] == 2
    # the folder's files are its identity: touching its weights changes every key
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes() + b"")
    os.utime(folder / "model.safetensors", (1, 1))
    from harness.train.keys import resolve_base as _resolve_base, plan_keys

    again = plan_keys(plan, "cpu", _resolve_base(plan)[1])[0]
    assert again["sft_d0"] != graph.key("sft_d0")


def test_an_unreachable_hub_id_names_the_plan_field(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = tomllib.loads(MICRO.read_text(encoding="utf-8"))
    raw["base"] = {"model": "no-such-org/no-such-model"}
    path = tmp_path / "hub.toml"
    with pytest.raises(LoadError, match=r"hub\.toml: base\.model: 'no-such-org/no-such-model' is neither"):
        build(plan_from_dict(raw, path), fixtures_dir=tmp_path / "fx", device="cpu", progress=False)


def test_the_study_plan_needs_cuda():
    plan = load_plan(ROOT / "fixtures" / "plans" / "study.toml")
    with pytest.raises(HarnessError, match=r"study\.toml: base\.requires_cuda is true but the device is cpu"):
        build(plan, device="cpu", progress=False)


def test_cli_list_shows_complete_nodes_only(tmp_path):
    done = tmp_path / "nodes" / "sft_d0-0123456789abcdef"
    done.mkdir(parents=True)
    (done / META_FILE).write_text(json.dumps({"node": "sft_d0", "plan": "tiny", "device": "cpu", "wall_seconds": 3.5}))
    (tmp_path / "nodes" / "half-built").mkdir()
    out = subprocess.run([sys.executable, "-m", "harness", "fixtures", "list", "--fixtures-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "sft_d0" in out.stdout and "half-built" not in out.stdout and "1 node(s)" in out.stdout
