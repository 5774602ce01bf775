"""VQAScore client against a real HTTP server on 127.0.0.1: scores, retries, cache, key handling."""

import math
import sqlite3

import numpy as np
import pandas as pd
import pytest
from vqa_server import FakeVQAServer

from t2istudy.scoring.scorers import get_scorer
from t2istudy.scoring.vqascore import QUESTION_TEMPLATE, VQAScore, VQAScoreError, yes_no_probs

KEY = "sk-test-secret-123"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def images(n, side=32):
    return [np.full((side, side, 3), 10 * i, np.uint8) for i in range(n)]


def fast(server, tmp_path, **kw):
    opts = dict(base_url=server.url, cache_path=str(tmp_path / "cache.sqlite"), timeout_s=0.5, backoff_s=0.01)
    return VQAScore(**{**opts, **kw})


def test_yes_no_variants_hand_computed():
    p_yes, p_no = yes_no_probs(
        [("Yes", -0.1), (" yes", -3.0), ("YES.", -5.0), ("No", -2.5), ("no,", -4.0), ("Maybe", -1)]
    )
    assert p_yes == pytest.approx(math.exp(-0.1) + math.exp(-3.0) + math.exp(-5.0))
    assert p_no == pytest.approx(math.exp(-2.5) + math.exp(-4.0))
    assert yes_no_probs([("Yesterday", -0.1), ("nope", -1.0)]) == (0.0, 0.0)


def test_scores_from_logprobs_and_request_shape(tmp_path):
    answers = {
        "mixed": [("Yes", -0.1), ("No", -2.5), (" yes", -3.0)],
        "only no": [("No", -0.05), ("no", -3.5)],
        "neither": [("The", -0.1), ("I", -2.0)],
        "shouty": [("YES.", -0.3)],
    }
    with FakeVQAServer(answers) as server:
        client = fast(server, tmp_path)
        out = client.score(images(4, 48), list(answers))
        raw = fast(server, tmp_path / "raw", normalize=False).score(images(1, 48), ["mixed"])
    p_yes, p_no = math.exp(-0.1) + math.exp(-3.0), math.exp(-2.5)
    assert out[0]["score"] == pytest.approx(p_yes / (p_yes + p_no))
    assert raw[0]["score"] == pytest.approx(p_yes)
    assert out[1]["score"] == 0.0 and out[1]["status"] == "ok"
    assert out[2]["score"] == 0.0 and out[2]["status"] == "no_yes_no"
    assert out[3]["score"] == 1.0
    assert client.stats.no_yes_no == 1
    # the request: exact question, PNG data URL of the image, logprobs asked for, key only as bearer header
    entry = next(e for e in server.log if e["prompt"] == "mixed")
    body = entry["body"]
    assert body["messages"][0]["content"][0]["text"] == QUESTION_TEMPLATE.format(prompt="mixed")
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
    assert body["model"] == "gpt-4o"
    assert entry["image_size"] == (48, 48)
    assert entry["authorization"] == f"Bearer {KEY}"
    # usage and cost: 4 answers x (100 prompt + 1 completion) tokens at gpt-4o prices
    assert client.stats.prompt_tokens == 400 and client.stats.completion_tokens == 4
    assert client.stats.est_cost_usd == pytest.approx((400 * 2.5 + 4 * 10.0) / 1e6)


def test_retries_on_429_500_timeout_and_malformed(tmp_path):
    plan = {
        "rate": ["429", "429", "ok"],
        "boom": ["500", "503", "ok"],
        "slow": ["slow", "ok"],
        "junk": ["malformed", "nologprobs", "ok"],
        "fine": ["ok"],
    }
    with FakeVQAServer(plan=plan) as server:
        client = fast(server, tmp_path, max_workers=3)
        out = client.score(images(5), list(plan))
        assert dict(server.attempts) == {"rate": 3, "boom": 3, "slow": 2, "junk": 3, "fine": 1}
    assert client.stats.retries == 2 + 2 + 1 + 2
    assert client.stats.http_requests == 12
    assert all(r["status"] == "ok" and not r["cached"] for r in out)
    assert len({round(r["score"], 12) for r in out}) == 1  # same default answer everywhere


