"""Bad input gets one clear error naming the culprit; the CLI prints one line and exits 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from diff_helpers import random_state, write_checkpoint
from harness.__main__ import main
from harness.diff import compare
from harness.errors import HarnessError

LAYOUT = {"model.embed_tokens.weight": (8, 4), "model.layers.0.mlp.up_proj.weight": (6, 4),
          "model.layers.1.mlp.up_proj.weight": (6, 4), "model.norm.weight": (4,)}


@pytest.fixture
def pair(tmp_path):
    a = write_checkpoint(tmp_path / "a", random_state(LAYOUT, 1), "index", 1)
    b = write_checkpoint(tmp_path / "b", random_state(LAYOUT, 2), "single")
    return a, b


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["diff", *map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_path(pair, tmp_path, capsys):
    with pytest.raises(HarnessError, match=r"no such file or folder: .*nowhere"):
        compare(pair[0], tmp_path / "nowhere", progress=False)
    code, out, err = _cli(capsys, pair[0], tmp_path / "nowhere")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and "nowhere" in err


def test_folder_with_no_weights(tmp_path, pair):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match=r"no safetensors weights in folder .*empty$"):
        compare(pair[0], tmp_path / "empty", progress=False)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(HarnessError, match=r"found pytorch_model.bin \(convert to safetensors\)"):
        compare(pair[0], tmp_path / "bin", progress=False)


def test_truncated_and_corrupt_shards(pair):
    shard = sorted(Path(pair[0]).glob("*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:-7])
    with pytest.raises(HarnessError, match=rf"(corrupt or )?truncated safetensors file .*{shard.name}"):
        compare(pair[0], pair[1], progress=False)
    shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + data[24:])
    with pytest.raises(HarnessError, match=rf"corrupt or truncated safetensors file .*{shard.name}"):
        compare(pair[0], pair[1], progress=False)


def test_missing_shard_named_in_index(pair):
    shard = sorted(Path(pair[0]).glob("*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(HarnessError, match=rf"shard .*{shard.name} named in .*index.json does not exist"):
        compare(pair[0], pair[1], progress=False)


def test_tensor_on_one_side_only_is_listed(tmp_path, pair):
    state = random_state(LAYOUT, 3)
    del state["model.norm.weight"]
    state["lm_head.weight"] = torch.zeros(8, 4)
    c = write_checkpoint(tmp_path / "c", state, "single")
    with pytest.raises(HarnessError, match=r"one side only: 1 tensor\(s\) missing from a .*'?model\.norm\.weight"
                                           r"'?.*1 tensor\(s\) missing from b .*lm_head\.weight"):
        compare(c, pair[1], progress=False)


def test_shape_mismatch_names_both_shapes(tmp_path, pair):
    state = random_state(LAYOUT, 3)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(4, 6)
    c = write_checkpoint(tmp_path / "c", state, "bare")
    with pytest.raises(HarnessError, match=r"shape mismatch for tensor 'model.layers.1.mlp.up_proj.weight': "
                                           r"\(6, 4\) in a .*\(4, 6\) in b"):
        compare(pair[0], c, progress=False)


def test_unknown_block_naming_falls_back_to_other_with_a_warning(tmp_path):
    layout = {"encoder.stage.0.conv.weight": (4, 4), "encoder.stage.1.conv.weight": (4, 4),
              "model.layers.0.mlp.up_proj.weight": (3, 4)}
    a = write_checkpoint(tmp_path / "a", random_state(layout, 1), "single")
    b = write_checkpoint(tmp_path / "b", random_state(layout, 2), "single")
    with pytest.warns(UserWarning, match=r"unrecognised block naming, counted under 'other': encoder.stage.0"):
        rep = compare(a, b, progress=False)
    assert [s.layer for s in rep.layers] == [0]
    assert rep.other.numel == 32


def test_hub_id_resolves_from_the_cache_offline(tmp_path, monkeypatch, pair):
    cache = tmp_path / "hub"
    snap = cache / "models--someorg--tiny" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (cache / "models--someorg--tiny" / "refs").mkdir()
    (cache / "models--someorg--tiny" / "refs" / "main").write_text("0" * 40)
    write_checkpoint(snap, random_state(LAYOUT, 2), "single")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rep = compare(pair[1], "someorg/tiny", progress=False)
    assert rep.total.l2 == 0 and rep.total.numel == 8 * 4 + 2 * 6 * 4 + 4
    with pytest.raises(HarnessError, match=r"'someorg/absent'.*could not be resolved as a hub id"):
        compare(pair[1], "someorg/absent", progress=False)


def test_cli_outputs(pair, tmp_path, capsys):
    base = write_checkpoint(tmp_path / "r", random_state(LAYOUT, 5), "bare")
    paths = {k: tmp_path / f"out.{k}" for k in ("json", "csv", "png")}
    code, out, _ = _cli(capsys, pair[0], pair[1], "--base", base, "--json", paths["json"], "--csv",
                        paths["csv"], "--plot", paths["png"], "--top-k", "1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["layer", "L1", "L2", "dev."] and "conflicts" in lines[0]
    marked = [l.split()[1] for l in lines if l.startswith(" *")]
    report = json.loads(paths["json"].read_text())
    assert set(report) >= {"layers", "modules", "other", "total"}
    assert set(report["layers"][0]) >= {"layer", "numel", "l1", "l2", "max_abs", "changed", "conflicts",
                                        "conflict_rate", "conflict_l2", "cosine"}
    best = max(report["layers"], key=lambda s: s["l2"])["layer"]
    assert marked == [str(best)]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_rows = paths["csv"].read_text().splitlines()
    assert csv_rows[0].startswith("group,name,numel,l1,l2") and csv_rows[-1].startswith("total,total,")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    # JSON on stdout, no base: the conflict fields are null; --by module lists module rows.
    code, out, _ = _cli(capsys, pair[0], pair[1], "--json", "-")
    doc = json.loads(out)
    assert doc["total"]["conflicts"] is None and doc["total"]["cosine"] is None
    code, out, _ = _cli(capsys, pair[0], pair[1], "--by", "module")
    assert code == 0 and "up_proj" in out and "embed_tokens" in out
