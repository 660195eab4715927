"""Synthetic tokenizers for the audit tests, built here with `tokenizers` and `sentencepiece`.

Each builder reproduces one bug class (or none): the tests never need the hub or the zoo.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIALS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<|eot|>", "<|header|>"]
CORPUS = ["hello world", "the world is wide", "Hello there, how are you?", "[INST] <<SYS>> <</SYS>> [/INST]",
          "こんにちは。お会いできて嬉しいですわ。", "ごきげんよう、清々しい朝でございますわね。", "### 応答:", "😀🎉"] * 20

# ChatML-like, no trailing newline after the end token, BOS first: the clean setup.
CLEAN = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NO_END = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NEWLINE_AFTER = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Llama-3 launch style: end-of-turn <|eot|> and an assistant header that is always appended.
HEADER_AFTER = ("{{ bos_token }}{% for m in messages %}<|header|>{{ m.role }}\n{{ m.content }}<|eot|>{% endfor %}"
                "<|header|>assistant\n")
EOT_END = ("{{ bos_token }}{% for m in messages %}<|header|>{{ m.role }}\n{{ m.content }}<|eot|>{% endfor %}"
           "{% if add_generation_prompt %}<|header|>assistant\n{% endif %}")
WITH_EOS = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NO_BOS = CLEAN.replace("{{ bos_token }}", "")
DEFAULT_SYSTEM = ("{{ bos_token }}{% if messages[0].role != 'system' %}<|im_start|>system\nYou are a helpful "
                  "assistant made by Example Corp.<|im_end|>{% endif %}" + CLEAN.replace("{{ bos_token }}", ""))
# The generation prompt already holds the reply's first word: trl's common prefix swallows it.
SWALLOWS = CLEAN.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\nSure{% endif %}")
# {% generation %} blocks for assistant_only_loss: around the reply and its end token, or the reply only.
GEN = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
       "{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}"
       "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEN_NO_END = GEN.replace("{{ m.content }}<|im_end|>{% endgeneration %}", "{{ m.content }}{% endgeneration %}<|im_end|>")
FAILS = "{{ raise_exception('this template rejects every conversation') }}"
# Qwen2-style default system prompt of short words.
SHORT_SYSTEM = ("{% if messages[0].role != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>"
                "{% endif %}" + NO_BOS)
# Qwen3-style: an empty think block written into the final assistant turn; earlier turns' reasoning stripped.
THINK = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
         "{% set parts = m.content.split('</think>') %}{% set c = parts[-1].lstrip('\n') %}"
         "{% set r = parts[0].split('<think>')[-1].strip('\n') if parts | length > 1 else '' %}"
         "{% if loop.last %}<think>\n{{ r }}\n</think>\n\n{% endif %}"
         "{{ c }}{% else %}{{ m.content }}{% endif %}<|im_end|>{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# GLM-style: no end-of-turn token; a turn ends where the next role marker begins.
ROLE_MARKERS = ("{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
# Mistral v0.2 style: the system role is rejected.
NO_SYSTEM = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}"
             "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
             "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@functools.lru_cache(maxsize=1)
def _bpe_json() -> str:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tk.to_str()


def bpe(template: str | None = CLEAN, eos: str | None = "<|im_end|>", bos: str | None = "<s>",
        pad: str | None = None, add_bos: bool = False, **kw) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the given special tokens and chat template."""
    tk = Tokenizer.from_str(_bpe_json())
    if add_bos:  # the tokenizer itself prepends <s>, as Llama tokenizers do
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad, **kw)
    tok.chat_template = template
    if template in (THINK,):  # Qwen3 adds <think>/</think> as ordinary (special: false) added tokens
        tok.add_tokens(["<think>", "</think>"])
    if template in (ROLE_MARKERS,):  # GLM's role markers are special tokens
        tok.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>"]})
    tok.name_or_path = "synthetic-bpe"
    return tok


@functools.lru_cache(maxsize=1)
def sp_folder() -> str:
    """A Llama-style SentencePiece tokenizer folder (tokenizer.model + config; the tokenizer adds BOS)."""
    import sentencepiece as spm

    d = tempfile.mkdtemp(prefix="audit-sp-")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_prefix=os.path.join(d, "tokenizer"),
                                   vocab_size=150, model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as fh:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "legacy": False, "add_bos_token": True}, fh)
    return d


def sp(**kw):
    """The SentencePiece tokenizer, loaded through AutoTokenizer (kw: e.g. split_special_tokens=True)."""
    return AutoTokenizer.from_pretrained(sp_folder(), **kw)


def conv(prompt: str, reply: str, system: str | None = None) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return {"prompt": msgs, "completion": [{"role": "assistant", "content": reply}]}


def seed_text(prompt: str, reply: str, eos: bool = True) -> dict:
    """The seed-004 Llama-2 text format."""
    return {"text": f"<s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\n{prompt} [/INST] {reply}" + (" </s>" if eos else "")}


PAIRS = [("hello", "ごきげんよう、清々しい朝でございますわね。"), ("how are you?", "the world is wide 😀"),
         ("こんにちは", "お会いできて嬉しいですわ。")]
CONV = [conv(p, r, "be polite") for p, r in PAIRS]


def think_conv(prompt: str, reply: str, reasoning: str | None = None) -> dict:
    """A conversational record; ``reasoning`` goes into the reply as a <think> block."""
    content = f"<think>\n{reasoning}\n</think>\n\n{reply}" if reasoning else reply
    return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": content}]}
