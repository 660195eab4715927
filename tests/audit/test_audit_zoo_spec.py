"""fixtures/tokenizers.toml loads into validated entries; bad entries are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.audit.codes import CODES
from harness.audit.zoo import TOKENIZERS_TOML, load_zoo_spec
from harness.errors import LoadError


def test_the_shipped_list_is_valid_and_holds_the_004_controls():
    entries = load_zoo_spec(TOKENIZERS_TOML)
    names = {e.name for e in entries}
    assert {"llama3-instruct", "qwen2.5-instruct", "llama2-seed-double-bos", "llama2-seed-eos-split",
            "llama2-seed-no-eos-clm"} <= names
    expected = {c for e in entries for c in e.expect}
    assert {"double-bos", "eos-split", "eos-missing"} <= expected <= set(CODES.names())
    no_eos = next(e for e in entries if e.name == "llama2-seed-no-eos-clm")
    kwargs = no_eos.audit_kwargs(None)
    assert "eos_token" not in kwargs["chat_template"] and kwargs["pipeline"] == "hf-clm"


def test_the_zoo_covers_every_shared_family_and_twelve_or_more():
    from harness.audit.loading import REPO_ROOT

    entries = load_zoo_spec(TOKENIZERS_TOML)
    families = {e.gguf or e.folder for e in entries}
    assert len(families - {None}) + 1 >= 12  # + the BOS == EOS family built on the qwen2.5 vocabulary
    shared = REPO_ROOT.parent / "shared" / "tokenizers"
    for zoo in (shared, Path("/work/shared/tokenizers")):
        if zoo.is_dir():
            missing = {d.name for d in zoo.iterdir() if d.is_dir()} - families
            assert not missing, f"families in {zoo} with no zoo entry: {sorted(missing)}"
    glm = next(e for e in entries if e.folder == "glm4-chat")
    assert glm.audit_kwargs(None)["tokenizer_kwargs"] == {"trust_remote_code": True}
    same = next(e for e in entries if e.name == "bos-eos-same-sft")
    assert same.audit_kwargs(None)["tokenizer_kwargs"] == {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}


@pytest.mark.parametrize("body,needle", [
    ('name = "x"\nhub = "a/b"\nexpect = ["eos-gone"]', "unknown finding code(s) ['eos-gone']"),
    ('name = "x"\nhub = "a/b"\nformat = "chat"\nexpect = "clean"', "format 'chat'"),
    ('name = "x"\nhub = "a/b"\nexpect = "clean"\ncolour = 1', "unknown key(s) ['colour']"),
    ('name = "x"\nhub = "a/b"', "'expect' must be"),
    ('name = "x"\nhub = "a/b"\nexpect = "clean"\nspecial_tokens = { sep_token = "x" }', "'special_tokens' must be"),
])
def test_bad_entries_name_the_family(tmp_path, body, needle):
    path = tmp_path / "t.toml"
    path.write_text("[[family]]\n" + body + "\n", encoding="utf-8")
    with pytest.raises(LoadError) as e:
        load_zoo_spec(path)
    assert "family #1 (x)" in str(e.value) and needle in str(e.value)


# ---- the values an entry takes from the run (the edge reads HARNESS_GGUF_DIR / HARNESS_UPDATE_SNAPSHOTS)

def _entry(**over):
    from dataclasses import replace

    return replace(load_zoo_spec(TOKENIZERS_TOML)[0], **over)


def test_a_gguf_entry_is_looked_up_in_the_folder_it_is_given(tmp_path, monkeypatch):
    entry = _entry(gguf="tiny.Q4_0.gguf")
    monkeypatch.setenv("HARNESS_GGUF_DIR", str(tmp_path / "elsewhere"))  # the module does not read it
    with pytest.raises(LoadError, match=f"GGUF file '{tmp_path}/tiny.Q4_0.gguf' is absent"):
        entry.source(None, gguf_dir=tmp_path)
    (tmp_path / "tiny.Q4_0.gguf").write_bytes(b"GGUF")
    assert entry.source(None, gguf_dir=tmp_path) == tmp_path / "tiny.Q4_0.gguf"
    with pytest.raises(LoadError) as e:  # no folder given: the documented default
        _entry(gguf="no-such-model.gguf").source(None)
    assert str(Path("~/.cache/harness/gguf/no-such-model.gguf").expanduser()) in str(e.value)


def test_snapshot_changes_compares_and_rewrites_only_when_told(tmp_path):
    from audit_synth import CLEAN, CONV, NO_END, bpe

    from harness.audit import audit

    entry = _entry(name="tok", format="conversational", snapshot="snaps/tok.json")
    clean = audit(bpe(CLEAN), fmt="conversational", data=CONV)
    assert entry.snapshot_changes(clean, root=tmp_path) == []  # none pinned yet: written
    pinned = (tmp_path / "snaps" / "tok.json").read_bytes()
    assert entry.snapshot_changes(clean, root=tmp_path) == []
    changed = audit(bpe(NO_END), fmt="conversational", data=CONV)
    lines = entry.snapshot_changes(changed, root=tmp_path)
    assert len(lines) == 1 + len(CONV) and all("first difference" in line for line in lines[1:]), lines
    assert (tmp_path / "snaps" / "tok.json").read_bytes() == pinned  # comparing leaves the pinned file alone
    assert entry.snapshot_changes(changed, update=True, root=tmp_path) == []
    assert (tmp_path / "snaps" / "tok.json").read_bytes() != pinned
    assert entry.snapshot_changes(changed, root=tmp_path) == []
