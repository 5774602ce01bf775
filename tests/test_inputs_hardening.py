"""Issue 22, the inputs the trainer and the scorers read: truncated caches name their file, and the judge
reads [-1, 1] floats right."""

import shutil
import warnings

import numpy as np
import pytest
from helpers import FakeEncoder

from t2istudy.diffusion.data import shapes_pool
from t2istudy.scoring.scorers import get_scorer
from t2istudy.text.cache import EmbeddingCache
from t2istudy.world.shapes import render
from t2istudy.world.shapes_benchmark import make_benchmark

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
