"""GenAI-Bench per skill (issue 40): a prompt file with its skills file gives skill rows, the scorer's model,
base URL and cache path are the caller's, usage and cost come back for the run to store; the shipped
527-prompt release scores overall only and says so."""

import json

import numpy as np
import pytest
from vqa_server import FakeVQAServer

from t2istudy.scoring.genai_skills import score_genai_bench
from t2istudy.world.genai_bench import load_genai_bench, skills_note


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-genai")


def _bench(folder, with_skills=True):
    prompts = {"00001": "a dog", "00002": "two cats", "00003": "no bird in the sky"}
    folder.mkdir()
    (folder / "genai_image.json").write_text(
        json.dumps({k: {"id": k, "prompt": p} for k, p in prompts.items()})
    )
    if with_skills:  # tag -> 0-based prompt indices, as the official release has it
        skills = {"attribute": [0], "counting": [1], "negation": [2], "scene": [2]}
        (folder / "tags.json").write_text(json.dumps(skills))
    return folder


def test_prompt_and_skills_files_give_per_skill_scores_usage_and_cost(tmp_path):
    folder = _bench(tmp_path / "bench")
    bench = load_genai_bench(folder / "genai_image.json", folder / "tags.json")
    assert skills_note(bench) is None
    answers = {
        "a dog": [("Yes", 0.0)],
        "two cats": [("No", 0.0)],
        "no bird in the sky": [("Yes", np.log(0.25)), ("No", np.log(0.75))],
    }
    images = [np.full((16, 16, 3), i * 40, np.uint8) for i in range(3)]
    with FakeVQAServer(answers) as server:
        result = score_genai_bench(
            images, bench, model="gpt-4o-mini", base_url=server.url, cache_path=str(tmp_path / "c.sqlite")
        )
    summary = result.summary["mean"]
    assert (
        summary["attribute"] == 1.0
        and summary["counting"] == 0.0
        and summary["negation"] == pytest.approx(0.25)
    )
    assert summary["basic"] == pytest.approx(1.25 / 2) and summary["advanced"] == pytest.approx(0.25 / 2)
    assert summary["overall"] == pytest.approx(1.25 / 3)
    metrics = result.metrics()
    assert metrics["vqascore"]["model"] == "gpt-4o-mini" and metrics["vqascore"]["base_url"] == server.url
    assert metrics["vqascore"]["cache_path"] == str(tmp_path / "c.sqlite")
    assert metrics["vqascore"]["skills_file"] == str(folder / "tags.json")
    usage = metrics["vqascore"]["usage"]
    assert usage["answered"] == 3 and usage["prompt_tokens"] > 0
    price_in, price_out = 0.15, 0.60  # gpt-4o-mini, USD per million tokens
    expected = (usage["prompt_tokens"] * price_in + usage["completion_tokens"] * price_out) / 1e6
    assert metrics["vqascore"]["est_cost_usd"] == pytest.approx(expected)


def test_the_527_prompt_release_scores_overall_only_and_says_so(tmp_path):
    shipped = load_genai_bench()
    assert len(shipped) == 527 and "overall only" in skills_note(shipped)
    assert "BaiqiL/GenAI-Bench-1600" in skills_note(shipped)
    bench = load_genai_bench(_bench(tmp_path / "bare", with_skills=False))
    with FakeVQAServer() as server:
        result = score_genai_bench(
            [np.zeros((16, 16, 3), np.uint8)] * 3,
            bench,
            base_url=server.url,
            cache_path=str(tmp_path / "c.sqlite"),
        )
    assert list(result.summary.index) == ["overall"] and "overall only" in result.metrics()["skills_note"]
    with pytest.raises(FileNotFoundError, match="skills file not found"):
        load_genai_bench(tmp_path / "bare", tmp_path / "missing.json")


def test_a_run_config_reaches_the_prompt_files_the_scorer_and_the_sampling_device(tmp_path, monkeypatch):
    """RunConfig's genai-bench settings from the grid to metrics.json: the run's prompt and skills files,
    VQAScore's model, base URL and cache, per-skill summaries, usage and cost; sampling on sample_device."""
    from t2istudy.diffusion import sample
    from t2istudy.run_store import METRICS, read_json
    from t2istudy.study import run, run_folder
    from t2istudy.study.run_config import RunConfig

    folder = _bench(tmp_path / "bench")
    calls = []
    monkeypatch.setattr(
        sample,
        "sample_run",
        lambda train_dir, prompts, **kw: calls.append(kw) or [np.zeros((16, 16, 3), np.uint8)] * len(prompts),
    )
    with FakeVQAServer() as server:
        config = RunConfig.from_params(
            {"benchmark": "genai-bench", "scorer": "vqascore", "sample_device": "cuda:1",
             "prompt_file": str(folder / "genai_image.json"), "skills_file": str(folder / "tags.json"),
             "vqa_model": "gpt-4o-mini", "vqa_base_url": server.url, "vqa_cache_path": str(tmp_path / "v.sqlite")}
        )  # fmt: skip
        results = run.evaluate(config, tmp_path / "train", tmp_path / "out")
    assert calls[0]["device"] == "cuda:1"
    run_folder.write_record(tmp_path / "out", results, run.scoring_record(config, results))
    metrics = read_json(tmp_path / "out" / METRICS)
    groups = metrics["tiers"]["genai-bench"]["groups"]
    assert {"attribute", "counting", "negation", "scene", "basic", "advanced"} <= set(groups)
    vqa = metrics["vqascore"]["genai-bench"]
    assert (vqa["model"], vqa["base_url"], vqa["cache_path"]) == (
        "gpt-4o-mini",
        server.url,
        str(tmp_path / "v.sqlite"),
    )
    assert vqa["skills_file"] == str(folder / "tags.json") and vqa["usage"]["answered"] == 3
    assert vqa["est_cost_usd"] > 0 and "skills_note" not in metrics
    shipped = run.scoring_record(RunConfig(), {"genai-bench": (load_genai_bench_table(), None)})
    assert "overall only" in shipped["skills_note"]["genai-bench"]


def load_genai_bench_table():
    """A scored table of the shipped prompts as evaluate_tier leaves it: the prompt file's note carried over."""
    from t2istudy.world.genai_bench import load_genai_bench as load

    bench = load()
    table = bench[["id", "prompt"]].copy()
    table.attrs["skills_note"] = bench.attrs["skills_note"]
    return table
