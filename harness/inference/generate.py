"""Greedy (or sampled), batched generation through the chat template, with stop-token accounting.

:func:`generate` is the one entry point: it takes a model folder (or a loaded model and its
tokenizer) and a list of prompts, renders each through the tokenizer's chat template, pads on
the left, and returns one :class:`Generation` per prompt (times ``num_return_sequences``).

A generation *stopped* when it produced one of the stop tokens (:func:`stop_token_ids`): the
tokenizer's EOS, every id of ``generation_config.eos_token_id`` and the end-of-turn tokens of
the common chat formats that the vocabulary holds as special tokens. It *hit_max* when it
produced ``max_new_tokens`` tokens without one: the output sign of the EOS bug.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from harness.errors import HarnessError, LoadError

Messages = list[dict[str, str]]
PromptLike = Union[str, Messages]

#: End-of-turn markers of common chat formats; used as stop tokens when the vocabulary
#: holds them as special (added) tokens, never when they are ordinary text pieces.
END_OF_TURN_TOKENS: tuple[str, ...] = (
    "<|eot_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|end|>",
    "<|eot|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<|END_OF_TURN_TOKEN|>",
)


@dataclass(frozen=True)
class Generation:
    """One generated reply.

    ``token_ids`` are the new tokens, up to and including the stop token when there is one;
    ``text`` is their decoding without special tokens (the stop token excluded).
    """

    prompt: str
    text: str
    token_ids: tuple[int, ...]
    stopped: bool
    hit_max: bool

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["token_ids"] = list(self.token_ids)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Generation":
        return cls(d["prompt"], d["text"], tuple(d["token_ids"]), bool(d["stopped"]), bool(d["hit_max"]))


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when torch sees one, else the CPU (:func:`harness.device.resolve_device`)."""
    from harness.device import resolve_device as resolve

    return torch.device(resolve(device))


def load_model(path: Union[str, Path], device: str = "auto") -> tuple[Any, Any]:
    """A causal LM and its tokenizer from a folder (or hub id), in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as e:
        raise LoadError(f"{path}: cannot load a causal LM and tokenizer ({str(e).splitlines()[0]})") from None
    model.to(dev).eval()
    return model, tok


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """EOS, the generation config's EOS ids and the special end-of-turn tokens, deduplicated."""
    ids: list[int] = []

    def add(x: Any) -> None:
        if x is None:
            return
        for i in x if isinstance(x, (list, tuple, set)) else [x]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))

    add(tokenizer.eos_token_id)
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        add(gen_cfg.eos_token_id)
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    special |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    vocab = tokenizer.get_vocab()
    for tok in END_OF_TURN_TOKENS:
        if tok in special and tok in vocab:
            add(vocab[tok])
    if not ids:
        raise HarnessError("the tokenizer has no EOS token and no end-of-turn token: nothing to stop on")
    return ids


def render_prompts(tokenizer: Any, prompts: Sequence[PromptLike], system: Optional[str] = None) -> list[str]:
    """Each prompt as the text the model sees.

    A message list goes through the chat template with the generation prompt. A plain string is
    a user turn (after ``system`` when given) when the tokenizer has a chat template, and is
    used as it is (``system + "\\n" + prompt``) when it has none.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    out: list[str] = []
    for k, p in enumerate(prompts):
        if isinstance(p, str):
            if not has_template:
                out.append(f"{system}\n{p}" if system else p)
                continue
            msgs: Messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": p}
            ]
        elif isinstance(p, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in p):
            if not has_template:
                raise HarnessError(f"prompt {k}: chat messages given but the tokenizer has no chat template")
            msgs = list(p)
        else:
            raise HarnessError(f"prompt {k}: expected a string or a list of chat messages, got {type(p).__name__}")
        out.append(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    return out


@contextlib.contextmanager
def cpu_threads(model: Any, threads: Optional[int]) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads when ``model`` is on the CPU (0/None: leave as is).

    Small models gain nothing from intra-op threads, and on a shared CPU OpenMP's spin-waits make
    two threads far slower than one (measured on the 2-core CI machine under load: 32 prompts ×
    48 tokens of the tiny base took 17.9 s with 2 threads, 2.1 s with 1).
    """
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not threads or not on_cpu:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _left_padding(tokenizer: Any) -> Iterator[None]:
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = old


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", disable=not enabled, leave=False)


