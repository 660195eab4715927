"""Tokenizers of GGUF files: transformers' own gguf_file loader, cached once as a folder."""

from __future__ import annotations

import pytest

from harness.audit import audit, load_tokenizer
from harness.gguffile import gguf_dir
from harness.errors import LoadError

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture()
def smol_path():
    path = gguf_dir() / SMOL
    if not path.is_file():
        pytest.skip(f"{path} is absent (fetch it with .ci/fetch-gguf smollm2)")
    return path


def test_cached_folder_tokenizes_as_the_gguf_loader(smol_path):
    from transformers import AutoTokenizer

    direct = AutoTokenizer.from_pretrained(str(smol_path.parent), gguf_file=smol_path.name)
    cached = load_tokenizer(smol_path)  # the folder in the cache (built here on first use)
    assert "gguf-tokenizers" in cached.name_or_path or "HARNESS_GGUF_TOKENIZER_CACHE" in __import__("os").environ
    text = "Hello there <|im_start|>user\nこんにちは 😀<|im_end|>\n"
    assert cached(text)["input_ids"] == direct(text)["input_ids"]
    assert (cached.eos_token_id, cached.bos_token_id, cached.chat_template) == \
        (direct.eos_token_id, direct.bos_token_id, direct.chat_template)
    report = audit(smol_path, limit=2)  # the generation EOS is read from the GGUF's metadata
    assert "eos-config-mismatch" not in report.codes and report.examples == 2


def test_unreadable_gguf_file_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_GGUF_TOKENIZER_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(LoadError, match="broken.gguf"):
        load_tokenizer(bad)
