"""Preparing a grid's caches: one encoder pass per (encoder, caption set) fills every strategy's entry,
and those are the entries the runs look up."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import FakeEncoder

from t2istudy import run_store
from t2istudy.diffusion.data import shapes_pool
from t2istudy.study import grids, prepare, runner
from t2istudy.text.cache import EmbeddingCache
from t2istudy.world.shapes_benchmark import make_benchmark
from t2istudy.world.shapes_geneval import make_geneval_tier

REPO = Path(__file__).resolve().parents[1]


def write_grid(tmp_path: Path) -> Path:
    grid = {
        "name": "prep",
        "notebook": str(REPO / "notebooks" / "run.ipynb"),
        "params": {
            "preset": "cpu-tiny",
            "n_per_skill": 2,
            "geneval_per_task": 1,
            "train_options": {"pool_size": 40, "cache_dir": str(tmp_path / "cache")},
        },
        "axes": {"encoder": ["fake-a", "fake-b"], "strategy": ["last", "learned", "mean"], "seed": [0, 1]},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_one_pass_per_encoder_and_caption_set(tmp_path, monkeypatch):
    loads: list[str] = []

    def load_encoder(name, max_length=None, **_):
        loads.append(name)
        return FakeEncoder(name=name)

    monkeypatch.setattr("t2istudy.text.encoders.load_encoder", load_encoder)
    grid = write_grid(tmp_path)
    requests = prepare.prepare_grid(grid, tmp_path / "runs", log=lambda *_: None)

    # 2 encoders x (training captions, both tiers' prompts), each wanting the 3 strategies (seeds share entries)
    kinds = ("training captions", "heldout prompts", "geneval prompts")
    assert sorted((r.encoder, r.what) for r in requests) == sorted(
        (e, w) for e in ("fake-a", "fake-b") for w in kinds
    )
    assert all(r.strategies == ["last", "learned", "mean"] for r in requests)
    train_captions = shapes_pool(40, 0, 16).captions
    prompts = make_benchmark(n_per_skill=2, seed=0)["prompt"].tolist()
    tier = make_geneval_tier(1, seed=0)["prompt"].tolist()
    expected = {
        "training captions": train_captions,
        "heldout prompts": prompts,
        "geneval prompts": tier,
    }
    for r in requests:
        assert set(r.captions) == set(expected[r.what])
        assert r.batch_size == 64

    # Each encoder loaded once per caption set (not once per strategy); every entry a run looks up exists.
    assert sorted(loads) == ["fake-a"] * 3 + ["fake-b"] * 3
    for name in ("fake-a", "fake-b"):
        for captions in (train_captions, prompts, tier):
            for strategy in ("last", "learned", "mean"):
                entry = EmbeddingCache.find(tmp_path / "cache", name, strategy, captions)
                assert entry is not None and entry.strategy == strategy

    # Nothing is missing any more: a second prepare builds nothing.
    monkeypatch.setattr(
        "t2istudy.text.encoders.load_encoder", lambda *a, **k: (_ for _ in ()).throw(AssertionError)
    )
    assert prepare.prepare_grid(grid, tmp_path / "runs", log=lambda *_: None) == []


def test_dry_run_builds_nothing_and_done_runs_are_left_out(tmp_path):
    grid = write_grid(tmp_path)
    specs = grids.expand_grid(grids.load_grid(grid))
    for spec in specs:  # every fake-b run is complete
        if spec.params["encoder"] == "fake-b":
            out = grids.run_path(tmp_path / "runs", spec)
            out.mkdir(parents=True)
            run_store.write_json(
                out / "params.json", {"schema_version": grids.SCHEMA_VERSION, "params": spec.params}
            )
            (out / "DONE").write_text("")
    lines: list[str] = []
    requests = prepare.prepare_grid(grid, tmp_path / "runs", dry_run=True, log=lines.append)
    assert {r.encoder for r in requests} == {"fake-a"}
    assert len(lines) == 3 and all(
        "last, learned, mean" in line and "dry run" in line for line in lines
    )  # 3 caption sets
    assert not (tmp_path / "cache").exists()


def test_only_other_notebooks_runs_are_ignored(tmp_path):
    nb = tmp_path / "other.ipynb"
    import nbformat

    book = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('out_dir = ""\nx = 1')
    cell.metadata["tags"] = ["parameters"]
    book.cells = [cell]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, nb)
    spec = grids.RunSpec(grid="g", run_id="x-1", notebook=str(nb), params={"x": 1})
    assert prepare.cache_requests([spec]) == []


@pytest.fixture
def waves(monkeypatch) -> list[list[str]]:
    """The run ids of each wave the local launcher is handed; nothing is executed."""
    handed: list[list[str]] = []
    monkeypatch.setattr(
        runner, "_run_local", lambda wave, *a, **k: handed.append([s.run_id for s in wave]) or []
    )
    return handed


def fake_encoders(monkeypatch) -> None:
    monkeypatch.setattr("t2istudy.text.encoders.load_encoder", lambda name, **_: FakeEncoder(name=name))


def arm(grid: Path, encoder: str, strategy: str) -> list[str]:
    """The run ids of one arm (its seeds): runs that share one cache entry."""
    specs = grids.expand_grid(grids.load_grid(grid))
    return [s.run_id for s in specs if (s.params["encoder"], s.params["strategy"]) == (encoder, strategy)]


def test_prepared_parallel_runs_go_in_one_wave(tmp_path, monkeypatch, waves):
    """Once `run_grid` has prepared every cache entry, two seeds of one arm run side by side, not one
    after the other; if the entries cannot be looked up, the runs keep the build-once waves."""
    fake_encoders(monkeypatch)
    grid = write_grid(tmp_path)
    only = arm(grid, "fake-a", "last")
    assert len(only) == 2
    runner.run_grid(grid, tmp_path / "runs", workers=2, only=only, log=lambda *_: None)
    assert waves == [only]

    waves.clear()
    monkeypatch.setattr(
        "t2istudy.study.runner.runs_awaiting_build",
        lambda *a: (_ for _ in ()).throw(RuntimeError("no disk")),
    )
    runner.run_grid(grid, tmp_path / "runs", workers=2, only=only, prepare=False, log=lambda *_: None)
    assert waves == [only[:1], only[1:]]


def test_only_runs_that_would_build_the_same_entry_wait(tmp_path, monkeypatch, waves):
    """Unprepared (a SLURM launch, `--no-prepare`): the seeds of an arm whose entry exists start together;
    of an arm whose entry is missing, one builds it and the other waits for the second wave."""
    fake_encoders(monkeypatch)
    grid = write_grid(tmp_path)
    last, mean = arm(grid, "fake-a", "last"), arm(grid, "fake-a", "mean")
    prepare.prepare_grid(grid, tmp_path / "runs", only=last, log=lambda *_: None)  # only `last` exists
    assert prepare.runs_awaiting_build(
        [s for s in grids.expand_grid(grids.load_grid(grid)) if s.run_id in last + mean]
    ) == set(mean)
    runner.run_grid(grid, tmp_path / "runs", workers=2, only=last + mean, prepare=False, log=lambda *_: None)
    assert waves == [[*last, mean[0]], [mean[1]]]


def test_only_runs_in_the_order_named(tmp_path, monkeypatch, waves):
    """`--only c a b` runs c first: the user's priority, not the grid's order."""
    monkeypatch.setattr("t2istudy.study.runner.prepare_grid", lambda *a, **k: [])
    grid = write_grid(tmp_path)
    ids = [s.run_id for s in grids.expand_grid(grids.load_grid(grid))]
    only = [ids[-1], ids[0], ids[5], ids[0]]  # a repeat runs once
    runner.run_grid(grid, tmp_path / "runs", workers=2, only=only, log=lambda *_: None)
    assert waves == [[ids[-1], ids[0], ids[5]]]


def test_latent_preset_trains_its_autoencoder_and_fills_its_latent_cache_once(tmp_path, monkeypatch):
    """A latent grid's runs find their autoencoder and latent cache ready: prepared once for all runs."""
    from t2istudy.diffusion import autoencoder

    trained: list[str] = []
    real = autoencoder.train_autoencoder
    monkeypatch.setattr(
        autoencoder, "train_autoencoder", lambda r, *a, **k: trained.append(r) or real(r, *a, **k)
    )
    grid = yaml.safe_load(write_grid(tmp_path).read_text())
    grid["params"]["preset"] = "cpu-tiny-latent"
    grid["params"]["train_options"].update(
        autoencoder_dir=str(tmp_path / "ae"), latent_cache_dir=str(tmp_path / "latents")
    )
    grid["axes"] = {"encoder": ["fake-a"], "strategy": ["last", "mean"], "seed": [0, 1]}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    specs = grids.expand_grid(grids.load_grid(tmp_path / "grid.yaml"))
    assert prepare.prepare_images(specs, log=lambda *_: None) == 1  # 4 runs, one image side
    assert len(trained) == 1
    entries = list((tmp_path / "latents").iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    assert len(list((tmp_path / "ae").iterdir())) == 1
    assert (
        prepare.prepare_images(specs, log=lambda *_: None) == 1 and len(trained) == 1
    )  # found, not retrained


def test_upsampled_runs_get_their_rewrites_once_and_the_rewrites_embedding_entries(tmp_path, monkeypatch):
    """prompt_upsampling: the runs embed rewrites, so prepare writes every rewrite first (one rewriter load
    for all runs, one generation per distinct prompt), then the rewrites' entries; a rerun generates none."""
    from t2istudy.text import upsample as upsample_module

    made: list[str] = []

    class FakeRewriter:
        def __init__(self, options):
            made.append("load")

        def rewrite(self, prompt):
            made.append(prompt)
            return f"a picture of {prompt}", 4

    monkeypatch.setattr(upsample_module, "LocalRewriter", FakeRewriter)
    monkeypatch.setattr("t2istudy.text.encoders.load_encoder", lambda name, **_: FakeEncoder(name=name))
    path = write_grid(tmp_path)
    grid = yaml.safe_load(path.read_text())
    grid["params"]["prompt_upsampling"] = {"model": "smollm2-135m", "cache_path": str(tmp_path / "up.sqlite")}
    grid["axes"] = {"encoder": ["fake-a"], "strategy": ["last", "mean"], "seed": [0, 1]}
    path.write_text(yaml.safe_dump(grid))

    requests = prepare.prepare_grid(path, tmp_path / "runs", log=lambda *_: None)
    prompts = make_benchmark(n_per_skill=2, seed=0)["prompt"].tolist()
    tier = make_geneval_tier(1, seed=0)["prompt"].tolist()
    distinct = list(dict.fromkeys(prompts + tier))
    assert made == ["load", *distinct]  # 4 runs, 2 tiers: each distinct prompt rewritten once
    rewritten = {r.what: r.captions for r in requests if r.what.endswith("rewritten")}
    assert rewritten == {
        "heldout prompts, rewritten": [f"a picture of {p}" for p in prompts],
        "geneval prompts, rewritten": [f"a picture of {p}" for p in tier],
    }
    for captions in rewritten.values():  # the entries sample_run will look up
        for strategy in ("last", "mean"):
            assert EmbeddingCache.find(tmp_path / "cache", "fake-a", strategy, captions) is not None
    made.clear()
    assert prepare.prepare_grid(path, tmp_path / "runs", log=lambda *_: None) == [] and made == []