def split_generation(
    new_ids: Sequence[int], stops: Sequence[int], tokenizer: Any, max_new_tokens: int, prompt: str = ""
) -> Generation:
    """Cut one row of new tokens at its first stop token and classify it."""
    stop_set = set(stops)
    row = [int(t) for t in new_ids]
    cut = next((i for i, t in enumerate(row) if t in stop_set), None)
    if cut is None:
        # Past the stop, a batched row holds padding; without a stop every position is real.
        kept = row
        text = tokenizer.decode(kept, skip_special_tokens=True)
        return Generation(prompt, text, tuple(kept), False, len(kept) >= max_new_tokens)
    text = tokenizer.decode(row[:cut], skip_special_tokens=True)
    return Generation(prompt, text, tuple(row[: cut + 1]), True, False)


@torch.inference_mode()
def generate(
    model_dir_or_model: Union[str, Path, Any],
    prompts_or_messages: Sequence[PromptLike],
    *,
    tokenizer: Any = None,
    system: Optional[str] = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    device: str = "auto",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: Optional[int] = None,
    progress: bool = True,
    desc: str = "generate",
    threads: Optional[int] = 1,
) -> list[Generation]:
    """Generate a reply for each prompt (greedy unless ``do_sample``); see the module docstring.

    With ``num_return_sequences = n`` the result holds n generations per prompt, prompt-major.
    Prompts are batched by length and the results are returned in the input order. On the CPU
    it runs with ``threads`` torch threads (default 1, see :func:`cpu_threads`; 0 leaves torch's).
    """
    if max_new_tokens < 1:
        raise HarnessError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise HarnessError(f"batch_size must be at least 1, got {batch_size}")
    if num_return_sequences < 1:
        raise HarnessError(f"num_return_sequences must be at least 1, got {num_return_sequences}")
    if isinstance(model_dir_or_model, (str, Path)):
        model, tok = load_model(model_dir_or_model, device)
        tokenizer = tokenizer or tok
    else:
        model = model_dir_or_model
        if tokenizer is None:
            raise HarnessError("a loaded model was given without its tokenizer (pass tokenizer=...)")
        if device != "auto":
            model.to(resolve_device(device))
        model.eval()
    texts = render_prompts(tokenizer, prompts_or_messages, system)
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    has_template = bool(getattr(tokenizer, "chat_template", None))
    dev = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if do_sample
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )

    lengths = [len(tokenizer(t, add_special_tokens=not has_template)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    results: list[Optional[list[Generation]]] = [None] * len(texts)
    with cpu_threads(model, threads), _left_padding(tokenizer), _progress(len(texts), desc, progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=not has_template
            ).to(dev)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                eos_token_id=stops,
                pad_token_id=pad_id,
                num_return_sequences=num_return_sequences,
                num_beams=1,
                **sampling,
            )
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            for j, i in enumerate(idx):
                rows = new[j * num_return_sequences : (j + 1) * num_return_sequences]
                results[i] = [split_generation(r, stops, tokenizer, max_new_tokens, texts[i]) for r in rows]
            bar.update(len(idx))
    return [g for per_prompt in results for g in (per_prompt or [])]


def is_repetition_loop(token_ids: Sequence[int], n: int = 6, repeats: int = 3) -> bool:
    """Whether some ``n``-token n-gram occurs at least ``repeats`` times in ``token_ids`` (occurrences may
    overlap): the runaway reply of a decoder caught in a loop, not one that rambles on without repeating."""
    if n < 1 or repeats < 2:
        raise HarnessError(f"a repetition loop needs n >= 1 and repeats >= 2, got n={n}, repeats={repeats}")
    counts: dict[tuple[int, ...], int] = {}
    ids = [int(t) for t in token_ids]
    for i in range(len(ids) - n + 1):
        g = tuple(ids[i:i + n])
        counts[g] = counts.get(g, 0) + 1
        if counts[g] >= repeats:
            return True
    return False


def summary(gens: Sequence[Generation]) -> dict[str, float]:
    """Counts and rates of stopped / hit-max generations and the mean length in tokens."""
    n = len(gens)
    if n == 0:
        return {"n": 0, "stopped": 0, "hit_max": 0, "stop_rate": 0.0, "hit_max_rate": 0.0, "mean_tokens": 0.0}
    stopped = sum(g.stopped for g in gens)
    hit = sum(g.hit_max for g in gens)
    return {
        "n": n,
        "stopped": stopped,
        "hit_max": hit,
        "stop_rate": stopped / n,
        "hit_max_rate": hit / n,
        "mean_tokens": sum(len(g.token_ids) for g in gens) / n,
    }
