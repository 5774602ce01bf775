"""Content identity (issue 41): nothing stale is ever read, and what a store reads back is what it wrote.

Each test reproduces one case of the break-it sweep: a resume after the autoencoder changed, a probe table cut
at a row boundary, a probe group computed by older code, a local encoder folder whose weights were replaced,
and the weak cases of the stores (a torn meta.json, an entry under another entry's name, a corrupt autoencoder
copy, a torn probe summary, a misspelt upsampling style, a locked sqlite file, the explorer's truncation).
"""

import json
import shutil
import sqlite3
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import FakeEncoder, tiny_train_options
from safetensors.torch import load_file, save_file

from t2istudy import openai_client
from t2istudy.diffusion import run_checks
from t2istudy.diffusion.autoencoder import autoencoder_dir, get_or_train, released_dir
from t2istudy.diffusion.data import shapes_pool
from t2istudy.diffusion.train import train
from t2istudy.diffusion.train_folder import read_options
from t2istudy.probe.group_store import GroupStore, code_digest
from t2istudy.probe.report import load_summaries
from t2istudy.text.cache import EmbeddingCache
from t2istudy.text.upsample import RewriteCache, parse_upsampling

WEIGHTS = "diffusion_pytorch_model.safetensors"


# ---- the helper itself --------------------------------------------------------------------------------------


def test_content_digest_follows_the_bytes_and_remembers_them_by_size_and_mtime(tmp_path):
    from t2istudy.identity import SIDECAR, content_digest

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(b"\x00" * 1000)
    first = content_digest(folder)
    assert (folder / SIDECAR).is_file()  # remembered; the sidecar is not part of the content
    assert content_digest(folder) == first
    (folder / "weights.bin").write_bytes(b"\x00" * 999 + b"\x01")  # same size, new bytes (and mtime)
    assert content_digest(folder) != first
    (folder / "weights.bin").write_bytes(b"\x00" * 1000)
    assert content_digest(folder) == first  # the same bytes again: the same identity


# ---- bug 1: a resume notices that the autoencoder changed --------------------------------------------------


def test_resume_after_the_cached_autoencoder_changed_is_refused_naming_it(tmp_path):
    """Kill a cpu-tiny-latent run (stop_after_steps), alter the cached autoencoder's weights (they still
    load), resume: refused, naming the autoencoder; options.json records the digests the run used."""
    cache = tmp_path / "text"
    EmbeddingCache.build(FakeEncoder(), "norm_mean", shapes_pool(32, 0, 32).captions, cache, progress=False)

    def options(**kw):
        return tiny_train_options(
            cache,
            tmp_path / "run",
            preset="cpu-tiny-latent",
            pool_size=32,
            latent_cache_dir=str(tmp_path / "latents"),
            autoencoder_dir=str(tmp_path / "autoencoders"),
            **kw,
        )

    run = train(options(stop_after_steps=3))
    weights = autoencoder_dir("shapes-tiny", tmp_path / "autoencoders") / WEIGHTS
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"(?s)Cannot resume.*VAE \(autoencoder\) weights.*shapes-tiny"):
        train(options(resume_from_checkpoint="latest"))
    assert set(read_options(run)["inputs"]) == {"vae", "embedding_cache", "latent_cache"}
    # the same options reused as another run's shared model: refused too (it compared options only)
    with pytest.raises(
        ValueError, match=r"(?s)Cannot reuse the model in .*VAE \(autoencoder\).*shared_train_dir"
    ):
        run_checks.check_reusable(run, options())


# ---- bugs 2 and 3: the probe store --------------------------------------------------------------------------


def group_table(rows: int = 40) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "encoder": "fake",
            "representation": [f"layer:{i % 4}" for i in range(rows)],
            "seed": 0,
            "prompt": range(rows),
            "skill": "attribute",
            "correct": [i % 3 == 0 for i in range(rows)],
        }
    )


