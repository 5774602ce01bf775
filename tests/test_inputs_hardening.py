"""Issue 22, the inputs the trainer and the scorers read: truncated caches name their file, the judge reads
[-1, 1] floats right, and VQAScore's cache lives under cache/ without losing paid answers."""

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import FakeEncoder
from vqa_server import FakeVQAServer

from t2istudy.diffusion.data import shapes_pool
from t2istudy.scoring.scorers import get_scorer
from t2istudy.scoring.vqascore import DEFAULT_CACHE, LEGACY_CACHE, VQAOptions, VQAScore
from t2istudy.text.cache import EmbeddingCache
from t2istudy.world.shapes import render
from t2istudy.world.shapes_benchmark import make_benchmark

REPO = Path(__file__).resolve().parents[1]


# ---- 6. truncated caches ------------------------------------------------------------------------------------


def test_truncated_embedding_cache_names_the_file_and_the_fix(tmp_path):
    captions = shapes_pool(8, 0, 16).captions
    entry = EmbeddingCache.build(FakeEncoder(), "norm_mean", captions, tmp_path, progress=False).path
    features = entry / "features.npy"
    features.write_bytes(features.read_bytes()[:-7])
    with pytest.raises(ValueError, match=rf"{features}.*truncated.*delete the folder {entry} and rerun"):
        EmbeddingCache(entry)
    (entry / "mask.npy").write_bytes(b"")
    shutil.copy(entry / "null_mask.npy", entry / "features.npy")  # a whole file again: the mask is named
    with pytest.raises(ValueError, match=rf"{entry / 'mask.npy'} is unreadable"):
        EmbeddingCache(entry)


# ---- 7. the judge reads float images by their range ----------------------------------------------------------


def test_judge_scores_minus_one_to_one_floats_as_the_uint8_render():
    bench = make_benchmark(n_per_skill=3, seed=0)
    truth = [render(scene, 32) for scene in bench["scene"]]
    unit = [im.astype(np.float32) / 127.5 - 1.0 for im in truth]  # a model's [-1, 1] output
    scorer = get_scorer("judge")
    expected = scorer.score(truth, bench)
    with pytest.warns(UserWarning, match=r"read as \[-1, 1\] values"):
        got = scorer.score(unit, bench)
    assert got.equals(expected) and expected["score"].mean() > 0.9
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer.score(truth, bench)
    assert not [w for w in caught if "float image" in str(w.message)]  # uint8 needs no guess
    with pytest.raises(ValueError, match=r"fit no pixel range.*clamp"):
        scorer.score([truth[0].astype(np.float32) - 10.0, *truth[1:]], bench)


# ---- 8. VQAScore's cache -------------------------------------------------------------------------------------


def test_vqascore_cache_defaults_under_cache_and_git_ignores_both_names():
    assert VQAOptions().cache_path == DEFAULT_CACHE and DEFAULT_CACHE.startswith("cache/")
    if shutil.which("git") and (REPO / ".git").exists():
        ignored = subprocess.run(
            ["git", "check-ignore", DEFAULT_CACHE, LEGACY_CACHE, f"notebooks/{LEGACY_CACHE}"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert ignored.stdout.split() == [DEFAULT_CACHE, LEGACY_CACHE, f"notebooks/{LEGACY_CACHE}"]


def test_answers_paid_into_the_old_default_cache_are_not_paid_again(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.chdir(tmp_path)
    image = [np.full((32, 32, 3), 40, np.uint8)]
    with FakeVQAServer() as server:
        old = VQAScore(base_url=server.url, cache_path=LEGACY_CACHE, timeout_s=0.5).score(
            image, ["a red circle"]
        )
        assert sum(server.attempts.values()) == 1
        with pytest.warns(UserWarning, match=rf"Copied 1 VQAScore answers from .*{LEGACY_CACHE}"):
            client = VQAScore(base_url=server.url, timeout_s=0.5)  # the default cache path
        new = client.score(image, ["a red circle"])
        assert sum(server.attempts.values()) == 1  # nothing paid twice
    assert new[0]["cached"] and new[0]["score"] == old[0]["score"]
    assert (tmp_path / DEFAULT_CACHE).is_file() and (
        tmp_path / LEGACY_CACHE
    ).is_file()  # the old file is kept
