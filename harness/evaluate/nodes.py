"""Generation for every node of a fixture graph, cached in the fixture store.

The graph is anything with ``.names``, ``.path(name)`` (a merged HF checkpoint folder with its
tokenizer) and ``.key(name)`` (the node's cache key), as :func:`harness.train.build` returns.
A node's generations on one prompt source are cached as
``<fixtures dir>/generations/<node>-<hash>.json``, where the hash covers the node key, the
rendered prompts and the generation settings; files are written to a temporary name and renamed.

Prompt sources: ``persona`` (the dataset prompts, the first ``limit`` items when the plan limits
its data) and ``eval`` (the held-out evaluation prompts). Both go through the chat template with
the system prompt.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from harness.atomic import write_json
from harness.errors import HarnessError
from harness.inference.generate import Generation

#: Bumped when generation code changes what a cached file would hold.
CACHE_VERSION = 1
SOURCES = ("persona", "eval")
#: The study's budget of new tokens (study 004's checks), and the floor of the budget scaled to the data.
MIN_NEW_TOKENS = 48
#: Slack over the longest trained reply: held-out prompts may ask for a somewhat longer answer.
BUDGET_SLACK = 1.5


@dataclass(frozen=True)
class GenSettings:
    """What a cached generation depends on besides the node and the prompts."""

    max_new_tokens: int = 48
    batch_size: int = 64
    system: bool = True
    # seeded sampling instead of greedy decoding (the sampling fields enter the key only when sampling)
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def key(self) -> dict[str, Any]:
        # batch_size stays in: padding can move logits by rounding, and so flip a greedy token.
        d = asdict(self)
        if not self.do_sample:  # greedy: the key files cached before sampling existed had
            for k in ("do_sample", "temperature", "top_p", "seed"):
                del d[k]
        return d


def _reply_tokens(tokenizer: Any, record: dict) -> int:
    """Tokens of a record's reply as the model generates it (chat template, end-of-turn included)."""
    if "messages" in record:
        prompt, reply = list(record["messages"][:-1]), list(record["messages"][-1:])
    else:
        prompt, reply = list(record["prompt"]), list(record.get("completion") or record["chosen"])
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + reply, tokenize=False)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    return count(full) - count(head)


def scaled_budget(longest: int) -> int:
    """:data:`BUDGET_SLACK` × ``longest`` new tokens, rounded up to a multiple of 8, never below :data:`MIN_NEW_TOKENS`."""
    return max(MIN_NEW_TOKENS, math.ceil(longest * BUDGET_SLACK / 8) * 8)


def reply_budget(tokenizer: Any, records: Sequence[dict]) -> tuple[int, int]:
    """``(max_new_tokens, longest reply)``: the budget scaled to the training data in ``tokenizer``.

    A model that learned its stop token ends a reply about as long as the ones it trained on; a
    budget shorter than those replies counts a healthy reply as "never stopped". The budget is
    :data:`BUDGET_SLACK` × the longest conversational reply in ``records`` (prompt/completion,
    prompt/chosen or messages), never below :data:`MIN_NEW_TOKENS`. Records without chat
    messages (plain text formats) leave the floor.
    """
    longest = 0
    for r in records:
        msgs = r.get("messages") or r.get("prompt")
        if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict):
            longest = max(longest, _reply_tokens(tokenizer, r))
    return scaled_budget(longest), longest


@dataclass(frozen=True)
class Prompts:
    """One prompt source: ids, the user prompts and the chat messages sent to the model."""

    source: str
    ids: tuple[str, ...]
    questions: tuple[str, ...]
    messages: tuple[tuple[dict, ...], ...]


def prompts(source: str, limit: int = 0, system: bool = True, folder: Path | None = None) -> Prompts:
    """The prompts of ``source`` (``persona`` or ``eval``) in ``folder`` (default: the packaged data);
    ``limit`` > 0 keeps the first ones."""
    from harness import data

    if source == "persona":
        rows = [(i.id, i.prompt) for i in data.load_persona(folder)]
    elif source == "eval":
        rows = [(e.id, e.prompt) for e in data.load_eval_prompts(folder)]
    else:
        raise HarnessError(f"unknown prompt source {source!r}; known: {', '.join(SOURCES)}")
    if limit > 0:
        rows = rows[:limit]
    sys_text = data.system_prompt(folder) if system else ""
    msgs = tuple(
        tuple(([{"role": "system", "content": sys_text}] if sys_text else []) + [{"role": "user", "content": q}])
        for _, q in rows
    )
    return Prompts(source, tuple(r[0] for r in rows), tuple(r[1] for r in rows), msgs)