SETTINGS = {"encoder": "fake", "random_init": False, "template": None, "members": ["last"]}


def test_a_probe_group_table_cut_at_a_row_boundary_reads_as_not_done(tmp_path):
    store = GroupStore(tmp_path)
    store.save(SETTINGS, group_table(), {"timing": {}, "num_states": 3})
    loaded, _ = store.load(SETTINGS)
    assert len(loaded) == 40
    table_path, _ = store.paths(SETTINGS)
    lines = table_path.read_text().splitlines(keepends=True)
    table_path.write_text("".join(lines[:30]))  # `head -n 30`: whole rows, a readable CSV
    with pytest.warns(UserWarning, match=rf"{table_path.name}.*does not match its done-mark"):
        assert store.load(SETTINGS) is None


def test_the_probe_code_digest_covers_the_world_the_benchmark_and_the_recipes():
    from t2istudy.identity import module_closure, module_digest

    modules = module_closure("t2istudy.probe.layerwise")
    for needed in ("t2istudy.world.shapes", "t2istudy.world.shapes_benchmark", "t2istudy.text.recipes"):
        assert needed in modules
    assert code_digest() == module_digest("t2istudy.probe.layerwise")


def test_editing_the_default_holdout_changes_the_probe_code_digest_but_a_comment_does_not(tmp_path):
    from t2istudy.identity import PACKAGE_ROOT, module_digest

    copy = tmp_path / "t2istudy"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("data", "__pycache__"))
    before = module_digest("t2istudy.probe.layerwise", copy)
    shapes = copy / "world" / "shapes.py"
    source = shapes.read_text()
    shapes.write_text(source + "\n# a comment\n")
    assert module_digest("t2istudy.probe.layerwise", copy) == before
    shapes.write_text(source + "\nDEFAULT_EXTRA_HOLDOUT = ('blue', 'triangle')\n")
    assert module_digest("t2istudy.probe.layerwise", copy) != before


# ---- a local encoder folder whose weights were replaced ------------------------------------------------------


def test_the_embedding_cache_of_a_local_encoder_folder_is_keyed_on_its_weights(tmp_path):
    folder = tmp_path / "my-encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"old weights")
    captions = ["a red circle", "two blue squares"]
    encoder = FakeEncoder(name=str(folder))
    built = EmbeddingCache.build(encoder, "mean", captions, tmp_path / "cache", progress=False)
    assert EmbeddingCache.find(tmp_path / "cache", str(folder), "mean", captions).path == built.path
    (folder / "model.safetensors").write_bytes(b"new weights")
    assert EmbeddingCache.find(tmp_path / "cache", str(folder), "mean", captions) is None
    again = EmbeddingCache.build(encoder, "mean", captions, tmp_path / "cache", progress=False)
    assert again.path != built.path and again.meta["encoder_digest"] is not None


# ---- weak cases of the caches --------------------------------------------------------------------------------


def test_a_torn_meta_json_names_its_file_and_blocks_only_its_own_entry(tmp_path):
    captions = ["a red circle", "two blue squares"]
    last = EmbeddingCache.build(FakeEncoder(), "last", captions, tmp_path, progress=False)
    mean = EmbeddingCache.build(FakeEncoder(), "mean", captions, tmp_path, progress=False)
    meta = last.path / "meta.json"  # read first: entries are looked up in name order
    meta.write_text(meta.read_text()[:40])
    with pytest.warns(UserWarning, match=rf"{meta}.*unreadable"):
        assert EmbeddingCache.find(tmp_path, "fake-8", "mean", captions).path == mean.path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert EmbeddingCache.find(tmp_path, "fake-8", "last", captions) is None  # built again by its caller


