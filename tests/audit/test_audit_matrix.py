"""tools/audit_matrix.py's pure parts: comparing labels into a table cell, rewriting constraints, the markers."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("audit_matrix", ROOT / "tools" / "audit_matrix.py")
am = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(am)

QWEN_SNAPSHOT = ROOT / "fixtures" / "audit-snapshots" / "qwen2.5-instruct.json"
RUN = "qwen2.5-instruct|trl-sft|conversational"


def _stored() -> dict:
    return json.loads(QWEN_SNAPSHOT.read_text(encoding="utf-8"))["runs"]


def _widen_left(runs: dict, n: int) -> dict:
    """The trl #6105 class: the completion mask grows ``n`` tokens to the left (the generation prompt)."""
    out = copy.deepcopy(runs)
    for seq in out[RUN].values():
        seq["trained"][0][0] -= n
    return out


# ---- comparing two label snapshots

def test_same_labels_are_same():
    diff = am.compare_runs(_stored(), _stored())
    assert am.same_labels(diff) and diff["sequences"] == 32 and diff["changed"] == 0
    assert am.describe(diff) == "same labels" and am.short(diff) == "same labels"


def test_a_mask_that_now_includes_the_generation_prompt_is_named_with_counts_and_first_token():
    """On the stored Qwen2.5 snapshot: the 3 tokens of `<|im_start|>assistant\\n` become trained."""
    before, after = _stored(), _widen_left(_stored(), 3)
    pieces = {151644: "<|im_start|>", 77091: "assistant", 198: "\n"}
    diff = am.compare_runs(before, after, decode=lambda i: pieces.get(i, "x"))
    assert diff["changed"] == 32 and diff["trained"] == {"before": 96, "inside": 0, "after": 0}
    assert diff["masked"] == {"last": 0, "other": 0} and diff["ids_changed"] == 0
    first = diff["first"]
    start = before[RUN]["0"]["trained"][0][0]
    assert (first["example"], first["position"]) == ("0", start - 3)
    assert first["before"].split()[2] == "<|im_start|>(151644)" and first["after"].split()[2] == "*<|im_start|>(151644)"
    text = am.describe(diff)
    assert "labels changed in 32 of 32 sequences" in text and "trains 96 tokens before the reply (prompt side" in text
    assert f"first at example 0 token {start - 3}" in text
    assert am.short(diff) == "**changed** 32/32: +96 prompt-side"


def test_a_masked_stop_and_changed_ids_and_lost_sequences_are_told_apart():
    before = _stored()
    after = copy.deepcopy(before)
    seqs = after[RUN]
    seqs["0"]["trained"][-1][1] -= 1  # the stop token (last trained) masked
    seqs["1"]["ids"][5] += 1  # tokenization changed
    del seqs["2"]
    diff = am.compare_runs(before, after)
    assert diff["masked_last_sequences"] == 1 and diff["masked"] == {"last": 1, "other": 0}
    assert diff["ids_changed"] == 1 and diff["absent"] == 1 and diff["changed"] == 3
    assert diff["first"]["example"] == "0"
    text = am.describe(diff)
    assert "the stop) is now masked in 1 sequences" in text and "token ids differ in 1 sequences" in text
    assert "1 sequences no longer produced" in text
    short = am.short(diff)
    assert short.startswith("**changed** 3/32:") and "stop masked" in short and "ids differ in 1" in short


def test_a_run_the_reference_has_but_the_audit_did_not_make_is_not_same():
    diff = am.compare_runs(_stored(), {})
    assert not am.same_labels(diff) and diff["missing_runs"] == [RUN]


def test_cells_say_error_codes_off_expectation_and_reference():
    ok = {"status": "ok", "codes": ["trained-after-stop"], "expect": ["trained-after-stop"],
          "diff": am.compare_runs(_stored(), _stored()), "reference": "snapshot"}
    assert am.cell(ok) == ("same labels", None)
    off = dict(ok, codes=["prompt-trained", "trained-after-stop"])
    text, detail = am.cell(off)
    assert text == "same labels; codes differ"
    assert detail == "codes prompt-trained, trained-after-stop (expected trained-after-stop)"
    assert am.cell({"status": "error", "error": "PipelineError: boom", "expect": []}) == \
        ("audit error", "audit error: PipelineError: boom")
    assert am.cell(dict(ok, diff=None, reference="tested run"))[0] == "the reference"
    assert am.cell(None) == ("not run", None)


