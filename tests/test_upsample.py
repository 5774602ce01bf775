"""Prompt upsampling: both backends (determinism, cache, length cap), the shared retry rules, the hooks,
and the fact checker on hand-written rewrites."""

import json
import sqlite3

import numpy as np
import pytest
import torch
from vqa_server import FakeVQAServer

from t2istudy import openai_client
from t2istudy.diffusion import sample as sample_module
from t2istudy.diffusion.checkpoint import Denoiser
from t2istudy.diffusion.model import TextConditioner, build_unet, get_preset
from t2istudy.diffusion.options import TrainOptions, resolve_options
from t2istudy.scoring import vqascore
from t2istudy.text import upsample as upsample_module
from t2istudy.text.upsample import (
    STYLES,
    LocalRewriter,
    UpsampleOptions,
    Upsampler,
    clean_rewrite,
    parse_upsampling,
    upsample,
)
from t2istudy.world.facts import check_original_prompts, check_rewrite, summarize_facts
from t2istudy.world.shapes_benchmark import make_benchmark

KEY = "sk-test-secret-456"
PROMPTS = ["two red circles", "a blue square above a green triangle"]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def remote(server, tmp_path, name="cache.sqlite", **kw):
    opts = dict(
        backend="openai",
        model="gemma-2-9b-it",
        base_url=server.url,
        cache_path=str(tmp_path / name),
        timeout_s=0.5,
        backoff_s=0.01,
    )
    return Upsampler(UpsampleOptions(**{**opts, **kw}))


# ---- local backend (the built-in SmolLM2-135M-Instruct) -----------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(1)
    return LocalRewriter(UpsampleOptions(model="smollm2-135m", max_new_tokens=12))


def test_local_is_deterministic_capped_and_cached(smollm2, tmp_path):
    opts = UpsampleOptions(model="smollm2-135m", max_new_tokens=12, cache_path=str(tmp_path / "a.sqlite"))
    first = Upsampler(opts, rewriter=smollm2)
    before = smollm2.generations
    out = first.records(PROMPTS + PROMPTS[:1])  # a repeated prompt is generated once
    assert smollm2.generations - before == 2 and first.stats.generated == 2
    # deterministic: a fresh cache regenerates the same text
    fresh = Upsampler(opts, rewriter=smollm2, cache_path=str(tmp_path / "b.sqlite")).records(PROMPTS)
    assert [r["rewritten"] for r in fresh] == [r["rewritten"] for r in out[:2]]
    assert all(r["rewritten"] and r["rewritten"] != r["original"] for r in fresh)
    # the rerun costs zero generations, even with a new Upsampler on the same file
    again = Upsampler(opts, rewriter=smollm2)
    before = smollm2.generations
    assert [r["rewritten"] for r in again.records(PROMPTS)] == [r["rewritten"] for r in out[:2]]
    assert smollm2.generations == before and again.stats.generated == 0 and again.stats.cache_hits == 2
    # the length cap and the stored template
    with sqlite3.connect(tmp_path / "a.sqlite") as db:
        rows = db.execute("SELECT new_tokens, template, model FROM rewrites").fetchall()
    assert len(rows) == 2 and all(1 <= n <= 12 for n, _, _ in rows)
    assert json.loads(rows[0][1]) == {"system": STYLES["descriptive"], "user": "Prompt: {prompt}"}
    assert out[0]["template"] == rows[0][1] and out[0]["max_new_tokens"] == 12


def test_local_rewriter_loads_only_on_a_cache_miss(tmp_path, monkeypatch):
    def refuse(options):
        raise AssertionError("the model was loaded although every prompt is cached")

    cache = tmp_path / "c.sqlite"
    up = Upsampler(cache_path=str(cache))
    for p in PROMPTS:
        up.cache.put(up._key(p), f"rewritten {p}", "raw", 3)
    monkeypatch.setattr(upsample_module, "LocalRewriter", refuse)
    assert upsample(PROMPTS, cache_path=str(cache)) == [f"rewritten {p}" for p in PROMPTS]


# ---- openai backend against a local server -------------------------------------------------------------------


