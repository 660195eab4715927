"""An LLM judge of persona fidelity (seed table 25) through the ``openai`` client.

- **Prompt:** the study's rubric (``fixtures/judge/rubric.txt``: profile, conversation examples,
  the interaction, the evaluation steps, the score on its own line and repeated at the end),
  filled with this project's persona profile and examples; the reasoning language is a setting.
- **Endpoint:** ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` as the client reads them, so any
  OpenAI-compatible server works (vLLM, llama.cpp server, Ollama). A base URL without a key
  gets a placeholder key, since local servers ignore it.
- **Retries** are ours, not the client's (it is built with ``max_retries=0``): we count every
  attempt per item for the report, the backoff is a setting (tests replay retries at zero
  delay; the client's 0.5–8 s schedule is a module constant), and ``Retry-After`` is honoured.
  429, 408/409, 5xx, timeouts and connection errors are retried; other errors are reported.
- **Cache:** one JSON file per (model, prompt) under ``cache_dir``, keyed by the sha256 of both,
  written to a temporary file and renamed into place.
- **Scores:** the last line that is a lone integer; 1–10 is a score, anything else (no such
  line, out of range, the two score lines disagreeing) is flagged, never guessed.
- **Secrets:** the API key is never logged, cached or reported; error texts are scrubbed of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from harness.atomic import write_json
from harness.errors import HarnessError, LoadError

log = logging.getLogger("harness.judge")

JUDGE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "judge"
DEFAULT_MODEL = "gpt-4o-mini"
#: USD per million (input, output) tokens; unknown models report no cost unless prices are given.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
}
_LONE_INT = re.compile(r"^[*_`\s]*([+-]?[0-9]+)[*_`\s]*$")
#: Full-width digits and signs (a Japanese reply may write ８) map to ASCII; no other digit counts.
_FULLWIDTH = str.maketrans("０１２３４５６７８９＋－", "0123456789+-")


@dataclass(frozen=True)
class JudgeConfig:
    """Judge settings; ``cache_dir=None`` turns the cache off."""

    model: str = DEFAULT_MODEL
    language: str = "Japanese"
    concurrency: int = 8
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    timeout: float = 60.0
    temperature: float = 0.0
    max_tokens: int = 1024
    cache_dir: Optional[Path] = None
    price_in_per_mtok: Optional[float] = None
    price_out_per_mtok: Optional[float] = None
    #: An OpenAI-compatible ``/v1`` root (e.g. a :class:`~harness.inference.serve.JudgeServer`); overrides
    #: ``OPENAI_BASE_URL``. Local servers ignore the key, so none is needed with it.
    base_url: Optional[str] = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise HarnessError(f"judge concurrency must be at least 1, got {self.concurrency}")
        if self.max_attempts < 1:
            raise HarnessError(f"judge max_attempts must be at least 1, got {self.max_attempts}")

    def prices(self) -> Optional[tuple[float, float]]:
        if self.price_in_per_mtok is not None and self.price_out_per_mtok is not None:
            return self.price_in_per_mtok, self.price_out_per_mtok
        return PRICES_PER_MTOK.get(self.model)


@dataclass(frozen=True)
class JudgeResult:
    """The judge's verdict on one (question, answer)."""

    score: Optional[int]
    reason: str  # "" when scored; else why not ("unparsable: ...", "error: ...")
    reply: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.score is not None


@dataclass
class Usage:
    """Totals over a judging run."""

    items: int = 0
    scored: int = 0
    unparsable: int = 0
    errors: int = 0
    cache_hits: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- prompt


@dataclass(frozen=True)
class Rubric:
    """The rubric template and the persona data it is filled with."""

    template: str
    profile: str
    examples: str

    @classmethod
    def load(cls, folder: Optional[Path] = None) -> "Rubric":
        folder = Path(folder) if folder else JUDGE_DIR
        texts = {}
        for name in ("rubric.txt", "profile.txt", "examples.txt"):
            p = folder / name
            if not p.is_file():
                raise LoadError(f"{p}: judge fixture missing")
            texts[name] = p.read_text(encoding="utf-8").strip()
        tpl = string.Template(texts["rubric.txt"])
        missing = {"profile", "examples", "question", "answer", "language"} - set(tpl.get_identifiers())
        if missing:
            raise LoadError(f"{folder / 'rubric.txt'}: placeholders missing: {', '.join(sorted('$' + m for m in missing))}")
        return cls(texts["rubric.txt"], texts["profile.txt"], texts["examples.txt"])

    def prompt(self, question: str, answer: str, language: str = "Japanese") -> str:
        return string.Template(self.template).substitute(
            profile=self.profile, examples=self.examples, question=question, answer=answer, language=language
        )