def test_the_table_has_a_row_per_family_a_column_per_installed_combo_and_lists_the_rest():
    changed = am.compare_runs(_stored(), _widen_left(_stored(), 3), decode=lambda i: "<|x|>")
    rec = {"status": "ok", "codes": [], "expect": [], "reference": "snapshot"}
    results = {"generated": "now", "tested": {"transformers": "5.24.0", "trl": "1.16.0"},
               "families": ["qwen"], "left_out": ["gguf-one"], "combos": [
                   {"transformers": "5.24.0", "trl": "1.16.0", "tested": True, "status": "ok",
                    "families": {"qwen": dict(rec, diff=am.compare_runs(_stored(), _stored()))}},
                   {"transformers": "5.22.2", "trl": "1.16.0", "status": "ok",
                    "families": {"qwen": dict(rec, diff=changed)}},
                   {"transformers": "5.22.2", "trl": "1.15.0", "status": "not installable",
                    "reason": "ERROR: ResolutionImpossible"}]}
    table = am.render_table(results)
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| family"))
    assert header.count("|") == 5 and "transformers 5.24.0 + trl 1.16.0 (tested)" in header
    row = next(line for line in lines if line.startswith("| qwen |"))
    assert row == "| qwen | snapshot | same labels | **changed** 32/32: +96 prompt-side |"
    assert "- **qwen**, transformers 5.22.2 + trl 1.16.0: labels changed in 32 of 32" in table
    assert "\\|" not in table.split("What changed:")[1]  # the details are a list: '|' stays as it is
    assert "- transformers 5.22.2 + trl 1.15.0: not installable: ERROR: ResolutionImpossible" in table
    assert "Families left out of this run: gguf-one." in table


def test_a_piece_with_a_bar_does_not_split_the_row():
    rec = {"status": "error", "error": "x", "expect": []}
    results = {"generated": "now", "tested": {"transformers": "1", "trl": "1"}, "families": ["a|b"],
               "combos": [{"transformers": "1", "trl": "1", "status": "ok", "families": {"a|b": rec}}]}
    row = next(line for line in am.render_table(results).splitlines() if line.startswith("| a"))
    assert row == "| a\\|b | — | audit error |"


# ---- constraints and versions

BASE = "# tested\naccelerate==1.15.0\nTransformers==5.24.0\ntrl>=1.0  # any\ntokenizers==0.23.3\ntrl==1.16.0\n"


def test_rewrite_replaces_the_pins_where_they_are_and_keeps_the_rest():
    out = am.rewrite_constraints(BASE, {"transformers": "5.22.2", "trl": "1.15.0"})
    lines = out.splitlines()
    assert lines[0].startswith("# constraints.txt with transformers==5.22.2, trl==1.15.0")
    assert lines[1:] == ["# tested", "accelerate==1.15.0", "Transformers==5.22.2", "trl==1.15.0", "tokenizers==0.23.3"]
    pins = am.pins_of(out)
    assert pins["transformers"] == "5.22.2" and pins["trl"] == "1.15.0" and pins["tokenizers"] == "0.23.3"


def test_rewrite_appends_a_pin_the_file_lacks_and_matches_spellings():
    out = am.rewrite_constraints("typing_extensions==4.16.0\n", {"typing-extensions": "4.1", "peft": "0.21.2"})
    assert out.splitlines()[1:] == ["typing_extensions==4.1", "peft==0.21.2"]


def test_the_shipped_constraints_rewrite_to_exactly_the_combo():
    text = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    before, after = am.pins_of(text), am.pins_of(am.rewrite_constraints(text, {"transformers": "5.22.2",
                                                                               "trl": "1.15.0"}))
    assert {k for k in before if before[k] != after.get(k)} == {"transformers", "trl"}
    assert set(before) == set(after)


