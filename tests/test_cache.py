"""Embedding cache: layout, dtype choice, input-scale statistic, refusals, and cache == on-the-fly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import FakeEncoder

from t2istudy import staging
from t2istudy.text.cache import EmbeddingCache, OnlineText, caption_hash, pad_cat, token_rms

CAPTIONS = [
    "a red circle",
    "two blue squares on a white background",
    "a red circle",
    "one green triangle",
    "x",
]


def test_build_layout_dtype_and_rms(tmp_path):
    enc = FakeEncoder()
    cache = EmbeddingCache.build(enc, "norm_mean", CAPTIONS, tmp_path, batch_size=2, progress=False)
    meta = json.loads((cache.path / "meta.json").read_text())
    assert meta["num_captions"] == 4 and len(cache) == 4  # duplicates stored once
    assert meta["shape"] == [4, 7, 8]  # longest caption: 7 words
    assert meta["dtype"] == "float16" and cache.features.dtype == np.float16  # |values| are small
    assert meta["null"] == "zero"  # the fake refuses "", like the real encoders
    assert cache.path.parent.name == "fake-8" and cache.path.name.startswith("norm_mean-L32-")
    # token RMS over real tokens only, by hand
    f, m = enc.encode_aggregated(sorted(set(CAPTIONS)), "norm_mean")
    real = torch.cat([f[i, : int(m[i].sum())] for i in range(len(f))])
    assert cache.token_rms[0] == pytest.approx(float(real.double().pow(2).mean().sqrt()), rel=1e-6)
    assert torch.allclose(token_rms(f, m), torch.tensor(cache.token_rms, dtype=torch.float32))


def test_cache_equals_on_the_fly_and_trims_padding(tmp_path):
    enc = FakeEncoder()
    cache = EmbeddingCache.build(enc, "norm_mean", CAPTIONS, tmp_path, batch_size=2, progress=False)
    batch = ["x", "a red circle"]
    cf, cm = cache.embed(batch)
    of, om = OnlineText(enc, "norm_mean").embed(batch)
    assert cf.shape == (2, 3, 8) and cf.dtype == torch.float32  # trimmed to the longest caption in the batch
    assert torch.equal(cm, om)
    assert torch.allclose(cf, of, atol=2e-3 * float(of.abs().max()))  # float16 storage
    nf, nm = cache.null(3)
    assert nf.shape == (3, 1, 8) and not nm.any() and float(nf.abs().sum()) == 0


def test_large_values_stay_float32_and_learned_keeps_layers(tmp_path):
    enc = FakeEncoder(scale=1e5)  # like raw decoder layers with an attention sink
    cache = EmbeddingCache.build(enc, "learned", CAPTIONS, tmp_path, progress=False)
    assert cache.meta["dtype"] == "float32" and cache.meta["shape"] == [4, 7, 3, 8]
    assert len(cache.token_rms) == 3  # one statistic per layer
    cf, _ = cache.embed(["one green triangle"])
    of, _ = OnlineText(enc, "learned").embed(["one green triangle"])
    assert torch.equal(cf, of)


def test_refuses_mismatched_encoder_strategy_and_unknown_captions(tmp_path):
    enc = FakeEncoder()
    cache = EmbeddingCache.build(enc, "norm_mean", CAPTIONS, tmp_path, progress=False)
    with pytest.raises(ValueError, match="built with encoder 'fake-8', not 'gemma3-270m'"):
        cache.check("gemma3-270m", "norm_mean")
    with pytest.raises(ValueError, match="holds strategy 'norm_mean', not 'last'"):
        cache.check("fake-8", "last")
    assert cache.check("fake-8", "norm_mean[layernorm]") is cache  # canonical names compare equal
    with pytest.raises(KeyError, match="not in the embedding cache"):
        cache.embed(["a purple hexagon"])
    with pytest.raises(FileNotFoundError, match="No embedding cache"):
        EmbeddingCache(tmp_path / "missing")


def test_get_or_build_reuses_and_keys_on_caption_set(tmp_path):
    enc = FakeEncoder()
    a = EmbeddingCache.get_or_build(tmp_path, enc, "norm_mean", CAPTIONS, progress=False)
    calls = enc.calls
    b = EmbeddingCache.get_or_build(tmp_path, enc, "norm_mean", list(reversed(CAPTIONS)), progress=False)
    assert b.path == a.path and enc.calls == calls  # order-independent key, nothing re-encoded
    assert EmbeddingCache.find(tmp_path, "fake-8", "last", CAPTIONS) is None
    assert caption_hash(["b", "a", "a"]) == caption_hash(["a", "b"])
    c = EmbeddingCache.get_or_build(tmp_path, enc, "norm_mean", CAPTIONS[:2], progress=False)
    assert c.path != a.path and len(c) == 2


def test_an_encoder_given_by_name_loads_on_the_device_asked_and_only_when_an_entry_is_missing(
    tmp_path, monkeypatch
):
    """A GPU job's prompts are encoded on its GPU (sample_run and grid prepare pass their device)."""
    from t2istudy.text import cache as cache_module

    loads = []
    monkeypatch.setattr(
        cache_module.encoders, "load_encoder", lambda name, **kw: loads.append((name, kw)) or FakeEncoder()
    )
    for _ in range(2):
        EmbeddingCache.get_or_build(
            tmp_path, "fake-8", "norm_mean", CAPTIONS, progress=False, device="cuda:1"
        )
    assert loads == [("fake-8", {"max_length": None, "device": "cuda:1"})]