def test_openai_is_deterministic_capped_and_cached(tmp_path):
    long = "a very long and detailed description of two red circles " * 5
    with FakeVQAServer(rewrites={"two red circles": long}) as server:
        up = remote(server, tmp_path, max_new_tokens=10)
        out = up.records(PROMPTS)
        assert sum(server.attempts.values()) == 2
        body = server.log[0]["body"]
        assert body["temperature"] == 0 and body["max_tokens"] == 10
        assert body["messages"][0] == {"role": "system", "content": STYLES["descriptive"]}
        assert server.log[0]["authorization"] == f"Bearer {KEY}"
        assert out[0]["rewritten"] == " ".join(long.split()[:10])  # the cap reached the server
        assert out[1]["rewritten"] == "a detailed picture of a blue square above a green"  # 10 words
        # a new Upsampler on the same cache: zero requests; another style or cap is another key
        again = remote(server, tmp_path, max_new_tokens=10)
        assert [r["rewritten"] for r in again.records(PROMPTS)] == [r["rewritten"] for r in out]
        assert sum(server.attempts.values()) == 2 and again.stats.cache_hits == 2
        remote(server, tmp_path, max_new_tokens=10, style="caption").records(PROMPTS[:1])
        assert sum(server.attempts.values()) == 3
        fresh = remote(server, tmp_path, name="fresh.sqlite", max_new_tokens=10).records(PROMPTS)
    assert [r["rewritten"] for r in fresh] == [r["rewritten"] for r in out]
    assert KEY.encode() not in (tmp_path / "cache.sqlite").read_bytes()


def test_openai_retries_follow_the_rules_shared_with_vqascore(tmp_path):
    assert upsample_module.with_retries is vqascore.with_retries is openai_client.with_retries
    assert upsample_module.make_client is vqascore.make_client
    plan = {
        "rate": ["429", "429", "ok"],
        "boom": ["500", "503", "ok"],
        "junk": ["malformed", "nocontent", "ok"],
    }
    with FakeVQAServer(plan=plan) as server:
        up = remote(server, tmp_path, max_workers=3)
        out = upsample(
            list(plan),
            backend="openai",
            model="m",
            base_url=server.url,
            timeout_s=0.5,
            backoff_s=0.01,
            cache_path=str(tmp_path / "r.sqlite"),
        )
        assert dict(server.attempts) == {"rate": 3, "boom": 3, "junk": 3}
        assert out == [f"a detailed picture of {p}" for p in plan]
        server.plan = {"broken": ["500"], "bad": ["400"]}
        with pytest.raises(RuntimeError, match="2 of 3 prompts") as err:
            remote(server, tmp_path, max_attempts=2).records(["fine", "broken", "bad"])
        assert "gave up after 2 attempts" in str(err.value) and "HTTP 400" in str(err.value)
        assert up.cache.get(up._key("fine")) is not None  # the others are cached
        server.plan = {"p": ["401"]}
        with pytest.raises(ValueError, match="refused the key") as err:
            remote(server, tmp_path).records(["p"])
    assert KEY not in str(err.value)


def test_openai_missing_key_fails_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeVQAServer() as server:
        with pytest.raises(
            ValueError, match="Prompt upsampling needs an API key in the environment variable"
        ):
            remote(server, tmp_path)
        assert not server.log
    assert not (tmp_path / "cache.sqlite").exists()


# ---- options, cleaning -------------------------------------------------------------------------------------


def test_specs_parse_and_errors_name_the_fix():
    assert parse_upsampling(None) is None and parse_upsampling("none") is None
    spec = parse_upsampling("local:smollm2-135m:caption")
    assert (spec.backend, spec.model, spec.style) == ("local", "smollm2-135m", "caption")
    spec = parse_upsampling("openai:gemma2:9b")  # a model name with a colon, no style
    assert (spec.model, spec.style) == ("gemma2:9b", "descriptive")
    assert (
        parse_upsampling('{"backend": "openai", "model": "m", "base_url": "http://x/v1"}').base_url
        == "http://x/v1"
    )
    with pytest.raises(ValueError, match="choose one of local, openai"):
        parse_upsampling("remote:m")
    with pytest.raises(ValueError, match="style 'fancy'; choose one of descriptive, caption, literal"):
        parse_upsampling({"model": "m", "style": "fancy"})
    with pytest.raises(ValueError, match="names no model"):
        parse_upsampling("local:")
    with pytest.raises(ValueError, match=r"Unknown upsampling options \['temperature'\]"):
        parse_upsampling({"model": "m", "temperature": 1.0})
    assert resolve_options(TrainOptions(caption_upsampling="none")).caption_upsampling is None
    with pytest.raises(ValueError, match="choose one of local, openai"):
        resolve_options(TrainOptions(caption_upsampling="gpu:m"))


