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