# --------------------------------------------------------------------------- parsing


def parse_score(reply: str) -> tuple[Optional[int], str]:
    """``(score, "")`` from the last lone-integer line of ``reply``, or ``(None, why)``.

    Full-width digits count (８ is 8), no other script's digits do, and a line may carry markdown
    emphasis (``**8**``).
    The seed asks for the score twice; when the last two lone-integer lines disagree the reply
    is flagged rather than one of them guessed.
    """
    ints = []
    for line in (reply or "").translate(_FULLWIDTH).splitlines():
        m = _LONE_INT.match(line)
        if m and line.strip():
            ints.append(int(m.group(1)))
    if not ints:
        return None, "unparsable: no line holds a lone integer"
    last = ints[-1]
    if not 1 <= last <= 10:
        return None, f"unparsable: score {last} is outside 1-10"
    if len(ints) >= 2 and ints[-2] != last and 1 <= ints[-2] <= 10:
        return None, f"unparsable: score lines disagree ({ints[-2]} then {last})"
    return last, ""


# --------------------------------------------------------------------------- client


def make_client(config: JudgeConfig, http_client: Any = None) -> Any:
    """An ``openai.OpenAI`` client for the configured endpoint (``max_retries=0``: we retry)."""
    import openai

    # A served judge gets no key: the OpenAI key is not sent to a local server.
    key = None if config.base_url else os.environ.get("OPENAI_API_KEY")
    base = config.base_url or os.environ.get("OPENAI_BASE_URL")
    if not key and not base:
        raise HarnessError("no LLM judge endpoint: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (a compatible "
                           "server), or serve one (--judge-serve MODEL)")
    return openai.OpenAI(api_key=key or "no-key", base_url=base, max_retries=0, timeout=config.timeout,
                         http_client=http_client)


def _scrub(text: str) -> str:
    key = os.environ.get("OPENAI_API_KEY")
    return text.replace(key, "***") if key else text


def _retry_after(exc: Any) -> Optional[float]:
    resp = getattr(exc, "response", None)
    if resp is None:
        return None
    for header, div in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            v = float(resp.headers.get(header, ""))
            if 0 <= v / div <= 120:
                return v / div
        except ValueError:
            pass
    return None


def _retriable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def cache_key(model: str, prompt: str) -> str:
    return hashlib.sha256(json.dumps([model, prompt], ensure_ascii=False).encode("utf-8")).hexdigest()


def _atomic_json(path: Path, obj: Any) -> None:
    write_json(path, obj)