def test_an_entry_under_another_entrys_name_is_moved_aside_and_rebuilt(tmp_path):
    captions = ["a red circle", "two blue squares"]
    mean = EmbeddingCache.build(FakeEncoder(), "mean", captions, tmp_path, progress=False)
    last_dir = EmbeddingCache.entry_dir(tmp_path, "fake-8", "last", 32, captions)
    mean.path.rename(last_dir)  # a `mean` entry in the `last` entry's folder
    with pytest.warns(UserWarning, match="names another entry"):
        got = EmbeddingCache.get_or_build(tmp_path, FakeEncoder(), "last", captions, progress=False)
    assert got.path == last_dir and got.check("fake-8", "last").strategy == "last"
    assert [p for p in tmp_path.glob("fake-8/*.moved-*")]  # the other entry is kept, aside
    assert EmbeddingCache.find(tmp_path, "fake-8", "last", captions).path == last_dir


def test_an_embedding_entry_altered_after_it_was_written_is_moved_aside(tmp_path):
    captions = ["a red circle", "two blue squares"]
    built = EmbeddingCache.build(FakeEncoder(), "mean", captions, tmp_path, progress=False)
    features = np.load(built.path / "features.npy")
    np.save(built.path / "features.npy", features + 1)  # readable, same shape, other numbers
    with pytest.warns(UserWarning, match="checksum"):
        assert EmbeddingCache.find(tmp_path, "fake-8", "mean", captions) is None
    assert not built.path.exists()


def test_a_corrupt_copy_of_the_released_autoencoder_is_replaced_from_the_release(tmp_path):
    path = get_or_train("shapes-f2c4", root=tmp_path, progress=False)
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])  # a copy cut short: config.json is still there
    with pytest.warns(UserWarning, match="differs from the package's release"):
        again = get_or_train("shapes-f2c4", root=tmp_path, progress=False)
    assert (again / WEIGHTS).read_bytes() == (released_dir("shapes-f2c4") / WEIGHTS).read_bytes()


# ---- weak cases of the probe summaries, upsampling and the explorer ---------------------------------------


def test_a_torn_probe_summary_names_its_file_and_line(tmp_path):
    table = pd.DataFrame(
        {
            "encoder": "fake",
            "control": "none",
            "representation": ["last", "mean"],
            "skill": "attribute",
            "layer": np.nan,
            "n": 10,
            "seeds": 1,
            "accuracy": [0.5, 0.25],
            "ci_low": 0.1,
            "ci_high": 0.9,
        }
    )
    path = tmp_path / "probe_all.csv"
    table.to_csv(path, index=False)
    assert len(load_summaries(tmp_path)) == 2
    text = path.read_text()
    path.write_text(text[: text.rindex("attribute") + len("attribute")])  # cut inside the last row
    with pytest.raises(ValueError, match=rf"{path}, line 3: an incomplete row"):
        load_summaries(tmp_path)


def test_the_upsampling_spec_refuses_a_misspelt_style():
    with pytest.raises(ValueError, match="unknown style 'descriptve'.*did you mean 'descriptive'"):
        parse_upsampling("local:smollm2-135m:descriptve")
    with pytest.raises(ValueError, match="unknown style 'descriptve'"):
        parse_upsampling("openai:gemma-2-9b-it:descriptve")
    assert parse_upsampling("openai:llama3:8b").model == "llama3:8b"  # a colon in a server's model name


def test_a_locked_upsampling_cache_is_waited_on_then_reported_as_locked(tmp_path, monkeypatch):
    path = tmp_path / "upsample.sqlite"
    RewriteCache(path)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing
    monkeypatch.setattr(openai_client, "SQLITE_WAIT_S", 0.2, raising=False)
    with pytest.raises(RuntimeError, match="locked by another process.*The file is fine") as err:
        RewriteCache(path)
    assert "move it away" not in str(err.value)
    monkeypatch.setattr(openai_client, "SQLITE_WAIT_S", 10.0, raising=False)
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    start = time.perf_counter()
    assert len(RewriteCache(path)) == 0  # waited for the lock, then opened
    assert time.perf_counter() - start >= 0.2
    release.join()