def test_pick_versions_takes_the_last_minors_or_releases_inside_the_range():
    index = am.parse_pip_index("trl (6.0.0)\nAvailable versions: 6.0.0, 5.24.0, 5.24.0rc1, 5.23.1, 5.23.0, "
                               "5.22.2, 5.22.1, 5.3.0, 4.57.6\n  INSTALLED: 5.24.0")
    assert am.pick_versions(index, ">=5.0,<6", 3, per_minor=True) == ["5.24.0", "5.23.1", "5.22.2"]
    assert am.pick_versions(index, ">=5.0,<6", 2, per_minor=False) == ["5.24.0", "5.23.1"]
    with pytest.raises(am.MatrixError, match="Available versions"):
        am.parse_pip_index("ERROR: No matching distribution found for nothing")


def test_pip_reason_keeps_the_conflict():
    stderr = ("WARNING: Location x is ignored\nERROR: Cannot install trl==1.15.0 and transformers==5.22.2 because "
              "these package versions have conflicting dependencies.\n\nThe conflict is caused by:\n"
              "    The user requested transformers==5.22.2\n    trl 1.15.0 depends on transformers>=5.23\n\n"
              "To fix this you could try to:\n1. loosen the range\n"
              "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io\n")
    reason = am.pip_reason(stderr)
    assert reason.startswith("ERROR: Cannot install trl==1.15.0 and transformers==5.22.2")
    assert "trl 1.15.0 depends on transformers>=5.23" in reason and "WARNING" not in reason and "loosen" not in reason
    assert am.pip_reason("ERROR: No matching distribution found for trl==9\n") == \
        "ERROR: No matching distribution found for trl==9"


# ---- the generated section

DOC = "# Audit\n\nintro\n\n" + am.BEGIN + " (generated) -->\nold table\n" + am.END + "\n\n## After\n"


def test_markers_replace_only_what_is_between_them_and_twice_gives_the_same():
    once = am.replace_between_markers(DOC, "| new |\n")
    assert once == "# Audit\n\nintro\n\n" + am.BEGIN + " (generated) -->\n| new |\n" + am.END + "\n\n## After\n"
    assert am.replace_between_markers(once, "| new |\n") == once


@pytest.mark.parametrize("text,needle", [
    ("no markers\n", "found 0 and 0"),
    (DOC + am.END + "\n", "found 1 and 2"),
    ("x\n" + am.END + "\n" + am.BEGIN + " -->\n", "the end marker (line 2) comes before the begin marker (line 3)"),
])
def test_bad_markers_name_the_file(text, needle):
    with pytest.raises(am.MatrixError) as e:
        am.replace_between_markers(text, "t", "docs/audit.md")
    assert str(e.value).startswith("docs/audit.md: ") and needle in str(e.value)


def test_the_shipped_doc_has_one_generated_section():
    text = (ROOT / "docs" / "audit.md").read_text(encoding="utf-8")
    out = am.replace_between_markers(text, "x")
    assert out.split(am.BEGIN)[0] == text.split(am.BEGIN)[0] and out.split(am.END)[1] == text.split(am.END)[1]
    assert "\nx\n" + am.END in out


def test_a_run_of_some_families_keeps_the_rest_of_the_earlier_results():
    tested = {"transformers": "5.24.0", "trl": "1.16.0"}
    old = {"tested": tested, "families": ["a", "b"], "combos": [
        {"transformers": "5.24.0", "trl": "1.16.0", "tested": True, "status": "ok", "families": {"a": 1, "b": 2}},
        {"transformers": "5.23.0", "trl": "1.16.0", "status": "ok", "families": {"a": 3, "b": 4}}]}
    new = {"tested": tested, "families": ["b"], "combos": [
        {"transformers": "5.24.0", "trl": "1.16.0", "tested": True, "status": "ok", "families": {"b": 20}}]}
    merged = am.merge_results(old, new, ["a", "b", "c"])
    assert [c["families"] for c in merged["combos"]] == [{"a": 1, "b": 20}, {"a": 3, "b": 4}]
    assert merged["families"] == ["a", "b"] and merged["left_out"] == ["c"]
    assert am.merge_results(dict(old, tested={"transformers": "5.25.0", "trl": "1.16.0"}), new, ["b"]) == new
