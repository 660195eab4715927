"""load_jsonl and the loaders: every bad row gets one error naming the file, the line and the field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness import data
from harness.errors import HarnessError, LoadError

FIELDS = {"id": str, "topic": str, "prompt": str}
GOOD = {"id": "e1", "topic": "daily", "prompt": "こんにちは"}


def write(tmp_path: Path, lines: list[str], name: str = "rows.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def row(**kw) -> str:
    return json.dumps({**GOOD, **kw}, ensure_ascii=False)


def error_of(path: Path, required=FIELDS) -> str:
    with pytest.raises(LoadError) as info:
        data.load_jsonl(path, required)
    return str(info.value)


def test_good_rows_load_and_blank_lines_are_skipped(tmp_path):
    p = write(tmp_path, [row(), "", row(id="e2", extra=[1])])
    rows = data.load_jsonl(p, FIELDS)
    assert [r["id"] for r in rows] == ["e1", "e2"]
    assert rows[1]["extra"] == [1]


def test_invalid_json_names_file_and_line(tmp_path):
    p = write(tmp_path, [row(), '{"id": "e2", "topic": '])
    msg = error_of(p)
    assert f"{p}:2:" in msg and "invalid JSON" in msg


def test_non_object_row(tmp_path):
    p = write(tmp_path, [row(), row(id="e2"), "[1, 2]"])
    msg = error_of(p)
    assert f"{p}:3:" in msg and "object" in msg


def test_missing_field_names_field(tmp_path):
    bad = json.dumps({"id": "e2", "topic": "daily"})
    p = write(tmp_path, [row(), bad])
    msg = error_of(p)
    assert f"{p}:2:" in msg and "missing field 'prompt'" in msg


def test_wrong_type_names_field_and_types(tmp_path):
    p = write(tmp_path, [row(topic=3)])
    msg = error_of(p)
    assert f"{p}:1:" in msg and "'topic'" in msg and "string" in msg and "integer" in msg


def test_bool_is_not_an_integer(tmp_path):
    p = write(tmp_path, [json.dumps({"id": "a", "n": True})])
    msg = error_of(p, {"id": str, "n": int})
    assert f"{p}:1:" in msg and "'n'" in msg and "boolean" in msg


def test_empty_string_names_field(tmp_path):
    p = write(tmp_path, [row(), row(id="e2", prompt="  ")])
    msg = error_of(p)
    assert f"{p}:2:" in msg and "'prompt'" in msg and "empty" in msg


def test_duplicate_id_names_both_lines(tmp_path):
    p = write(tmp_path, [row(), row(id="e2"), row()])
    msg = error_of(p)
    assert f"{p}:3:" in msg and "duplicate id 'e1'" in msg and "line 1" in msg


def test_missing_file_names_path(tmp_path):
    p = tmp_path / "nope.jsonl"
    msg = error_of(p)
    assert str(p) in msg


def test_empty_file_is_an_error(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n", encoding="utf-8")
    assert "no rows" in error_of(p)


def test_persona_duplicate_prompt_is_an_error(tmp_path):
    item = {"id": "p1", "topic": "t", "prompt": "同じ", "d0": "はい。", "d1": "ええ、そうですわ。"}
    p = write(tmp_path, [json.dumps(item, ensure_ascii=False), json.dumps({**item, "id": "p2"}, ensure_ascii=False)])
    with pytest.raises(LoadError, match=r"'p2'.*'prompt'.*'p1'"):
        data.load_persona(p)


def test_every_loader_and_builder_reads_the_folder_it_is_given(tmp_path, monkeypatch):
    """The folder is an argument (the edges pass ``HARNESS_DATA_DIR`` down); no argument is the packaged data."""
    item = {"id": "x1", "topic": "t", "prompt": "やあ", "d0": "こんにちは。", "d1": "ごきげんようですわ。"}
    write(tmp_path, [json.dumps(item, ensure_ascii=False)], data.PERSONA_FILE)
    write(tmp_path, [json.dumps({"id": "e1", "topic": "t", "prompt": "元気?"}, ensure_ascii=False)], data.EVAL_FILE)
    (tmp_path / data.SYSTEM_FILE).write_text("短く答えてください。\n", encoding="utf-8")
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "elsewhere"))  # read by harness.config only
    assert [i.id for i in data.load_persona(tmp_path)] == ["x1"]
    assert data.load_persona(tmp_path) == data.load_persona(tmp_path / data.PERSONA_FILE)
    assert data.system_prompt(tmp_path) == "短く答えてください。"
    system = {"role": "system", "content": "短く答えてください。"}
    assert data.sft_records("d1", folder=tmp_path) == [
        {"prompt": [system, {"role": "user", "content": "やあ"}],
         "completion": [{"role": "assistant", "content": "ごきげんようですわ。"}]}]
    assert data.dpo_records("d0", folder=tmp_path)[0]["rejected"] == [{"role": "assistant", "content": "ごきげんようですわ。"}]
    assert [p.reply for p in data.dataset("d2", 0, folder=tmp_path)] == ["こんにちは。"]  # floor(1/2) = 0 swapped
    assert data.eval_records(source="eval", folder=tmp_path) == [[system, {"role": "user", "content": "元気?"}]]
    assert data.pretrain_texts(tmp_path) == ["短く答えてください。", "やあ\nこんにちは。", "こんにちは。", "元気?"]
    assert data.data_dir() == data.DEFAULT_DATA_DIR == Path(data.__file__).resolve().parents[1] / "fixtures" / "data"
    assert len(data.load_persona()) == len(data.load_persona(data.DEFAULT_DATA_DIR)) > 1


def test_the_cli_passes_harness_data_dir_down_to_the_plan(tmp_path):
    """``HARNESS_DATA_DIR`` is read at the edge (the ``fixtures build`` command) and reaches the loaders:
    a bad row there stops the build before training, exit 2, naming file and line."""
    import shutil
    import subprocess
    import sys

    root = Path(data.__file__).resolve().parents[1]
    folder = tmp_path / "data"
    shutil.copytree(data.DEFAULT_DATA_DIR, folder)
    persona = folder / data.PERSONA_FILE
    lines = persona.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace('"d1":', '"dx":')
    persona.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, "HARNESS_DATA_DIR": str(folder), "HARNESS_FIXTURES_DIR": str(tmp_path / "fx")}
    r = subprocess.run([sys.executable, "-m", "harness", "fixtures", "build", "fixtures/plans/micro.toml",
                        "--device", "cpu"], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and f"{persona}:3: missing field 'd1'" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "fx" / "nodes").exists()


def test_unknown_dataset_lists_known_names():
    with pytest.raises(HarnessError, match=r"unknown dataset 'x'; known: d0, d1, d2"):
        data.dataset("x")


def test_unknown_sft_format_lists_known_formats():
    with pytest.raises(HarnessError, match=r"known: conversational, messages"):
        data.sft_records("d0", fmt="chatml")
