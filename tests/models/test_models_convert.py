"""The conversion cache through the conversion itself, on the real GGUF files (.ci/fetch-gguf smollm2 gemma3):
a tokenizer that converts wrongly is refused (EOS on SmolLM2, PAD on Gemma-3 where PAD is not EOS), files
are told apart by content not name, and nothing half-written is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import LoadError
from harness.models import convert_gguf
from harness.models import convert as convert_mod
from harness.models.convert import INFO_FILE, converted_dir
from harness.models.gguffile import sha256_file

from gguf_helpers import SMOL, SMOL_SHA, real_gguf, small_gguf
from models_helpers import GEMMA, rewritten, vocab_entry


@pytest.fixture(scope="module")
def smol_file(smol_gguf) -> Path:
    return smol_gguf


@pytest.fixture(scope="module")
def cache(smol_cache) -> Path:
    return smol_cache


@pytest.fixture(scope="module")
def converted(smol_converted) -> Path:
    return smol_converted


def test_the_key_is_the_content_and_a_second_call_converts_nothing(converted, smol_file, cache, monkeypatch):
    """The folder name is the one existing caches hold (gguf-<sha16>-v1); the second call finds it."""
    assert converted == cache / "bases" / f"gguf-{SMOL_SHA[:16]}-v1"
    info = json.loads((converted / INFO_FILE).read_text())
    assert info["sha256"] == SMOL_SHA and info["tokens"]["eos"] == {"id": 2, "token": "<|im_end|>"}
    calls = []
    monkeypatch.setattr(convert_mod, "_convert_into", lambda *a: calls.append(a) or {})
    mtime = (converted / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(smol_file, cache, progress=False)[0] == converted
    assert calls == [] and (converted / "model.safetensors").stat().st_mtime_ns == mtime


def test_a_same_named_file_with_a_wrong_eos_is_refused_not_served_from_the_cache(converted, smol_file, cache,
                                                                                  tmp_path):
    """SmolLM2 with its vocabulary entry 2 ('<|im_end|>', the EOS) renamed to an ordinary token's text: the
    converted tokenizer's EOS becomes that token. The file has SmolLM2's name, and SmolLM2 is converted in
    this cache already: a name-keyed cache would hand back the healthy folder."""
    bad = rewritten(smol_file, tmp_path / "elsewhere" / SMOL, tokens={2: vocab_entry(smol_file, 300)})
    with pytest.raises(LoadError) as e:
        convert_gguf(bad, cache, progress=False)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert msg.startswith(f"{bad}: the converted tokenizer's eos_token is 'om' (id 300) but the GGUF's "
                          "tokenizer.ggml.eos_token_id is 2")
    assert not converted_dir(cache, sha256_file(bad)).exists(), "a refused conversion keeps nothing"
    assert not list((cache / "tmp").iterdir()), "a refused conversion leaves no temp folder"
    assert (converted / INFO_FILE).is_file()


def test_two_files_of_one_name_get_two_folders(converted, smol_file, cache, tmp_path):
    other = rewritten(smol_file, tmp_path / "copy" / SMOL, name="SmolLM2 renamed in its metadata")
    folder, ident = convert_gguf(other, cache, progress=False)
    assert folder != converted and ident["file"] == SMOL and ident["sha256"] == sha256_file(other) != SMOL_SHA
    assert json.loads((folder / INFO_FILE).read_text())["sha256"] == ident["sha256"]
    assert (folder / "model.safetensors").read_bytes() == (converted / "model.safetensors").read_bytes()


def test_gemma3_with_a_wrong_pad_is_refused(tmp_path):
    """Gemma-3's PAD (0, '<pad>') is not its EOS (1, '<eos>'): the PAD is checked on its own. Vocabulary
    entry 0 renamed to an ordinary token's text makes the converted tokenizer pad with that token."""
    gemma = real_gguf(GEMMA, "gemma3")
    bad = rewritten(gemma, tmp_path / "gemma" / GEMMA, tokens={0: vocab_entry(gemma, 1000)})
    with pytest.raises(LoadError) as e:
        convert_gguf(bad, tmp_path / "cache", progress=False)
    assert str(e.value).startswith(f"{bad}: the converted tokenizer's pad_token is 'put' (id 1000) but the GGUF's "
                                   "tokenizer.ggml.padding_token_id is 0")
    assert not (tmp_path / "cache" / "bases").exists() or not any((tmp_path / "cache" / "bases").iterdir())
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_a_truncated_file_is_refused_before_any_conversion(tmp_path, monkeypatch):
    """One line, 'incomplete file', naming the file; the conversion never starts (no reader, no temp folder)."""
    whole = small_gguf(tmp_path / "whole.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    calls = []
    monkeypatch.setattr(convert_mod, "_convert_into", lambda *a: calls.append(a) or {})
    with pytest.raises(LoadError) as e:
        convert_gguf(cut, tmp_path / "cache", progress=False)
    assert str(e.value) == (f"{cut}: incomplete file: {cut.stat().st_size} bytes, but its tensors end at byte "
                            f"{whole.stat().st_size} (an interrupted download? fetch it again)")
    assert calls == [] and not (tmp_path / "cache").exists()