def test_concurrency_is_bounded(tmp_path):
    prompts = [f"prompt {i}" for i in range(12)]
    with FakeVQAServer(plan=dict.fromkeys(prompts, ["slow", "ok"]), slow_s=0.2) as server:
        out = fast(server, tmp_path, max_workers=3, timeout_s=5.0).score(images(12), prompts)
    assert len(out) == 12 and server.max_in_flight == 3


def test_cache_hits_send_nothing_and_survive_a_new_client(tmp_path):
    prompts = ["a red circle", "two blue squares", "a red circle"]
    ims = images(3)
    ims[2] = ims[0]  # same image and prompt twice: one request
    with FakeVQAServer() as server:
        first = fast(server, tmp_path).score(ims, prompts)
        assert sum(server.attempts.values()) == 2
        again = fast(server, tmp_path)  # new client, same cache file
        second = again.score(ims, prompts)
        assert sum(server.attempts.values()) == 2  # the server saw no second request
        other_model = fast(server, tmp_path, model="gpt-4o-mini").score(ims[:1], prompts[:1])
        assert sum(server.attempts.values()) == 3  # model is part of the key
    assert [r["score"] for r in first] == [r["score"] for r in second]
    assert all(r["cached"] for r in second) and again.stats.cache_hits == 3
    assert other_model[0]["cached"] is False
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 3
    assert KEY.encode() not in (tmp_path / "cache.sqlite").read_bytes()


def test_failures_keep_the_rest_and_rerun_pays_only_for_them(tmp_path):
    with FakeVQAServer(plan={"broken": ["500"], "bad request": ["400"]}) as server:
        client = fast(server, tmp_path, max_attempts=3)
        with pytest.raises(VQAScoreError, match="2 of 4 items") as err:
            client.score(images(4), ["ok one", "broken", "ok two", "bad request"])
        assert "gave up after 3 attempts" in str(err.value) and "HTTP 400" in str(err.value)
        assert server.attempts["broken"] == 3 and server.attempts["bad request"] == 1
        server.plan = {}
        out = fast(server, tmp_path).score(images(4), ["ok one", "broken", "ok two", "bad request"])
        assert [r["cached"] for r in out] == [True, False, True, False]
        assert server.attempts["ok one"] == 1 and server.attempts["broken"] == 4


def test_missing_key_fails_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeVQAServer() as server:
        with pytest.raises(ValueError, match="OPENAI_API_KEY"):
            fast(server, tmp_path)
        with pytest.raises(ValueError, match="OPENAI_API_KEY"):
            get_scorer("vqascore", base_url=server.url, cache_path=str(tmp_path / "c.sqlite"))
        assert not server.log
    assert not (tmp_path / "cache.sqlite").exists()


def test_rejected_key_stops_the_run_without_leaking_it(tmp_path):
    with FakeVQAServer(plan={"p": ["401"]}) as server:
        with pytest.raises(ValueError, match="refused the key") as err:
            fast(server, tmp_path).score(images(1), ["p"])
    assert KEY not in str(err.value)


def test_scorer_interface_table(tmp_path):
    prompts = pd.DataFrame(
        {"id": ["00001", "00002"], "prompt": ["a dog", "two cats"], "skills": [("attribute",), ("counting",)]}
    )
    with FakeVQAServer({"a dog": [("Yes", 0.0)], "two cats": [("No", 0.0)]}) as server:
        scorer = get_scorer("vqascore", base_url=server.url, cache_path=str(tmp_path / "c.sqlite"))
        table = scorer.score(images(2), prompts)
        with pytest.raises(ValueError, match="2 prompts"):
            scorer.score(images(3), prompts)
    assert table["score"].tolist() == [1.0, 0.0]
    assert table["id"].tolist() == ["00001", "00002"]
    assert table.attrs["usage"]["answered"] == 2
    assert KEY not in repr(table.attrs) and KEY not in repr(scorer.client.options)


def test_unknown_option_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown VQAScore options \['temprature'\]"):
        VQAScore(temprature=0.5, cache_path=str(tmp_path / "c.sqlite"))