def test_clean_rewrite():
    assert (
        clean_rewrite('Sure! Here is the rewritten prompt: "Two red circles."\n\nHope it helps')
        == "Two red circles."
    )
    assert clean_rewrite("  a red\n circle ") == "a red circle"
    assert clean_rewrite("") == ""


# ---- hooks ----------------------------------------------------------------------------------------------


class RecordingText:
    def __init__(self):
        self.seen = []

    def embed(self, captions):
        self.seen += list(captions)
        n = torch.tensor([float(len(c.split())) for c in captions])
        return n.view(-1, 1, 1).expand(-1, 1, 4).clone(), torch.ones(len(captions), 1, dtype=torch.bool)


def test_sample_run_embeds_rewrites_and_keeps_specs(tmp_path, monkeypatch):
    preset = get_preset("cpu-tiny")
    torch.manual_seed(0)
    model = Denoiser(build_unet(preset), TextConditioner(4, preset.cross_attention_dim))
    null = (torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool))
    monkeypatch.setattr(
        sample_module,
        "load_denoiser",
        lambda run, w: (model, resolve_options(TrainOptions(preset="cpu-tiny")), null),
    )
    bench = make_benchmark(n_per_skill=1)
    before = json.dumps([list(bench["prompt"]), list(bench["spec"])])
    text = RecordingText()
    with FakeVQAServer() as server:
        spec = {
            "backend": "openai",
            "model": "m",
            "base_url": server.url,
            "cache_path": str(tmp_path / "u.sqlite"),
        }
        images = sample_module.sample_run(
            "run",
            list(bench["prompt"]),
            [0],
            text=text,
            steps=2,
            prompt_upsampling=spec,
            out_dir=tmp_path / "samples",
        )
    assert len(images) == len(bench) and all(isinstance(im, np.ndarray) for im in images)
    assert text.seen == [f"a detailed picture of {p}" for p in bench["prompt"]]
    assert json.dumps([list(bench["prompt"]), list(bench["spec"])]) == before  # prompts and specs unchanged
    record = json.loads((tmp_path / "samples" / "upsampled_prompts.json").read_text())
    assert [r["original"] for r in record["prompts"]] == list(bench["prompt"])
    assert (
        record["options"]["model"] == "m"
        and json.loads(record["template"])["system"] == STYLES["descriptive"]
    )
    assert KEY not in json.dumps(record)


def test_training_embeds_the_rewritten_pool_once(tmp_path):
    from helpers import FakeEncoder

    from t2istudy.diffusion.data import shapes_pool
    from t2istudy.diffusion.train import train
    from t2istudy.text.cache import EmbeddingCache

    pool = shapes_pool(16, 0, get_preset("cpu-tiny").image_size).captions
    rewritten = [f"a detailed picture of {c}" for c in pool]
    EmbeddingCache.build(FakeEncoder(), "norm_mean", rewritten, tmp_path / "cache", progress=False)
    with FakeVQAServer() as server:
        spec = json.dumps({"backend": "openai", "model": "m", "base_url": server.url})
        kw = dict(
            encoder="fake-8",
            strategy="norm_mean",
            preset="cpu-tiny",
            pool_size=16,
            cache_dir=str(tmp_path / "cache"),
            max_train_steps=2,
            train_batch_size=4,
            lr_warmup_steps=1,
            report_to="none",
            progress=False,
            num_threads=1,
            caption_upsampling=spec,
        )
        run = train(TrainOptions(output_dir=str(tmp_path / "run"), **kw))
        assert sum(server.attempts.values()) == len(set(pool))  # each unique caption rewritten once
        train(TrainOptions(output_dir=str(tmp_path / "again"), **kw))
        assert sum(server.attempts.values()) == len(set(pool))  # the rerun: zero requests
    derived = json.loads((run / "options.json").read_text())["derived"]
    entry = EmbeddingCache(derived["cache_path"])
    assert set(entry.captions) == set(rewritten)  # the cache key (caption hash) is the rewritten pool's
    record = json.loads((run / "upsampled_prompts.json").read_text())
    assert len(record["prompts"]) == len(set(pool)) and record["options"]["backend"] == "openai"


