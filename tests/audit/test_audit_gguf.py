"""Tokenizers of GGUF files: the conversion cache's folder (harness.models), shared with training."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.audit import audit, load_tokenizer
from harness.config import from_env
from harness.errors import LoadError

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture()
def smol_path():
    path = from_env().gguf_folder / SMOL
    if not path.is_file():
        pytest.skip(f"{path} is absent (fetch it with .ci/fetch-gguf smollm2)")
    return path


def test_the_converted_folder_tokenizes_as_the_gguf_loader(smol_path, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from harness.models import convert as convert_mod

    fx = tmp_path / "fx"  # the cache root the edges pass (HARNESS_FIXTURES_DIR)
    direct = AutoTokenizer.from_pretrained(str(smol_path.parent), gguf_file=smol_path.name)
    cached = load_tokenizer(smol_path, cache_root=fx)  # the folder in the conversion cache (converted here on first use)
    folder = Path(cached.name_or_path)
    assert folder.parent == tmp_path / "fx" / "bases" and folder.name.startswith("gguf-")
    text = "Hello there <|im_start|>user\nこんにちは 😀<|im_end|>\n"
    assert cached(text)["input_ids"] == direct(text)["input_ids"]
    assert (cached.eos_token_id, cached.bos_token_id, cached.chat_template) == \
        (direct.eos_token_id, direct.bos_token_id, direct.chat_template)
    report = audit(smol_path, limit=2, cache_root=fx)  # the generation EOS is read from the GGUF's metadata
    assert "eos-config-mismatch" not in report.codes and report.examples == 2
    # training asks the same cache for the same file: nothing is converted again
    calls = []
    monkeypatch.setattr(convert_mod, "_convert_into", lambda *a: calls.append(a) or {})
    assert convert_mod.convert_gguf(smol_path, tmp_path / "fx", progress=False)[0] == folder and calls == []


def test_unreadable_gguf_file_is_one_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(LoadError, match="broken.gguf"):
        load_tokenizer(bad, cache_root=tmp_path / "cache")