class Judge:
    """Scores (question, answer) pairs with the rubric, concurrently, with retries and a cache."""

    def __init__(self, config: JudgeConfig = JudgeConfig(), rubric: Optional[Rubric] = None,
                 client: Any = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.rubric = rubric or Rubric.load()
        self.client = client if client is not None else make_client(config)
        self._sleep = sleep
        self._lock = threading.Lock()
        self.usage = Usage()

    def _cache_path(self, prompt: str) -> Optional[Path]:
        if self.config.cache_dir is None:
            return None
        return Path(self.config.cache_dir) / f"{cache_key(self.config.model, prompt)}.json"

    def _request(self, prompt: str) -> tuple[str, int, int, int]:
        """(reply, prompt tokens, completion tokens, attempts); raises the last error."""
        cfg = self.config
        for attempt in range(1, cfg.max_attempts + 1):
            try:
                with self._lock:
                    self.usage.requests += 1
                resp = self.client.chat.completions.create(
                    model=cfg.model, messages=[{"role": "user", "content": prompt}],
                    temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                )
                usage = resp.usage
                return (resp.choices[0].message.content or "", getattr(usage, "prompt_tokens", 0) or 0,
                        getattr(usage, "completion_tokens", 0) or 0, attempt)
            except Exception as exc:  # openai errors; anything else is re-raised below
                if not _retriable(exc) or attempt == cfg.max_attempts:
                    raise _Failed(exc, attempt) from None
                wait = _retry_after(exc)
                if wait is None:
                    wait = min(cfg.backoff_base * 2 ** (attempt - 1), cfg.backoff_max) * (1 - 0.25 * random.random())
                log.info("judge: %s on attempt %d; retrying in %.2fs", type(exc).__name__, attempt, wait)
                self._sleep(wait)
        raise AssertionError("unreachable")

    def score_prompt(self, prompt: str) -> JudgeResult:
        """Judge one filled-in prompt (through the cache)."""
        path = self._cache_path(prompt)
        if path is not None and path.is_file():
            try:
                c = json.loads(path.read_text(encoding="utf-8"))
                score, reason = parse_score(c["reply"])
                return JudgeResult(score, reason, c["reply"], c["prompt_tokens"], c["completion_tokens"], True, 0)
            except (ValueError, KeyError):
                log.warning("judge: unreadable cache entry %s; asking again", path.name)
        try:
            reply, pt, ct, attempts = self._request(prompt)
        except _Failed as f:
            return JudgeResult(None, "error: " + _scrub(f"{type(f.exc).__name__}: {f.exc}")[:300], "", attempts=f.attempts)
        if path is not None:
            _atomic_json(path, {"model": self.config.model, "reply": reply, "prompt_tokens": pt, "completion_tokens": ct})
        score, reason = parse_score(reply)
        return JudgeResult(score, reason, reply, pt, ct, False, attempts)

    def score(self, pairs: Sequence[tuple[str, str]], progress: bool = True) -> list[JudgeResult]:
        """Judge each (question, answer); identical prompts are asked once. Input order is kept."""
        from tqdm.auto import tqdm

        prompts = [self.rubric.prompt(q, a, self.config.language) for q, a in pairs]
        unique = list(dict.fromkeys(prompts))
        done: dict[str, JudgeResult] = {}
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool, \
                tqdm(total=len(unique), desc=f"judge {self.config.model}", unit="item", disable=not progress,
                     leave=False) as bar:
            for p, r in zip(unique, pool.map(self._tracked, unique, [bar] * len(unique))):
                done[p] = r
        results = [done[p] for p in prompts]
        self._account(results, list(done.values()))
        return results

    def _tracked(self, prompt: str, bar: Any) -> JudgeResult:
        r = self.score_prompt(prompt)
        bar.update(1)
        return r

    def _account(self, results: Sequence[JudgeResult], asked: Sequence[JudgeResult]) -> None:
        """Item counts over ``results``; cache hits and tokens over the distinct prompts ``asked``."""
        u = self.usage
        for r in results:
            u.items += 1
            u.scored += r.ok
            u.unparsable += r.reason.startswith("unparsable")
            u.errors += r.reason.startswith("error")
        for r in asked:
            u.cache_hits += r.cached
            if not r.cached:
                u.prompt_tokens += r.prompt_tokens
                u.completion_tokens += r.completion_tokens
        prices = self.config.prices()
        if prices is not None:
            u.cost_usd = (u.prompt_tokens * prices[0] + u.completion_tokens * prices[1]) / 1e6


class _Failed(Exception):
    def __init__(self, exc: BaseException, attempts: int) -> None:
        super().__init__(str(exc))
        self.exc, self.attempts = exc, attempts


def mean_score(results: Sequence[JudgeResult]) -> Optional[float]:
    """Mean over the scored results (flagged ones are left out); None when none scored."""
    scores = [r.score for r in results if r.score is not None]
    return sum(scores) / len(scores) if scores else None


def endpoint_configured() -> bool:
    """True when an endpoint is set through the environment."""
    return bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))


def table25(results: dict[tuple[str, str], Sequence[JudgeResult]], model: str, usage: Usage) -> Any:
    """Seed table 25: mean persona score per node (rows) and prompt source (columns)."""
    from harness.evaluate.similarity import Table

    nodes = list(dict.fromkeys(n for n, _ in results))
    sources = list(dict.fromkeys(s for _, s in results))
    values = [[mean_score(results[(n, s)]) if (n, s) in results else None for s in sources] for n in nodes]
    flagged = {f"{n}/{s}": len(r) - sum(x.ok for x in r) for (n, s), r in results.items() if not all(x.ok for x in r)}
    cost = "unknown (no price for this model)" if usage.cost_usd is None else f"${usage.cost_usd:.4f}"
    notes = [f"judge model {model}; mean of scored replies (1-10)",
             f"flagged (unparsable or failed) replies, left out of the means: {flagged or 'none'}",
             f"requests {usage.requests}, cache hits {usage.cache_hits}, tokens in {usage.prompt_tokens} "
             f"/ out {usage.completion_tokens}, cost {cost}"]
    return Table("table25", "Table 25: LLM-judge persona score", nodes, [f"score ({s})" for s in sources], values, notes)