def fixtures_dir(graph: Any = None, default: Path | None = None) -> Path:
    """The fixture store: the graph's own root when it has one, else ``default`` (the caller's
    ``--fixtures-dir`` or ``HARNESS_FIXTURES_DIR``), else the project's ``.fixtures``."""
    for attr in ("fixtures_dir", "root", "store_dir"):
        root = getattr(graph, attr, None)
        if root is not None and not callable(root):
            return Path(root)
    return Path(default) if default is not None else Path(__file__).resolve().parents[2] / ".fixtures"


def cache_path(root: Path, node: str, node_key: str, p: Prompts, settings: GenSettings) -> Path:
    blob = json.dumps({"v": CACHE_VERSION, "node": node_key, "source": p.source, "messages": p.messages,
                       "settings": settings.key()}, ensure_ascii=False, sort_keys=True)
    h = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in node)
    return Path(root) / "generations" / f"{safe}-{p.source}-{h}.json"


def _write_atomic(path: Path, obj: Any) -> None:
    write_json(path, obj)


def node_generations(graph: Any, node: str, p: Prompts, settings: GenSettings = GenSettings(),
                     device: str = "auto", cache_root: Optional[Path] = None,
                     progress: bool = True) -> list[Generation]:
    """Greedy (or, with ``settings.do_sample``, seeded sampled) generations of ``node`` on ``p``, from the cache
    when present."""
    from harness.inference.generate import generate

    root = Path(cache_root) if cache_root is not None else fixtures_dir(graph)
    path = cache_path(root, node, str(graph.key(node)), p, settings)
    if path.is_file():
        try:
            return [Generation.from_json(d) for d in json.loads(path.read_text(encoding="utf-8"))["generations"]]
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: regenerate and overwrite
    sampling = (dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed)
                if settings.do_sample else {})
    gens = generate(graph.path(node), [list(m) for m in p.messages], max_new_tokens=settings.max_new_tokens,
                    batch_size=settings.batch_size, device=device, progress=progress, **sampling,
                    desc=f"generate {node} ({p.source})")
    _write_atomic(path, {"node": node, "source": p.source, "ids": list(p.ids),
                         "generations": [g.to_json() for g in gens]})
    return gens


def graph_generations(graph: Any, sources: Sequence[str] = SOURCES, settings: GenSettings = GenSettings(),
                      nodes: Optional[Sequence[str]] = None, limit: int = 0, eval_limit: int = 0, device: str = "auto",
                      cache_root: Optional[Path] = None, progress: bool = True,
                      data_dir: Optional[Path] = None) -> dict[tuple[str, str], list[Generation]]:
    """``{(node, source): generations}`` for every node (or ``nodes``) and source; the prompts are read
    from ``data_dir`` (default: the packaged data; a plan's is ``plan.data_dir``).

    ``limit`` keeps the first persona prompts (the plan's data limit), ``eval_limit`` the first
    evaluation prompts; 0 keeps all.
    """
    from tqdm.auto import tqdm

    names = list(nodes) if nodes else list(graph.names)
    unknown = [n for n in names if n not in graph.names]
    if unknown:
        raise HarnessError(f"unknown node(s) {', '.join(unknown)}; known: {', '.join(graph.names)}")
    ps = [prompts(s, limit if s == "persona" else eval_limit, settings.system, data_dir) for s in sources]
    out: dict[tuple[str, str], list[Generation]] = {}
    jobs = [(n, p) for n in names for p in ps]
    for n, p in tqdm(jobs, desc="nodes", unit="node×source", disable=not progress, leave=False):
        out[(n, p.source)] = node_generations(graph, n, p, settings, device, cache_root, progress)
    return out
