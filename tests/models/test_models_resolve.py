"""The one resolver: a model folder in place, a GGUF file by suffix, by its magic (a link into a hub cache
whose target has no suffix) or as the one file of a folder, ``$HARNESS_GGUF_DIR`` from the run configuration,
and one error naming what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import from_env
from harness.errors import LoadError
from harness.models import expand, find_gguf, resolve

from gguf_helpers import small_gguf


def test_a_model_folder_is_used_in_place(small_model_folder):
    base = resolve(str(small_model_folder), where="plan.toml: base.model")
    assert base.folder == small_model_folder.resolve() and base.gguf is None
    assert base.identity["kind"] == "path" and ("config.json" in {f[0] for f in base.identity["files"]})
    tok = base.tokenizer()
    assert tok.eos_token_id is not None and base.model().config.num_hidden_layers == 2


def test_gguf_files_are_found_by_suffix_magic_or_folder(tmp_path):
    f = small_gguf(tmp_path / "one" / "m.gguf")
    assert find_gguf(str(f)) == f and find_gguf(str(f.parent)) == f
    blob = tmp_path / "blobs" / "3f2a9c"
    blob.parent.mkdir()
    blob.write_bytes(f.read_bytes())
    assert find_gguf(str(blob)) == blob, "a hub-cache blob (no suffix) is a GGUF by its first bytes"
    small_gguf(tmp_path / "one" / "n.gguf")
    with pytest.raises(LoadError, match=r"one: holds 2 \.gguf files \(m\.gguf, n\.gguf\); name one"):
        find_gguf(str(f.parent))
    (tmp_path / "text").write_text("not a model")
    assert find_gguf(str(tmp_path / "text")) is None


def test_missing_things_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoadError, match=rf"^plan\.toml: base\.model: {tmp_path}/nope does not exist$"):
        resolve(str(tmp_path / "nope"), tmp_path, where="plan.toml: base.model")
    with pytest.raises(LoadError, match=r"^model: 'no-such-org/no-such-model' is neither a local folder"):
        resolve("no-such-org/no-such-model", tmp_path)
    with pytest.raises(LoadError, match=rf"^{tmp_path}/absent\.gguf: no such GGUF file$"):
        resolve(str(tmp_path / "absent.gguf"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match=r"empty has no config\.json \(and no \.gguf file\)"):
        resolve(str(tmp_path / "empty"), tmp_path)


def test_the_gguf_dir_comes_from_the_run_configuration(tmp_path):
    gguf_dir = from_env({"HARNESS_GGUF_DIR": str(tmp_path)}).gguf_folder
    assert expand("$HARNESS_GGUF_DIR/a.gguf", gguf_dir) == f"{tmp_path}/a.gguf"
    assert expand("${HARNESS_GGUF_DIR}/a.gguf", from_env({}).gguf_folder) == \
        str(Path("~/.cache/harness/gguf/a.gguf").expanduser())
    assert expand("org/model@rev", gguf_dir) == "org/model@rev"
