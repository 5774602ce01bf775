"""Test doubles shared by several test modules."""

import hashlib

import torch


class FakeEncoder:
    """Deterministic word-hash 'encoder' (no weights): each word maps to fixed per-layer vectors."""

    def __init__(self, width: int = 8, layers: int = 3, scale: float = 3.0, name: str = "fake-8"):
        self.name, self.width, self.num_states, self.max_length = name, width, layers, 32
        self.table = torch.randn(97, layers, width, generator=torch.Generator().manual_seed(0)) * scale
        self.calls = 0

    def encode_aggregated(self, prompts, strategy, batch_size=32, progress=False):
        self.calls += 1
        if any(not p.strip() for p in prompts):
            raise ValueError("Prompt is an empty string")  # as t2istudy.text.encoders does
        ids = [[int(hashlib.md5(w.encode()).hexdigest(), 16) % 97 for w in p.split()] for p in prompts]
        t = max(len(i) for i in ids)
        feats = torch.zeros(len(prompts), t, self.num_states, self.width)
        mask = torch.zeros(len(prompts), t, dtype=torch.bool)
        for row, i in enumerate(ids):
            feats[row, : len(i)] = self.table[i]
            mask[row, : len(i)] = True
        return (feats, mask) if str(strategy).startswith("learned") else (feats.mean(2), mask)


TINY_POOL = 64  # captions of the tiny shapes pool the trainer tests train on


def build_tiny_cache(root):
    """An embedding cache of the tiny shapes pool from FakeEncoder, so training never loads a real encoder."""
    from t2istudy.diffusion.data import shapes_pool
    from t2istudy.diffusion.model import get_preset
    from t2istudy.text.cache import EmbeddingCache

    captions = shapes_pool(TINY_POOL, 0, get_preset("cpu-tiny").image_size).captions
    EmbeddingCache.build(FakeEncoder(), "norm_mean", captions, root, progress=False)
    return root


def tiny_train_options(cache_dir, out, **kw):
    """TrainOptions of a 6-step cpu-tiny run on that cache (checkpoints at 3 and 6, a log line per step)."""
    from t2istudy.diffusion.options import TrainOptions

    base = dict(
        encoder="fake-8",
        strategy="norm_mean",
        preset="cpu-tiny",
        pool_size=TINY_POOL,
        cache_dir=str(cache_dir),
        output_dir=str(out),
        max_train_steps=6,
        train_batch_size=8,
        lr_warmup_steps=2,
        checkpointing_steps=3,
        logging_steps=1,
        report_to="none",
        progress=False,
        num_threads=1,
    )
    return TrainOptions(**{**base, **kw})
