"""The judge against a real OpenAI-compatible server: ``transformers serve`` on loopback, real HTTP,
the real ``openai`` client, and judge models whose replies are built into their weights
(``conftest.build_bigram_model``: one always answers ``8``, one babbles ``xxxx``)."""

from __future__ import annotations

import json

import httpx2
import pytest

from harness.errors import HarnessError, LoadError
from harness.evaluate.judge import Judge, JudgeConfig, Rubric, mean_score, table25
from harness.inference.serve import JudgeServer, resolve_model
from harness.findings.verdict import FAIL

PAIRS = [("週末は何をしていますか？", "ごきげんよう、わたくしは庭で紅茶をいただいておりますわ。"),
         ("好きな食べ物は？", "マカロンですわ。"),
         ("週末は何をしていますか？", "ごきげんよう、わたくしは庭で紅茶をいただいておりますわ。")]


def served(server: JudgeServer, folder, tmp_path=None, **cfg) -> Judge:
    cfg.setdefault("max_tokens", 4)
    return Judge(JudgeConfig(model=str(folder), base_url=server.base_url, max_attempts=1,
                             cache_dir=(tmp_path / "cache") if tmp_path else None, **cfg))


def test_health_and_models_endpoints(judge_server, judge_models):
    assert httpx2.get(judge_server.base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
    assert judge_server.running


def test_served_score_usage_cost_and_cache(judge_server, judge_models, tmp_path):
    from transformers import AutoTokenizer

    judge = served(judge_server, judge_models["score"], tmp_path, price_in_per_mtok=1.0, price_out_per_mtok=2.0)
    res = judge.score(PAIRS, progress=False)
    assert [(r.score, r.reason, r.cached) for r in res] == [(8, "", False)] * 3
    assert res[0].reply.splitlines()[:2] == ["8", "8"]
    u = judge.usage
    # Two distinct prompts, two real requests; the server counts the prompt tokens as its template renders them.
    tok = AutoTokenizer.from_pretrained(judge_models["score"])
    want = sum(len(tok.apply_chat_template([{"role": "user", "content": Rubric.load().prompt(q, a)}],
                                           add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
               for q, a in dict.fromkeys(PAIRS))
    assert (u.items, u.scored, u.requests, u.prompt_tokens, u.completion_tokens) == (3, 3, 2, want, 8)
    assert u.cost_usd == pytest.approx((want * 1.0 + 8 * 2.0) / 1e6)
    again = served(judge_server, judge_models["score"], tmp_path)
    assert [r.score for r in again.score(PAIRS, progress=False)] == [8, 8, 8]
    assert (again.usage.requests, again.usage.cache_hits, again.usage.prompt_tokens) == (0, 2, 0)
    cached = json.loads(next((tmp_path / "cache").iterdir()).read_text(encoding="utf-8"))
    assert cached["model"] == str(judge_models["score"]) and cached["prompt_tokens"] > 0


def test_cache_is_keyed_by_model_and_a_corrupt_entry_is_asked_again(judge_server, judge_models, tmp_path):
    served(judge_server, judge_models["score"], tmp_path).score(PAIRS[:1], progress=False)
    other = served(judge_server, judge_models["babble"], tmp_path)
    [r] = other.score(PAIRS[:1], progress=False)
    assert (r.reply, other.usage.requests, other.usage.cache_hits) == ("xxxx", 1, 0)
    files = sorted((tmp_path / "cache").iterdir())
    assert len(files) == 2 and not list((tmp_path / "cache").glob("*.tmp*"))
    for f in files:
        f.write_text("{not json", encoding="utf-8")
    again = served(judge_server, judge_models["score"], tmp_path)
    assert again.score(PAIRS[:1], progress=False)[0].score == 8 and again.usage.requests == 1


def test_served_unparsable_replies_are_counted(judge_server, judge_models):
    judge = served(judge_server, judge_models["babble"])
    res = judge.score(PAIRS, progress=False)
    assert all(r.score is None and r.reason.startswith("unparsable") and r.reply == "xxxx" for r in res)
    assert (judge.usage.unparsable, judge.usage.scored, judge.usage.requests) == (3, 0, 2)
    assert mean_score(res) is None
    table = table25({("base", "eval"): res}, str(judge_models["babble"]), judge.usage)
    assert table.values == [[None]] and "base/eval': 3" in table.notes[1] and "cost unknown" in table.notes[2]


def test_c8_negative_control_constant_judge_gives_zero_margin(judge_server, judge_models):
    """The C8 spec's negative control: a judge blind to the persona scores styled and plain alike."""
    from pathlib import Path

    from harness.findings import evaluate, load_spec

    c8 = load_spec(Path(__file__).resolve().parents[2] / "fixtures" / "claims" / "c8_judge.toml")
    judge = served(judge_server, judge_models["score"])
    qs = [q for q, _ in PAIRS[:2]]
    means = {"base": mean_score(judge.score([(q, "普通の返事です。") for q in qs], progress=False)),
             "sft_d1": mean_score(judge.score([(q, "ごきげんようですわ。") for q in qs], progress=False))}
    [pair] = [p for p in c8.pairs if p["node"] == "sft_d1"]
    rows = evaluate(c8, {"persona": means, "eval": means}, pair, plan="test")
    assert [r.measured for r in rows] == [0.0, 0.0] and {r.verdict for r in rows} == {FAIL}


def test_pinned_server_rejects_another_model(judge_models, tmp_path):
    """``--judge-serve`` pins the server to one model; a request for another is a 400, reported, not retried."""
    with JudgeServer(str(judge_models["score"]), log_path=tmp_path / "log") as server:
        assert server.model_id == str(judge_models["score"])
        ok = Judge(JudgeConfig(model=server.model_id, base_url=server.base_url, max_tokens=4))
        assert ok.score(PAIRS[:1], progress=False)[0].score == 8
        other = Judge(JudgeConfig(model=str(judge_models["babble"]), base_url=server.base_url, max_tokens=4))
        [r] = other.score(PAIRS[:1], progress=False)
        assert r.score is None and "BadRequestError" in r.reason and r.attempts == 1
        url = server.base_url
    with pytest.raises(httpx2.HTTPError):  # torn down: nothing listens any more
        httpx2.get(url.removesuffix("/v1") + "/health", timeout=2.0)


def test_server_that_cannot_load_names_the_model_and_log(tmp_path):
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(HarnessError, match=r"broken.*exited with code .*log"):
        JudgeServer(str(bad), log_path=tmp_path / "serve.log", startup_timeout=120).start()


def test_resolve_model_names_the_culprit(tmp_path, judge_models):
    class G:
        names = ("base", "sft_d1")

        def path(self, n):
            return judge_models["score"]

    assert resolve_model("base", G()) == (str(judge_models["score"].resolve()), "plan node base")
    assert resolve_model(str(judge_models["babble"]))[1] == judge_models["babble"].name
    with pytest.raises(HarnessError, match=r"'nope'.*plan nodes: base, sft_d1"):
        resolve_model("nope", G())
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(LoadError, match="no such GGUF file"):
        resolve_model(str(tmp_path / "missing.gguf"), cache_root=tmp_path)


def test_a_bare_gguf_name_is_looked_up_in_the_gguf_dir_given(tmp_path):
    """The name is joined to ``gguf_dir`` (the run configuration's HARNESS_GGUF_DIR at the edge) and read by
    the models layer's one reader: a file cut short is named, whatever its name."""
    from gguf_helpers import cut_gguf

    (tmp_path / "ggufs").mkdir()
    _, cut = cut_gguf(tmp_path / "ggufs", "judge.gguf")
    with pytest.raises(LoadError, match=rf"^{cut}: incomplete file: 4096 bytes"):
        resolve_model("judge.gguf", gguf_dir=tmp_path / "ggufs", cache_root=tmp_path / "fx")
    blob = tmp_path / "ggufs" / "9c1e"  # a hub-cache blob: a GGUF by its first bytes, not by its name
    blob.write_bytes(cut.read_bytes())
    with pytest.raises(LoadError, match=rf"^{blob}: incomplete file"):
        resolve_model(str(blob), cache_root=tmp_path / "fx")
