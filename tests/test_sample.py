"""Sampling: exactness with an oracle denoiser, per-(prompt, seed) determinism, files on disk, and a short
cpu-small training run that the pixel judge scores clearly above the untrained model."""

import numpy as np
import pandas as pd
import pytest
import torch

from t2istudy.diffusion.checkpoint import Denoiser, load_denoiser
from t2istudy.diffusion.model import TextConditioner, build_unet, get_preset
from t2istudy.diffusion.options import TrainOptions
from t2istudy.diffusion.sample import sample
from t2istudy.diffusion.train import train

PRESET = get_preset("cpu-tiny")
NULL = (torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool))


class WordText:
    """Embedding = the number of words, so different prompts get different conditioning."""

    def embed(self, captions):
        n = torch.tensor([100.0 * len(c.split()) for c in captions])
        return n.view(-1, 1, 1).expand(-1, 1, 4).clone(), torch.ones(len(captions), 1, dtype=torch.bool)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_oracle_denoiser_recovers_the_image(sampler):
    """A denoiser that knows x0 returns the exact noise; both samplers must land on x0 (8-bit rounding)."""
    alphas = PRESET.noise_scheduler().alphas_cumprod
    x0 = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1

    class Oracle(torch.nn.Module):
        def forward(self, x, t, features, mask):
            a = alphas[t.long()].view(-1, 1, 1, 1)
            return (x - a.sqrt() * x0) / (1 - a).sqrt()

    image = sample(
        Oracle(),
        ["a"],
        [0],
        text=WordText(),
        null=NULL,
        preset=PRESET,
        sampler=sampler,
        steps=20,
        guidance_scale=1.0,
    )[0]
    target = ((x0[0].permute(1, 2, 0) + 1) * 127.5).round().numpy()
    assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
    assert np.abs(image.astype(float) - target).max() <= 4  # DDIM stops at t=1 of 1000, DPM++ at sigma 0


def test_images_depend_only_on_prompt_and_seed(tmp_path):
    torch.manual_seed(0)
    model = Denoiser(build_unet(PRESET), TextConditioner(4, PRESET.cross_attention_dim))
    prompts = ["a red circle", "two blue squares", "one"]
    kw = dict(text=WordText(), null=NULL, preset=PRESET, steps=4, guidance_scale=3.0)
    big = sample(model, prompts, [0, 7], batch_size=6, out_dir=tmp_path, **kw)
    small = sample(model, prompts[::-1], [7, 0], batch_size=1, **kw)
    assert len(big) == 6  # prompt-major: (p0,s0), (p0,s7), (p1,s0), ...
    for i in range(3):
        for j, _seed in enumerate([0, 7]):
            other = small[(2 - i) * 2 + (1 - j)]
            assert np.abs(big[i * 2 + j].astype(int) - other).max() <= 1  # batch composition does not matter
    assert not np.array_equal(big[0], big[1])  # seeds differ
    assert not np.array_equal(big[0], big[4])  # prompts of different length differ (same seed and noise)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "0000-s0.png",
        "0000-s7.png",
        "0001-s0.png",
        "0001-s7.png",
        "0002-s0.png",
        "0002-s7.png",
        "grid.png",
    ]
    with pytest.raises(ValueError, match="Unknown sampler"):
        sample(model, prompts, [0], **{**kw, "steps": 1}, sampler="euler")


def test_noise_rules_per_prompt_draws_differ_shared_ones_repeat_and_keys_pair_rewrites():
    """A denoiser that ignores the text shows the starting noise itself: under "shared" every prompt gets
    the seed's one draw; under "per_prompt" each prompt its own, keyed by its text (not its position), and a
    rewritten prompt given its original as key starts from the original's noise."""
    import hashlib

    from t2istudy.diffusion.sample import noise_seed

    assert noise_seed(7, "a red circle", "shared") == 7
    digest = hashlib.sha256(b"7\na red circle").digest()
    assert noise_seed(7, "a red circle") == int.from_bytes(digest[:8], "little") & (2**63 - 1)
    with pytest.raises(ValueError, match="Unknown sample noise rule 'fresh'.*per_prompt, shared"):
        noise_seed(0, "a", "fresh")

    class Blind(torch.nn.Module):
        def forward(self, x, t, features, mask):
            return torch.zeros_like(x)

    kw = dict(text=WordText(), null=NULL, preset=PRESET, steps=2, guidance_scale=1.0)
    prompts = ["a red circle", "two blue squares", "a red circle"]
    shared = sample(Blind(), prompts, [0], noise="shared", **kw)
    per = sample(Blind(), prompts, [0], noise="per_prompt", **kw)
    assert np.array_equal(shared[0], shared[1])  # one draw for every prompt
    assert not np.array_equal(per[0], per[1]) and np.array_equal(per[0], per[2])  # keyed by the text
    assert np.array_equal(sample(Blind(), prompts[:1], [0], **kw)[0], per[0])  # cpu-tiny: per_prompt default
    rewritten = sample(Blind(), ["a big red circle"], [0], noise_keys=["a red circle"], **kw)
    assert np.array_equal(rewritten[0], per[0])
    with pytest.raises(ValueError, match="noise_keys has 2 texts for 1 prompts"):
        sample(Blind(), ["a"], [0], noise_keys=["a", "b"], **kw)