def test_the_explorer_shows_truncation_and_clears_a_stale_figure(monkeypatch):
    from test_explore import WordEncoder, word_cache

    from t2istudy.text import explore
    from t2istudy.text.encoders import LayerStates

    class ShortWordEncoder(WordEncoder):
        max_length = 4

        def encode(self, prompts, batch_size=32, progress=False):
            cut = [" ".join(p.split()[: self.max_length]) for p in prompts]
            states = super().encode(cut, batch_size, progress)
            n = sum(len(p.split()) > self.max_length for p in prompts)
            return LayerStates(states.hidden, states.mask, states.ids, n)

    cache = word_cache(short=ShortWordEncoder())
    explorer = explore.LayerExplorer(["one two three four five six"], "short", cache=cache)
    assert "cut at max_length=4" in explorer.status.value and "max_length=N" in explorer.status.value
    assert explorer.image.value
    explorer.encoder.value = "no-such-encoder"
    assert "Unknown encoder" in explorer.status.value
    assert explorer.image.value == b"" and explorer.table.value == ""
    asked = []

    def load(name, max_length=None):
        asked.append(max_length)
        return WordEncoder(name)

    monkeypatch.setattr(explore, "load_encoder", load)
    explore.explore(["a b"], "words", max_length=512, cache=None)
    assert asked and set(asked) == {512}


def test_an_upsampling_cache_that_is_not_sqlite_is_still_reported_as_unusable(tmp_path):
    path = tmp_path / "upsample.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(ValueError, match="not a usable sqlite file"):
        RewriteCache(path)


def test_a_latent_cache_entry_altered_after_it_was_written_is_encoded_again(tmp_path):
    from diffusers import AutoencoderKL

    from t2istudy.diffusion.autoencoder import RECIPES, build_autoencoder
    from t2istudy.diffusion.latents import LatentCache

    torch.manual_seed(0)
    vae = build_autoencoder(RECIPES["shapes-tiny"]).eval()
    assert isinstance(vae, AutoencoderKL)
    data = shapes_pool(4, 0, 32)
    cache = LatentCache.get_or_build(tmp_path, vae, data, "pool4", progress=False)
    good = np.array(cache.moments)
    moments = np.load(cache.path / "moments.npy")
    np.save(cache.path / "moments.npy", moments * 2)
    del cache
    with pytest.warns(UserWarning, match="checksum"):
        again = LatentCache.get_or_build(tmp_path, vae, data, "pool4", progress=False)
    np.testing.assert_array_equal(np.array(again.moments), good)
    assert json.loads((again.path / "meta.json").read_text())["rows"] == 4


def test_resume_after_a_local_encoder_folders_weights_changed_is_refused_naming_them(tmp_path):
    """The embedding cache of each weight version was built (by a stand-in encoder named by the folder's
    path); a run stopped after 3 steps, the folder's weights replaced: the resume is refused."""
    from helpers import TINY_POOL

    folder = tmp_path / "my-encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    captions = shapes_pool(TINY_POOL, 0, 16).captions
    for weights in (b"new weights", b"old weights"):  # both entries exist; the old weights stay in place
        (folder / "model.safetensors").write_bytes(weights)
        EmbeddingCache.build(
            FakeEncoder(name=str(folder)), "norm_mean", captions, tmp_path / "c", progress=False
        )
    options = dict(encoder=str(folder), max_train_steps=6)
    run = train(tiny_train_options(tmp_path / "c", tmp_path / "run", stop_after_steps=3, **options))
    assert set(read_options(run)["inputs"]) == {"encoder", "embedding_cache"}
    (folder / "model.safetensors").write_bytes(b"new weights")
    with pytest.raises(ValueError, match=rf"(?s)Cannot resume.*local encoder's weights \({folder}\)"):
        train(
            tiny_train_options(tmp_path / "c", tmp_path / "run", resume_from_checkpoint="latest", **options)
        )
