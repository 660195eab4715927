"""``python -m harness findings compare``: two runs (two bases) side by side, as Markdown, JSON and PNG."""

from __future__ import annotations

import json

from harness.__main__ import main
from harness.findings import ClaimResult
from harness.findings.report import write


def rows(l2: float, bleu: float) -> list[ClaimResult]:
    return [ClaimResult.make("C1", "dpo_d0/sft_d0", l2, 0.25, "<", reference_value=0.0395, check="L2(dpo)/L2(sft)"),
            ClaimResult.make("C7", "sft_d1/d1", bleu, 0.0, ">", reference_value=0.07527, check="BLEU")]


def test_compare_prints_and_writes_the_table_of_two_runs(tmp_path, capsys):
    a, _ = write(tmp_path / "smollm2", "r1", rows(0.11, 0.02), {"plan": "smollm2", "base": "SmolLM2-135M.gguf"})
    b, _ = write(tmp_path / "gemma3", "r2", rows(0.31, -0.01)[:1], {"plan": "gemma3", "base": "gemma-3-270m.gguf"})
    assert main(["findings", "compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "| claim | pair | check | threshold | smollm2 / SmolLM2-135M.gguf (r1) | gemma3 / gemma-3-270m.gguf (r2) " \
           "| reference |" in out
    assert "| C1 | dpo_d0/sft_d0 | L2(dpo)/L2(sft) | < 0.25 | 0.11 PASS | 0.31 FAIL | 0.0395 |" in out
    assert "| C7 | sft_d1/d1 | BLEU | > 0 | 0.02 PASS | — | 0.07527 |" in out  # not measured in the second run
    data = json.loads((tmp_path / "cmp.json").read_text())
    assert [r["plan"] for r in data["runs"]] == ["smollm2", "gemma3"]
    assert data["rows"][0]["cells"] == [{"measured": 0.11, "verdict": "pass", "interval": None},
                                        {"measured": 0.31, "verdict": "fail", "interval": None}]
    assert data["rows"][1]["cells"][1] is None
    assert (tmp_path / "cmp.png").stat().st_size > 5000 and (tmp_path / "cmp.md").read_text().count("| C") == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["cmp.json", "cmp.md", "cmp.png"]


def test_a_run_with_seeds_is_compared_by_its_mean_interval_and_verdict_across_seeds(tmp_path, capsys):
    import dataclasses

    seeded = [dataclasses.replace(r, seed=s) for s, l2, bleu in ((0, 0.11, 0.02), (1, 0.13, -0.01), (2, 0.12, 0.03))
              for r in rows(l2, bleu)]
    a, _ = write(tmp_path / "smollm2", "r1", seeded, {"plan": "smollm2"})
    b, _ = write(tmp_path / "gemma3", "r2", rows(0.31, 0.05), {"plan": "gemma3"})
    assert main(["findings", "compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "| C1 | dpo_d0/sft_d0 | L2(dpo)/L2(sft) | < 0.25 | 0.12 [0.09516, 0.1448] PASS | 0.31 FAIL |" in out
    assert "| C7 | sft_d1/d1 | BLEU | > 0 | 0.01333 [" in out and "] INCONCLUSIVE | 0.05 PASS |" in out
    cells = json.loads((tmp_path / "cmp.json").read_text())["rows"][0]["cells"]
    assert cells[0]["measured"] == 0.12 and cells[0]["interval"][0] < 0.12 < cells[0]["interval"][1]


def test_compare_errors_name_the_file_and_exit_2(tmp_path, capsys):
    a, _ = write(tmp_path, "r1", rows(0.1, 0.1), {"plan": "tiny"})
    assert main(["findings", "compare", str(a), str(tmp_path / "nope.json")]) == 2
    assert "nope.json: findings file not found" in capsys.readouterr().err
    assert main(["findings", "compare", str(a)]) == 2
    assert "at least two findings files" in capsys.readouterr().err


def test_a_check_label_with_a_bar_keeps_its_markdown_columns(tmp_path, capsys):
    r = [ClaimResult.make("C6", "sft_d0", 0.9, 0.5, ">=", check="P(stop | reply)")]
    a, md = write(tmp_path / "a", "r1", r, {"plan": "a"})
    b, _ = write(tmp_path / "b", "r2", r, {"plan": "b"})
    assert main(["findings", "compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("| C6")]
    assert line.count(" | ") == 6 and "P(stop \\| reply)" in line
    [row] = [x for x in md.read_text().splitlines() if x.startswith("| C6")]
    assert "P(stop \\| reply)" in row