# ---- the fact checker ----------------------------------------------------------------------------------------


def _count(color, shape, n, op="=="):
    return {"type": "count", "color": color, "shape": shape, "op": op, "n": n}


SPEC = {
    "constraints": [
        _count("red", "circle", 2),
        _count("blue", "square", 1),
        _count(None, None, 3),
        {
            "type": "relation",
            "rel": "left_of",
            "a": {"color": "red", "shape": "circle"},
            "b": {"color": "blue", "shape": "square"},
        },
        _count("green", None, 0),
    ]
}  # "two red circles to the left of a blue square, and no green shapes"


@pytest.mark.parametrize(
    "rewrite, lost, added",
    [
        (
            "Two bright red circles sit to the left of a single blue square; there are no green shapes at all.",
            [],
            [],
        ),
        ("A blue square to the right of two glossy red circles, with nothing green.", [], []),
        ("Two circles to the left of a blue square, and no green shapes.", ["colour"], []),
        ("A red circle to the left of a blue square, and no green shapes.", ["count"], []),
        (
            "Two red circles to the left of a blue square and a yellow triangle, no green shapes.",
            [],
            ["colour", "shape", "objects"],
        ),
        ("Two red circles to the left of a blue square and green shapes.", ["negation"], []),  # counted once
        ("Two red circles to the right of a blue square, and no green shapes.", ["relation"], []),
        (
            "Two red circles to the left of a blue square on a white background, no green shapes.",
            [],
            ["background"],
        ),
        (
            "The two red circles sit to the left of the blue square. The circles shine; nothing is green.",
            [],
            [],
        ),
        ("Two large red circles to the left of a small blue square, no green shapes.", [], ["size"]),
        (
            "Two red circles to the left of a blue square, all of them red, no green shapes.",
            [],
            ["universal"],
        ),
    ],
)
def test_fact_checker_on_hand_written_rewrites(rewrite, lost, added):
    row = check_rewrite(rewrite, SPEC)
    assert [
        c for c in ("colour", "shape", "count", "relation", "negation") if row[f"keeps_{c}"] is False
    ] == lost
    kinds = ("colour", "background", "shape", "relation", "negation", "size", "universal", "objects")
    assert [k for k in kinds if row[f"adds_{k}"]] == added
    assert row["keeps_all"] == (not lost) and row["adds_any"] == bool(added)


def test_fact_checker_reads_every_original_benchmark_prompt_as_faithful():
    table = check_original_prompts(make_benchmark(n_per_skill=25))
    summary = summarize_facts(table)
    assert summary["prompts"] == 200
    assert summary["keeps_all"] == 1.0 and summary["adds_any"] == 0.0, table.loc[~table.keeps_all, "problems"]


def test_fact_checker_reads_count_comparisons():
    spec = {
        "constraints": [
            {
                "type": "more",
                "a": {"color": "red", "shape": "triangle"},
                "b": {"color": "blue", "shape": "triangle"},
            },
            _count("blue", "triangle", 1, ">="),
            _count(None, None, 3),
        ]
    }
    kept = "The number of blue triangles is less than the number of red triangles."
    assert check_rewrite(kept, spec)["keeps_relation"] is True
    assert check_rewrite("fewer blue triangles than red triangles", spec)["keeps_relation"] is True
    assert check_rewrite("more blue triangles than red triangles", spec)["keeps_relation"] is False
