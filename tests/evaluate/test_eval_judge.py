"""The LLM judge through the real openai client: replayed error replies (httpx2 MockTransport) for the
429/5xx/timeouts a healthy server does not produce, retries, parsing, secrets, 8 concurrent requests
against a loopback server answering per question, and the CLI against transformers serve.
Scoring, usage, cost and the cache against a real server: tests/inference/test_inference_serve.py."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import openai
import pytest

from harness.errors import HarnessError
from harness.evaluate.judge import Judge, JudgeConfig, Rubric, mean_score, parse_score, table25

REC = Path(__file__).parent / "recorded"
SECRET = "sk-test-SECRET-0123456789abcdef"


def recorded(name: str) -> httpx2.Response:
    d = json.loads((REC / name).read_text(encoding="utf-8"))
    return httpx2.Response(d["status"], json=d["body"], headers=d.get("headers", {}))


class Replay:
    """A transport handler answering requests from a script of recorded files (or exceptions)."""

    def __init__(self, *script: str | type[Exception]) -> None:
        self.script = list(script)
        self.requests: list[httpx2.Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        with self.lock:
            self.requests.append(request)
            step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, type):
            raise step("replayed timeout", request=request)
        return recorded(step)


def make_judge(replay: Replay, tmp_path: Path | None = None, **cfg) -> tuple[Judge, list[float]]:
    sleeps: list[float] = []
    client = openai.OpenAI(api_key=SECRET, base_url="https://judge.invalid/v1", max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(replay)))
    cfg.setdefault("backoff_base", 0.01)
    config = JudgeConfig(cache_dir=(tmp_path / "cache") if tmp_path else None, **cfg)
    return Judge(config, client=client, sleep=sleeps.append), sleeps


PAIR = ("週末は何をしていますか？", "ごきげんよう、わたくしは庭で紅茶をいただいておりますわ。")


def test_rubric_prompt_structure_and_language():
    prompt = Rubric.load().prompt(*PAIR)
    # The rubric's structure: profile, examples, the interaction, the steps, the language.
    for part in ("[Profile]", "[Examples of Conversation]", "[Interactions]", PAIR[0], PAIR[1],
                 "Evaluation Steps", "repeat just the selected score", "in Japanese"):
        assert part in prompt
    assert prompt.index("[Profile]") < prompt.index("[Examples of Conversation]") < prompt.index("[Interactions]")
    assert "in English" in Rubric.load().prompt(*PAIR, language="English")


@pytest.mark.parametrize("first", ["rate_limit_429.json", "server_error_500.json", "overloaded_503.json",
                                   httpx2.ReadTimeout])
def test_retried_then_scored(first):
    replay = Replay(first, "score_9.json")
    judge, sleeps = make_judge(replay)
    [r] = judge.score([PAIR], progress=False)
    assert r.score == 9 and r.attempts == 2 and len(replay.requests) == 2
    assert len(sleeps) == 1


def test_backoff_doubles_and_retry_after_is_honoured():
    judge, sleeps = make_judge(Replay("server_error_500.json", "server_error_500.json", "server_error_500.json",
                                      "score_9.json"), backoff_base=1.0)
    assert judge.score([PAIR], progress=False)[0].score == 9
    assert [0.75 <= s / b <= 1.0 for s, b in zip(sleeps, (1, 2, 4))] == [True] * 3
    judge, sleeps = make_judge(Replay("rate_limit_429.json", "score_9.json"), backoff_base=5.0)
    judge.score([PAIR], progress=False)
    assert sleeps == [0.0]  # the recorded 429 says retry-after: 0


def test_gives_up_after_max_attempts_and_flags():
    replay = Replay("overloaded_503.json")
    judge, sleeps = make_judge(replay, max_attempts=3)
    [r] = judge.score([PAIR], progress=False)
    assert r.score is None and r.reason.startswith("error: InternalServerError") and r.attempts == 3
    assert len(replay.requests) == 3 and judge.usage.errors == 1


def test_client_errors_are_not_retried():
    replay = Replay("bad_request_400.json", "score_9.json")
    judge, sleeps = make_judge(replay)
    [r] = judge.score([PAIR], progress=False)
    assert r.score is None and "BadRequestError" in r.reason and len(replay.requests) == 1 and not sleeps


@pytest.mark.parametrize("reply,score", [
    ("理由\n8\n8", 8), ("10", 10), ("1\n", 1), ("  7  \n\n", 7), ("**6**\n6", 6),
    ("reason\n5\nthe end", 5), ("score: 8\n8", 8), ("", None), ("0\n0", None), ("8/10", None),
    ("4\n7", None), ("8.5\n8.5", None), ("理由\n**８**\n８", 8), ("11\n11", None), ("考えました。", None),
])
def test_parse_score_table(reply, score):
    assert parse_score(reply)[0] == score


def test_failed_requests_are_not_cached(tmp_path):
    replay = Replay("bad_request_400.json")
    judge, _ = make_judge(replay, tmp_path)
    judge.score([PAIR], progress=False)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_api_key_never_logged_or_reported(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    def echo_key(request: httpx2.Request) -> httpx2.Response:
        # A hostile server error that echoes the Authorization header back.
        return httpx2.Response(401, json={"error": {"message": f"Incorrect API key: {request.headers['authorization']}",
                                                    "type": "invalid_request_error", "code": "invalid_api_key"}})

    caplog.set_level(logging.DEBUG)
    client = openai.OpenAI(api_key=SECRET, base_url="https://judge.invalid/v1", max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(echo_key)))
    judge = Judge(JudgeConfig(cache_dir=tmp_path / "c"), client=client)
    res = judge.score([PAIR], progress=False)
    table = table25({("base", "eval"): res}, "gpt-4o-mini", judge.usage)
    assert res[0].score is None and "***" in res[0].reason
    blob = caplog.text + res[0].reason + table.markdown() + json.dumps(judge.usage.to_json())
    assert SECRET not in blob


def test_no_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(HarnessError, match="OPENAI_API_KEY"):
        Judge(JudgeConfig())


def test_rubric_missing_placeholder_names_file(tmp_path):
    for name, text in (("rubric.txt", "$profile $examples $question $answer"), ("profile.txt", "p"),
                       ("examples.txt", "e")):
        (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(HarnessError, match=r"rubric.txt.*\$language"):
        Rubric.load(tmp_path)


# --------------------------------------------------------------------------- loopback server


def _expected(question: str) -> int:
    return int(hashlib.sha256(question.encode()).hexdigest(), 16) % 10 + 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, limit: int, delay: float = 0.25) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.limit, self.delay, self.count, self.inflight, self.peak = limit, delay, 0, 0, 0
        self.lock = threading.Lock()
        self.seen: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *a) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        s = self.server
        with s.lock:
            s.count += 1
            over = s.count > s.limit
            s.inflight += 1
            s.peak = max(s.peak, s.inflight)
        try:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            prompt = body["messages"][0]["content"]
            q = prompt.split("[user]\n", 1)[1].split("\n[assistant]", 1)[0]
            time.sleep(s.delay)  # long enough for 8 requests to overlap
            status, payload = (503, {"error": {"message": "request budget spent"}}) if over else (200, {
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": f"理由です。\n{_expected(q)}\n{_expected(q)}"}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})
            with s.lock:
                s.seen.append(q)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            with s.lock:
                s.inflight -= 1


@pytest.fixture
def loopback(monkeypatch):
    server = _Server(limit=40)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    yield server
    server.shutdown()
    server.server_close()


def test_eight_concurrent_requests_no_lost_or_duplicated_score(loopback):
    questions = [f"質問その{i}：今日は何をしましたか？" for i in range(24)]
    judge = Judge(JudgeConfig(concurrency=8, max_attempts=1))
    res = judge.score([(q, "ごきげんよう、散歩をいたしましたわ。") for q in questions], progress=False)
    assert [r.score for r in res] == [_expected(q) for q in questions]
    assert loopback.peak == 8
    assert sorted(loopback.seen) == sorted(questions)  # each asked exactly once
    assert judge.usage.requests == 24 and judge.usage.scored == 24


def test_judge_cli_end_to_end(judge_server, judge_models, tmp_path, monkeypatch):
    """``python -m harness judge`` against transformers serve on loopback (the judge that answers 8)."""
    from harness.__main__ import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", judge_server.base_url)
    gens = tmp_path / "generations.jsonl"
    rows = [{"node": n, "source": "eval", "id": f"e{i}", "question": f"問{i}", "text": "はい"}
            for n in ("base", "sft_d1") for i in range(3)]
    gens.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["judge", str(gens), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
               "--model", str(judge_models["score"]), "--max-tokens", "4"])
    assert rc == 0
    table = json.loads((out / "table25.json").read_text(encoding="utf-8"))
    assert table["values"] == [[8.0], [8.0]]
    assert (out / "table25.png").stat().st_size > 1000
    assert len((out / "judgements.jsonl").read_text(encoding="utf-8").splitlines()) == 6
    usage = json.loads((out / "usage.json").read_text(encoding="utf-8"))
    assert usage["requests"] == 3 and usage["prompt_tokens"] > 0  # the nodes' identical pairs were asked once


def test_judge_cli_bad_input_names_line(tmp_path):
    from harness.__main__ import main

    gens = tmp_path / "g.jsonl"
    gens.write_text('{"node": "base", "source": "eval", "question": "q", "text": "t"}\n{"node": 1}\n', encoding="utf-8")
    assert main(["judge", str(gens)]) == 2


@pytest.mark.judge
@pytest.mark.skipif(os.environ.get("HARNESS_JUDGE_LIVE") != "1",
                    reason="live judge: set HARNESS_JUDGE_LIVE=1 with OPENAI_API_KEY or OPENAI_BASE_URL (costs money)")
def test_live_endpoint_ranks_the_persona(tmp_path):
    """The real-endpoint path: an ojousama reply should score at least as high as a neutral one."""
    judge = Judge(JudgeConfig(model=os.environ.get("HARNESS_JUDGE_MODEL", "gpt-4o-mini"), cache_dir=tmp_path))
    q = "週末は何をしていますか？"
    styled, plain = judge.score([(q, PAIR[1]), (q, "家で動画を見てだらだらしてる。")], progress=False)
    assert styled.ok and plain.ok, (styled.reason, plain.reason)
    assert styled.score >= plain.score


from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=200), st.integers(1, 10))
def test_parse_score_takes_the_repeated_final_score(prefix, k):
    assert parse_score(f"{prefix}\n{k}\n{k}") == (k, "")


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="0123456789０１２３４５６７８９"), max_size=200))
@example("②\n²\n٣")  # circled, superscript and Arabic-Indic digits are not scores
def test_parse_score_never_guesses_without_digits(reply):
    assert parse_score(reply)[0] is None
