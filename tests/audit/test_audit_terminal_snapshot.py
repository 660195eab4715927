"""The terminal view at 80 columns, label snapshots across runs, whole-dataset statistics, pre-flight."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from audit_synth import CLEAN, CONV, NEWLINE_AFTER, NO_END, PAIRS, bpe, conv
from harness.__main__ import main
from harness.audit import audit, preflight
from harness.audit.view import show


def _render(report, width=80, terminal=False):
    console = Console(width=width, record=True, force_terminal=terminal, color_system=None)
    show(report, report.tok, report.info, n=1, console=console)
    return console.export_text()


def test_findings_wrap_under_the_row_at_80_columns():
    report = audit(bpe(NEWLINE_AFTER), data=CONV)
    text = _render(report)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    f = report.findings[0]
    flat = " ".join(text.split())
    assert " ".join(f.message.split()) in flat and " ".join(f.hint.split()) in flat  # words stay whole
    message_lines = [line for line in text.splitlines() if line.startswith("    ")]
    short = [line for line in message_lines if len(line.strip()) < 20]  # a narrow table column would make many
    assert message_lines and len(short) <= 2 * len(report.findings)


def test_legend_only_on_a_terminal():
    report = audit(bpe(NO_END), data=CONV)
    legend = "trained  masked  stop token  flagged"
    assert legend not in _render(report, terminal=False)
    assert legend in _render(report, terminal=True)


def test_statistics_of_the_whole_dataset():
    data = CONV + [conv("hello", "the world is wide the world is wide")]
    report = audit(bpe(CLEAN), data=data, max_length=20)
    (st,) = report.stats
    counts = sorted(sum(1 for x in a.seq.labels if x != -100) for a in report.sequences)
    assert (st.trained_min, st.trained_max, st.sequences) == (counts[0], counts[-1], len(data))
    assert st.truncated == sum(1 for a in report.sequences if a.seq.full is not None) > 0
    assert st.share == {f.code: round(f.count / len(data), 4) for f in report.findings}
    assert report.to_dict()["stats"][0]["trained_max"] == counts[-1]


def test_library_noise_stays_out_of_the_cli_output(tmp_path):
    import os
    import subprocess
    import sys

    bpe(CLEAN).save_pretrained(tmp_path / "tok")
    # A fresh process: import-time chatter (bitsandbytes' kernels-community warning) happens once per process.
    r = subprocess.run([sys.executable, "-m", "harness", "audit", "--tokenizer", str(tmp_path / "tok"), "--show", "0"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert "clean" in r.stdout
    assert "kernels-community" not in r.stdout + r.stderr and "Warning" not in r.stdout + r.stderr, r.stderr


def test_snapshot_then_against_names_the_changed_example(tmp_path, capsys):
    folder = tmp_path / "tok"
    bpe(CLEAN).save_pretrained(folder)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in CONV), encoding="utf-8")
    snap = tmp_path / "snap.json"
    assert main(["audit", "--tokenizer", str(folder), "--data", str(data), "--snapshot", str(snap)]) == 0
    capsys.readouterr()
    assert main(["audit", "--tokenizer", str(folder), "--data", str(data), "--against", str(snap)]) == 0
    assert "0 of 3 sequences changed" in capsys.readouterr().out
    # The same data under a template that drops the end token: every example's trained tokens change.
    (folder / "chat_template.jinja").write_text(NO_END, encoding="utf-8")
    code = main(["audit", "--tokenizer", str(folder), "--data", str(data), "--against", str(snap)])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 1 and "3 of 3 sequences changed" in out
    # the system turn's <|im_end|> became a newline: named at its position, before → after
    assert "tok|trl-sft|conversational example 0: first difference at token 18: t(90) e(75) <|im_end|>(4)" in out
    assert "→ t(90) e(75) \\n(205)" in out


def test_against_a_missing_snapshot_exits_2(tmp_path, capsys):
    bpe(CLEAN).save_pretrained(tmp_path / "tok")
    code = main(["audit", "--tokenizer", str(tmp_path / "tok"), "--against", str(tmp_path / "none.json")])
    assert code == 2 and "none.json" in capsys.readouterr().err


def test_preflight_reads_the_format_and_gates_on_errors():
    assert preflight(bpe(CLEAN), CONV).ok
    bad = preflight(bpe(NO_END), CONV)
    assert not bad.ok and bad.exit_code == 1 and {f.code for f in bad.errors} == {"eos-missing"}
    pref = [{"prompt": c["prompt"], "chosen": c["completion"], "rejected": [{"role": "assistant", "content": "no."}]}
            for c in CONV]
    assert preflight(bpe(CLEAN), pref).pipeline == "trl-dpo"
    text = [{"prompt": p, "completion": r} for p, r in PAIRS]
    assert preflight(bpe(None), text).ok  # trl appends the EOS to prompt-completion text


def test_trust_remote_code_is_never_asked_interactively(tmp_path):
    from harness.audit import load_tokenizer
    from harness.errors import LoadError

    folder = tmp_path / "remote"
    bpe(CLEAN).save_pretrained(folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", "tokenization_x.XTokenizer"]}
    cfg["tokenizer_class"] = "XTokenizer"  # as GLM-4's config names ChatGLM4Tokenizer
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "tokenization_x.py").write_text("from transformers import PreTrainedTokenizerFast as XTokenizer\n")
    with pytest.raises(LoadError, match="--trust-remote-code"):
        load_tokenizer(folder)
