"""The tiny default base: a Japanese-capable byte-level BPE tokenizer and a small Llama,
both made here without any network, and the Llama pretrained on D0-style text until its
held-out loss flattens.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from harness.errors import HarnessError

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>")

#: The assistant turn ends in the EOS token, so SFT through trl trains the model to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}<|system|>{{ m['content'] }}\n"
    "{%- elif m['role'] == 'user' -%}<|user|>{{ m['content'] }}\n"
    "{%- elif m['role'] == 'assistant' -%}<|assistant|>{{ m['content'] }}{{ eos_token }}\n"
    "{%- else -%}{{ raise_exception('unknown role: ' + m['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def make_tiny_tokenizer(texts: Sequence[str], vocab_size: int = 3000):
    """Train a byte-level BPE tokenizer on ``texts``; any text encodes (byte fallback).

    Returns a ``PreTrainedTokenizerFast`` with BOS ``<s>``, EOS ``</s>``, PAD ``<pad>`` and a
    chat template whose assistant turn ends in EOS.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise HarnessError("make_tiny_tokenizer: no texts to train on")
    tok = Tokenizer(models.BPE())
    # No regex split: Japanese has no spaces, and whole phrases may become tokens.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    fast.model_max_length = 512
    return fast


def make_tiny_model(tokenizer: Any, *, hidden_size: int = 128, intermediate_size: int = 256,
                    num_hidden_layers: int = 8, num_attention_heads: int = 4, num_key_value_heads: int = 4,
                    max_position_embeddings: int = 256, seed: int = 0, **extra: Any):
    """A randomly initialised small ``LlamaForCausalLM`` (float32) sized for ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **extra,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _pack(tokenizer: Any, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """BOS text EOS for every text, concatenated and cut into ``seq_len`` rows."""
    ids: list[int] = []
    for t in texts:
        ids += [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n = len(ids) // seq_len
    if n == 0:
        raise HarnessError(f"pretraining text is shorter than one sequence of {seq_len} tokens")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def pretrain(model: Any, tokenizer: Any, texts: Sequence[str], *, max_steps: int = 1500, min_steps: int = 200,
             batch_size: int = 16, seq_len: int = 96, learning_rate: float = 3e-3, eval_every: int = 50,
             flat_tolerance: float = 0.01, seed: int = 0, device: str = "cpu",
             progress: bool = True) -> list[dict]:
    """Causal-LM pretraining until the held-out loss flattens; returns the curve.

    Every tenth text is held out. Every ``eval_every`` steps the held-out loss is measured; after
    ``min_steps``, training stops once it improved by less than ``flat_tolerance`` (relative) over
    the best so far, twice in a row. AdamW with a short warmup, then a constant learning rate.
    Each log row has the training ``loss``; evaluation rows add ``eval_loss`` and
    ``window_mean_loss`` (the mean training loss since the last evaluation).
    """
    from tqdm.auto import tqdm

    held = [t for i, t in enumerate(texts) if i % 10 == 9]
    train_texts = [t for i, t in enumerate(texts) if i % 10 != 9] if len(held) >= 2 else list(texts)
    data = _pack(tokenizer, train_texts, seq_len)
    val = _pack(tokenizer, held, seq_len) if len(held) >= 2 else data[:batch_size]
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, min_steps // 4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    log: list[dict] = []
    window: list[float] = []
    best, flat = math.inf, 0
    t0 = time.perf_counter()
    bar = tqdm(range(max_steps), desc="pretrain tiny base", disable=not progress, leave=False)
    for step in bar:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen)
        # A random rotation varies the packing boundaries between epochs.
        batch = torch.roll(data[idx], shifts=-rng.randrange(0, max(1, seq_len // 4)), dims=1).to(device)
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window.append(out.loss.item())
        row = {"step": step + 1, "loss": window[-1], "learning_rate": sched.get_last_lr()[0],
               "elapsed_s": round(time.perf_counter() - t0, 3)}
        log.append(row)
        if (step + 1) % eval_every == 0:
            row["window_mean_loss"] = sum(window) / len(window)
            window.clear()
            row["eval_loss"] = _eval_loss(model, val, device)
            bar.set_postfix(loss=f"{row['window_mean_loss']:.3f}", eval=f"{row['eval_loss']:.3f}")
            flat = flat + 1 if row["eval_loss"] > best * (1 - flat_tolerance) else 0
            best = min(best, row["eval_loss"])
            if step + 1 >= min_steps and flat >= 2:
                row["stopped"] = "flat"
                break
            model.train()
    else:
        log[-1]["stopped"] = "max_steps"
    model.eval()
    return log


@torch.no_grad()
def _eval_loss(model: Any, val: torch.Tensor, device: str) -> float:
    model.eval()
    losses = [model(input_ids=val[i:i + 16].to(device), labels=val[i:i + 16].to(device)).loss.item()
              for i in range(0, val.shape[0], 16)]
    return sum(losses) / len(losses)


def build_tiny_base(out_dir: Path, texts: Sequence[str], tokenizer_texts: Sequence[str], spec: Any,
                    device: str = "cpu", progress: bool = True,
                    on_log: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Make the tokenizer and model from ``spec`` (a :class:`~harness.train.plan.TinySpec`),
    pretrain, and save both (float32 safetensors) into ``out_dir``; returns the loss curve."""
    tokenizer = make_tiny_tokenizer(tokenizer_texts, spec.vocab_size)
    model = make_tiny_model(
        tokenizer, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        seed=spec.pretrain_seed,
    )
    log = pretrain(
        model, tokenizer, texts, max_steps=spec.pretrain_max_steps, min_steps=spec.pretrain_min_steps,
        batch_size=spec.pretrain_batch_size, seq_len=spec.pretrain_seq_len,
        learning_rate=spec.pretrain_learning_rate, eval_every=spec.pretrain_eval_every,
        flat_tolerance=spec.pretrain_flat_tolerance, seed=spec.pretrain_seed, device=device, progress=progress,
    )
    model.to("cpu")
    dtype = getattr(spec, "dtype", "float32")
    if dtype != "float32":
        model.to(getattr(torch, dtype))
        model.config.dtype = getattr(torch, dtype)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return log
