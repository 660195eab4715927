"""The one GGUF reader: the completeness check walks the real files' headers to their exact size, and a cut
file is refused in one line; the tokenizer metadata of both real bases."""

from __future__ import annotations


import pytest

from harness.errors import LoadError
from harness.models.gguffile import check_complete, eos_ids, gguf_tokens, is_gguf

from gguf_helpers import SMOL, real_gguf, small_gguf
from models_helpers import GEMMA


@pytest.mark.parametrize("name,fetch", [(SMOL, "smollm2"), (GEMMA, "gemma3")])
def test_a_real_file_is_complete_and_one_byte_less_is_not(name, fetch, tmp_path):
    f = real_gguf(name, fetch)
    check_complete(f)
    cut = tmp_path / name
    with open(f, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(f.stat().st_size - 1))
    with pytest.raises(LoadError, match=rf"^{cut}: incomplete file: {f.stat().st_size - 1} bytes, but its tensors "
                                        rf"end at byte {f.stat().st_size} "):
        check_complete(cut)


def test_a_file_cut_inside_its_header_and_a_file_that_is_no_gguf(tmp_path):
    whole = small_gguf(tmp_path / "whole.gguf")
    head = tmp_path / "head.gguf"
    head.write_bytes(whole.read_bytes()[:40])
    with pytest.raises(LoadError, match=rf"^{head}: incomplete file: 40 bytes end inside its header"):
        check_complete(head)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(LoadError, match=rf"^{other}: not a readable GGUF file"):
        check_complete(other)
    assert is_gguf(whole) and not is_gguf(other) and not is_gguf(tmp_path / "missing")


def test_the_special_tokens_of_the_real_bases():
    smol = gguf_tokens(real_gguf(SMOL, "smollm2"))
    assert (smol["architecture"], smol["bos"], smol["eos"], smol["pad"]) == ("llama", 1, 2, 2)
    assert eos_ids(real_gguf(SMOL, "smollm2")) == [2]
    gemma = gguf_tokens(real_gguf(GEMMA, "gemma3"))
    assert (gemma["architecture"], gemma["bos"], gemma["eos"], gemma["pad"]) == ("gemma3", 2, 1, 0)