def test_pad_cat_right_pads():
    f, m = pad_cat(
        [
            (torch.ones(1, 2, 3), torch.ones(1, 2, dtype=torch.bool)),
            (torch.ones(2, 1, 3), torch.ones(2, 1, dtype=torch.bool)),
        ]
    )
    assert f.shape == (3, 2, 3) and m.tolist() == [[True, True], [True, False], [True, False]]
    assert float(f[1:, 1].abs().sum()) == 0


@pytest.mark.slow
@pytest.mark.parametrize(("name", "strategy"), [("minilm-l6", "norm_mean"), ("smollm2-135m", "mean")])
def test_real_encoder_cache_equals_on_the_fly(tmp_path, name, strategy):
    from t2istudy.text.encoders import load_encoder

    enc = load_encoder(name)
    captions = [
        "a red circle",
        "two blue squares and one yellow triangle on a gray background",
        "three green squares",
    ]
    cache = EmbeddingCache.build(enc, strategy, captions, tmp_path, batch_size=2, progress=False)
    online = OnlineText(enc, strategy, batch_size=3)
    for batch in (captions, captions[::-1][:2]):
        cf, cm = cache.embed(batch)
        of, om = online.embed(batch)
        assert torch.equal(cm, om)
        tol = 1e-3 * float(of.abs().max()) if cache.meta["dtype"] == "float16" else 1e-4
        assert torch.allclose(cf, of, atol=tol, rtol=1e-4)
    expected_null = {"minilm-l6": "encoded", "smollm2-135m": "zero"}[name]  # [CLS] [SEP] vs no special token
    assert cache.meta["null"] == expected_null
    if strategy == "mean":  # raw decoder layers: the first-token attention sink is huge (~1.6e4 here)
        assert cache.meta["max_abs"] > 1e3
    assert cache.meta["dtype"] == ("float16" if cache.meta["max_abs"] < 6e4 else "float32")


def test_parallel_builds_of_one_entry_keep_the_first_complete_one(tmp_path, monkeypatch):
    """Two processes building the same entry: each writes its own tmp folder; the second keeps the first's."""
    first = EmbeddingCache.build(FakeEncoder(), "last", ["a b", "c"], tmp_path, progress=False)
    stamp = (first.path / "meta.json").stat().st_mtime_ns
    monkeypatch.setattr("os.getpid", lambda: 99999)  # a different process id -> a different tmp folder
    second = EmbeddingCache.build(FakeEncoder(), "last", ["a b", "c"], tmp_path, progress=False)
    assert second.path == first.path and (first.path / "meta.json").stat().st_mtime_ns == stamp
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no tmp folder left behind


def test_build_many_writes_the_entries_build_writes_one_by_one(tmp_path):
    """A minimal encoder (no encode_aggregated_many) still gets one entry per strategy, byte-identical."""
    captions = ["a red circle", "two blue squares", "a b c d e f", "c"]
    many = EmbeddingCache.build_many(
        FakeEncoder(), ["last", "learned", "last"], captions, tmp_path / "m", batch_size=3, progress=False
    )
    assert [e.strategy for e in many] == ["last", "learned"]  # duplicates collapse
    for entry in many:
        alone = EmbeddingCache.build(
            FakeEncoder(), entry.strategy, captions, tmp_path / "a", batch_size=3, progress=False
        )
        assert entry.path.name == alone.path.name and entry.meta == alone.meta
        for name in ("features.npy", "mask.npy", "null_features.npy", "captions.json"):
            assert (entry.path / name).read_bytes() == (alone.path / name).read_bytes()


def test_get_or_build_many_encodes_only_the_missing_strategies(tmp_path):
    enc = FakeEncoder()
    captions = ["a b", "c", "d e f"]
    kept = EmbeddingCache.build(enc, "last", captions, tmp_path, progress=False)
    calls = enc.calls
    last, learned = EmbeddingCache.get_or_build_many(
        tmp_path, enc, ["last", "learned"], captions, progress=False
    )
    assert last.path == kept.path and learned.strategy == "learned"
    assert enc.calls == calls + 1 + 1  # one chunk for the missing strategy, plus its empty-prompt null


