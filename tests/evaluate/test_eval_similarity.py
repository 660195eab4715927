"""sacrebleu BLEU (Japanese tokenization), bert-score on a tiny local BERT, tables 24/27 and their files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness import data
from harness.errors import HarnessError, LoadError
from harness.evaluate.similarity import (BertScore, bert_layer, bleu, bleu_tokenizer, table24, table27, try_bert_score,
                                         write_table)

ITEMS = data.load_persona()[:40]
D0, D1 = [i.d0 for i in ITEMS], [i.d1 for i in ITEMS]


@pytest.fixture(scope="module")
def scorer(tiny_bert_dir):
    return BertScore(str(tiny_bert_dir), num_layers=2)


def test_bleu_identity_and_order():
    assert bleu(D0, D0) == pytest.approx(1.0)
    assert 0.0 < bleu(D1, D0) < 1.0
    assert bleu(["あいうえお"], ["かきくけこ"]) == 0.0


def test_char_tokenization_matters_for_japanese():
    # Without spaces the whole sentence is one "word" under 13a: any difference scores 0.
    hyp, ref = ["今日はとても良い天気ですね。"], ["今日はとても良い天気ですわね。"]
    assert bleu(hyp, ref, tokenize="13a") == 0.0
    assert bleu(hyp, ref, tokenize="char") > 0.5


def test_ja_mecab_when_installed():
    if bleu_tokenizer("auto") != "ja-mecab":
        pytest.skip("sacrebleu[ja] (MeCab + ipadic) is not installed: the char fallback is tested instead")
    hyp, ref = ["今日はとても良い天気ですね。"], ["今日はとても良い天気ですわね。"]
    assert 0.3 < bleu(hyp, ref, tokenize="ja-mecab") < 1.0
    t = table24({"a": hyp}, ref, ref, "ja-mecab", None)
    assert "tokenize=ja-mecab (ja-mecab-" in t.markdown()


def test_bleu_tokenizer_choice():
    assert bleu_tokenizer("char") == "char"
    assert bleu_tokenizer("auto") in ("ja-mecab", "char")
    with pytest.raises(HarnessError, match="unknown BLEU tokenizer 'spaces'"):
        bleu_tokenizer("spaces")
    if bleu_tokenizer("auto") == "char":
        with pytest.raises(LoadError, match="sacrebleu\\[ja\\]"):
            bleu_tokenizer("ja-mecab")


def test_length_mismatch_names_the_pair():
    with pytest.raises(HarnessError, match="sft_d0 vs D0: 2 generations but 1 references"):
        bleu(["a", "b"], ["a"], what="sft_d0 vs D0")


def test_bertscore_identity_and_separation(scorer):
    assert scorer.f1(D0, D0) == pytest.approx(1.0, abs=1e-5)
    assert scorer.f1(D0, D1) < scorer.f1(D0, D0)


def test_bertscore_model_errors(tmp_path):
    with pytest.raises(HarnessError, match="pass num_layers"):
        BertScore(str(tmp_path))
    s, note = try_bert_score(str(tmp_path / "nope"), 2)
    assert s is None and "BERTScore skipped" in note and "nope" in note


def test_table24_and_27_and_files(scorer, tmp_path):
    gens = {"sft_d0": D0, "sft_d1": D1, "base": [i.prompt for i in ITEMS]}
    t = table24(gens, D0, D1, "char", scorer)
    assert t.cell("sft_d0", "BLEU(D0)") == pytest.approx(1.0) and t.cell("sft_d0", "BLEU(D1)") < 1.0
    assert t.cell("sft_d1", "BERTScore(D1)") > t.cell("sft_d1", "BERTScore(D0)")
    assert "tokenize=char" in t.markdown() and "tiny_bert" in t.markdown()
    p = table27(gens, "char", None, "BERTScore off")
    assert [p.cell(n, n) for n in gens] == [pytest.approx(1.0)] * 3
    files = write_table(t, tmp_path) + write_table(p, tmp_path)
    assert [f.suffix for f in files] == [".md", ".json", ".png"] * 2
    assert json.loads(files[1].read_text(encoding="utf-8"))["rows"] == list(gens)
    assert files[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp"))
    no_bert = table24(gens, D0, D1, "char", None, "BERTScore skipped: offline")
    assert no_bert.cell("base", "BERTScore(D0)") is None and "offline" in no_bert.markdown()


SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smol_scorer(tmp_path_factory):
    """BERTScore on SmolLM2-135M-Instruct's hidden states (a real pretrained decoder, from its GGUF file),
    converted into ``$HARNESS_FIXTURES_DIR`` or a temp cache, never the project's ``.fixtures/``."""
    gguf = Path(os.environ.get("HARNESS_GGUF_DIR", "~/.cache/harness/gguf")).expanduser() / SMOL
    if not gguf.is_file():
        pytest.skip(f"real model: {gguf} is absent (fetch it with .ci/fetch-gguf smollm2)")
    cache = Path(os.environ.get("HARNESS_FIXTURES_DIR") or tmp_path_factory.mktemp("fixtures"))
    scorer, note = try_bert_score(SMOL, None, cache_root=cache)
    assert scorer is not None, note
    return scorer


def test_bertscore_on_a_real_pretrained_decoder(smol_scorer):
    assert smol_scorer.num_layers == 23 == bert_layer(smol_scorer.model)  # ceil(3/4 of its 30 layers)
    # the converted folder is named by the file's sha256; the tables name the GGUF file
    assert smol_scorer.label == f"{SMOL} (layer 23)" and Path(smol_scorer.model).name.startswith("gguf-")
    assert smol_scorer.f1(D1[:4], D1[:4]) == pytest.approx(1.0, abs=1e-4)
    near = smol_scorer.f1(["今日はとても良い天気ですね。"], ["今日はとてもいい天気ですね。"])
    far = smol_scorer.f1(["今日はとても良い天気ですね。"], ["株価が大きく下落しました。"])
    assert near > far
    t = table24({"sft_d1": D1[:4]}, D0[:4], D1[:4], "char", smol_scorer)
    assert t.cell("sft_d1", "BERTScore(D1)") > t.cell("sft_d1", "BERTScore(D0)")
    assert "SmolLM2" in t.markdown() and "(layer 23)" in t.markdown()


def test_bert_layer_follows_bert_score(tmp_path, tiny_bert_dir):
    assert bert_layer("bert-base-multilingual-cased") == 9 and bert_layer("roberta-large") == 17
    named = tmp_path / "xlm-roberta-base"  # a local copy is known by its folder name
    named.mkdir()
    (named / "config.json").write_text('{"num_hidden_layers": 12}', encoding="utf-8")
    assert bert_layer(str(named)) == 9
    assert bert_layer(str(tiny_bert_dir)) == 2  # unknown: ceil(3/4 of 2 layers)


def test_bertscore_on_a_decoder_without_padding_token(tmp_path, chat_model_dir):
    """A local decoder whose tokenizer has no padding token pads with its EOS (bert-score needs one)."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "no_pad"
    shutil.copytree(chat_model_dir, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = None
    tok.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token_id is None
    s = BertScore(str(folder))
    assert s.num_layers == 2 and s.f1(D0[:3], D0[:3]) == pytest.approx(1.0, abs=1e-5)
    assert s.f1(D0[:3], D1[:3]) < 1.0


def test_bertscore_real_decoder_scores_empty_replies(smol_scorer):
    """Tiny nodes reply with nothing at times; bert-score must still score them (low, not an error)."""
    f = smol_scorer.f1(["", "  ", D1[0]], D1[:3])
    assert 0.0 < f < 1.0