def test_guidance_rescale_by_hand():
    """With an unconditional prediction of 0 and a conditional one P, CFG at scale s predicts sP; rescaled to
    P's std with share r it predicts (r + (1 - r) s) P. So rescale 1 undoes any scale (the unguided image),
    and rescale 0.5 at scale 5 is plain CFG at scale 3; 0 is the preset's default."""
    pattern = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))

    class Linear(torch.nn.Module):  # the null embedding is zeros, so the unconditional prediction is 0
        def forward(self, x, t, features, mask):
            return features[:, 0, 0].view(-1, 1, 1, 1) / 100 * pattern

    kw = dict(text=WordText(), null=NULL, preset=PRESET, steps=3)
    prompts = ["a red circle", "two"]

    def images(**options):
        return np.stack(sample(Linear(), prompts, [0], **kw, **options)).astype(int)

    assert np.abs(images(guidance_scale=5.0, guidance_rescale=1.0) - images(guidance_scale=1.0)).max() <= 1
    assert np.abs(images(guidance_scale=5.0, guidance_rescale=0.5) - images(guidance_scale=3.0)).max() <= 1
    assert np.array_equal(images(guidance_scale=5.0), images(guidance_scale=5.0, guidance_rescale=0.0))
    assert not np.array_equal(images(guidance_scale=5.0), images(guidance_scale=3.0))
    with pytest.raises(ValueError, match=r"guidance_rescale=1.5 is a share: give a value in \[0, 1\]"):
        images(guidance_scale=5.0, guidance_rescale=1.5)


def colour_benchmark(n: int = 48) -> pd.DataFrame:
    """Single-object captions from the world; the judge checks the named colour appears exactly once, alone."""
    from t2istudy.world.shapes import PALETTE, ShapesWorld

    world, rng, rows = ShapesWorld(seed=123, max_objects=1), np.random.default_rng(123), []
    for i in range(n):
        scene, caption = world.sample(rng)
        colour = scene.objects[0].color
        constraints = [
            {"type": "count", "color": c, "shape": None, "op": "==", "n": int(c == colour)} for c in PALETTE
        ]
        rows.append(
            {
                "id": f"c{i:03d}",
                "prompt": caption,
                "skills": ("attribute",),
                "spec": {"constraints": constraints},
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_short_cpu_small_run_beats_untrained_model_with_the_judge(tmp_path):
    """~4 min on 2 cores: the cpu-small preset, one object per scene, MiniLM `last`, 400 steps of batch 32 at
    lr 2e-3; the pixel judge checks that the named colour appears exactly once and no other colour appears.
    Measured (2026-11-26): trained 0.25 exact / 0.69 of constraints held, untrained 0.02 / 0.50 on 1 thread;
    0.23 / 0.68 vs 0.06 / 0.47 on 2 threads (an untrained model draws grey noise, which already satisfies the
    "no blue" constraints). 200 steps gave only 0.10 vs 0.02, and lr 1e-3 at 400 steps 0.17."""
    from t2istudy.diffusion.sample import sample_run
    from t2istudy.scoring.scorers import get_scorer
    from t2istudy.text.cache import EmbeddingCache

    bench = colour_benchmark()
    opts = TrainOptions(
        encoder="minilm-l6",
        strategy="last",
        preset="cpu-small",
        max_objects=1,
        pool_size=2048,
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "run"),
        max_train_steps=400,
        train_batch_size=32,
        learning_rate=2e-3,
        lr_warmup_steps=20,
        use_ema=False,
        checkpointing_steps=1000,
        report_to="none",
        progress=False,
        num_threads=2,
    )
    run = train(opts)
    judge = get_scorer("judge")
    trained = judge.score(sample_run(run, bench.prompt.tolist(), [0], steps=20, guidance_scale=3.0), bench)

    model, _, null = load_denoiser(run)
    torch.manual_seed(0)
    model.unet = build_unet("cpu-small")  # same text side, untrained U-Net
    text = EmbeddingCache.get_or_build(
        opts.cache_dir, "minilm-l6", "last", bench.prompt.tolist(), progress=False
    )
    untrained = judge.score(
        sample(model, bench.prompt.tolist(), [0], text=text, null=null, preset="cpu-small", steps=20), bench
    )
    assert len(trained) == len(bench) and set(trained["score"]) <= {0.0, 1.0}
    summary = (
        trained["score"].mean(),
        trained["fraction"].mean(),
        untrained["score"].mean(),
        untrained["fraction"].mean(),
    )
    assert untrained["score"].mean() <= 0.1, summary  # grey noise passes a prompt now and then (1-3 of 48)
    assert trained["score"].mean() >= untrained["score"].mean() + 0.1, summary
    assert trained["fraction"].mean() >= untrained["fraction"].mean() + 0.1, summary
