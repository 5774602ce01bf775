"""Issue 22, the inputs the trainer and the scorers read: truncated caches name their file."""

import shutil

import pytest
from helpers import FakeEncoder

from t2istudy.diffusion.data import shapes_pool
from t2istudy.text.cache import EmbeddingCache

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