@pytest.mark.slow
def test_one_pass_for_every_strategy_equals_one_pass_each(tmp_path):
    """The real encoder's single pass (hooks feeding four aggregators) writes the same bytes as four passes."""
    from t2istudy.text.encoders import load_encoder

    enc = load_encoder("smollm2-135m")
    captions = ["a red circle", "two blue squares and one yellow triangle", "three green squares", "a b"]
    strategies = ["last", "layer:15", "mean", "norm_mean"]
    calls = []
    original = enc.encode_aggregated_many
    enc.encode_aggregated_many = lambda *a, **k: calls.append(a[1]) or original(*a, **k)
    many = EmbeddingCache.build_many(enc, strategies, captions, tmp_path / "m", batch_size=3, progress=False)
    del enc.encode_aggregated_many
    assert calls == [strategies] * 2 + [[s] for s in strategies]  # two chunks, each encoded once for all
    # four strategies; then each entry's empty prompt (the CFG null)
    for entry, strategy in zip(many, strategies, strict=True):
        alone = EmbeddingCache.build(enc, strategy, captions, tmp_path / "a", batch_size=3, progress=False)
        assert entry.meta == alone.meta
        assert (entry.path / "features.npy").read_bytes() == (alone.path / "features.npy").read_bytes()


def test_build_refuses_early_when_the_disk_cannot_hold_the_entry_and_leaves_nothing(tmp_path, monkeypatch):
    """The first batch's chunks project the entry's peak size (here 2 batches x 2 captions x 7 tokens x 8
    float32 + headers, x 1.75); with less free than that the build stops after one batch, naming the sizes
    and the fix, and removes its temporary folder."""
    import collections

    from t2istudy.text import cache as cache_module

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 300, 300))
    enc = FakeEncoder()
    with pytest.raises(OSError, match=r"need about 0\.0 GB .* has 0\.0 GB free.*--cache_dir"):
        EmbeddingCache.build(enc, "norm_mean", CAPTIONS, tmp_path, batch_size=2, progress=False)
    assert enc.calls == 1  # refused after the first batch, not after the whole pass
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no chunk, no entry left behind
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage(10**9, 0, 10**9))
    cache = EmbeddingCache.build(FakeEncoder(), "norm_mean", CAPTIONS, tmp_path, batch_size=2, progress=False)
    assert len(cache) == 4


def test_a_build_that_fails_midway_leaves_no_temporary_folder(tmp_path):
    class FailsOnSecondBatch(FakeEncoder):
        def encode_aggregated(self, prompts, strategy, batch_size=32, progress=False):
            if self.calls == 1:
                raise RuntimeError("encoder crashed")
            return super().encode_aggregated(prompts, strategy, batch_size, progress)

    with pytest.raises(RuntimeError, match="encoder crashed"):
        EmbeddingCache.build(FailsOnSecondBatch(), "last", CAPTIONS, tmp_path, batch_size=2, progress=False)
    assert list(tmp_path.rglob("*.tmp-*")) == [] and list(tmp_path.rglob("meta.json")) == []


def test_a_killed_builds_leftover_is_removed_by_the_next_build_and_another_hosts_is_kept(tmp_path):
    """SIGKILL skips every cleanup: the next build of the same entry removes this machine's dead leftovers
    (today's .tmp-<host>-<pid>-<random> and the older .tmp-<pid>), never another host's or another entry's."""
    entry = EmbeddingCache.entry_dir(tmp_path, "fake-8", "last", 32, ["a b", "c"])
    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout
    )
    stale = [
        entry.with_name(f"{entry.name}.tmp-{staging.host()}-{dead}-0000abcd"),
        entry.with_name(f"{entry.name}.tmp-{dead}"),
    ]
    kept = [
        entry.with_name(f"{entry.name}.tmp-otherhost-{dead}-0000abcd"),  # its writer may run over there
        entry.with_name(f"{entry.name}.tmp-{staging.host()}-{os.getpid()}-0000abcd"),  # a live writer
        entry.with_name(f"{entry.name}0.tmp-{dead}"),  # another entry's name that extends this one
    ]
    for folder in stale + kept:
        folder.mkdir(parents=True)
    cache = EmbeddingCache.build(FakeEncoder(), "last", ["a b", "c"], tmp_path, progress=False)
    assert cache.path == entry and (entry / "meta.json").is_file()
    assert sorted(p.name for p in entry.parent.iterdir()) == sorted([entry.name] + [p.name for p in kept])
