"""The DiT backbone (issue 36's transformer alternative) goes through the U-Net's Denoiser, trainer, final/
folder, loader and sampler unchanged: a forward pass's shape, a tiny run, and its weights read back."""

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from helpers import TINY_POOL, build_tiny_cache, tiny_train_options

from t2istudy.diffusion.checkpoint import Denoiser, final_weights, load_denoiser
from t2istudy.diffusion.data import shapes_pool
from t2istudy.diffusion.model import TextConditioner, build_unet, count_parameters, get_preset
from t2istudy.diffusion.sample import sample_run
from t2istudy.diffusion.train import train
from t2istudy.diffusion.train_folder import read_train_log
from t2istudy.text.cache import EmbeddingCache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return build_tiny_cache(tmp_path_factory.mktemp("cache"))


def test_dit_preset_is_patch_2_on_the_latents_with_cross_attention_in_every_block():
    preset = get_preset("cpu-latent-v-dit")
    with torch.device("meta"):
        dit = build_unet(preset)
    assert isinstance(dit, PixArtTransformer2DModel) and count_parameters(dit) == 1_740_432
    assert (dit.config.patch_size, dit.config.sample_size, dit.config.in_channels) == (2, 16, 4)
    assert dit.config.out_channels == 4  # no learned variance channels
    assert len(dit.transformer_blocks) == 6
    assert all(b.attn2 is not None and b.attn2.to_k.in_features == 128 for b in dit.transformer_blocks)
    base = get_preset("cpu-latent-v")  # everything but the backbone is cpu-latent-v's
    assert (preset.prediction_type, preset.zero_terminal_snr, preset.train_defaults) == (
        base.prediction_type,
        base.zero_terminal_snr,
        base.train_defaults,
    )


def test_dit_denoiser_forward_shape_and_text_mask():
    preset = get_preset("cpu-latent-v-dit")
    torch.manual_seed(0)
    model = Denoiser(build_unet(preset), TextConditioner(8, preset.cross_attention_dim)).eval()
    x, t = torch.randn(3, 4, 16, 16), torch.tensor([0, 500, 999])
    feats, mask = torch.randn(3, 5, 8), torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.bool)
    with torch.no_grad():
        out = model(x, t, feats, mask)
        padded = feats.clone()
        padded[:, 3:] = 100.0  # masked tokens must not matter
        again = model(x, t, padded, mask)
        other_text = model(x, t, feats.flip(1), mask)
    assert out.shape == (3, 4, 16, 16)
    assert torch.equal(out, again)
    assert not torch.allclose(out, other_text)  # the text reaches the output


def test_dit_trains_saves_loads_and_samples_through_the_unets_code(cache_dir, tmp_path, monkeypatch):
    run = train(tiny_train_options(cache_dir, tmp_path / "dit", preset="cpu-tiny-dit", use_ema=True))
    log = read_train_log(run)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    for which in ("final", "raw"):
        model, _, _ = load_denoiser(run, which)
        assert isinstance(model.unet, PixArtTransformer2DModel)
        saved = final_weights(run, which)
        loaded = {
            **model.unet.state_dict(),
            **{f"cond.{k}": v for k, v in model.conditioner.state_dict().items()},
        }
        assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    torch.manual_seed(0)
    fresh = build_unet("cpu-tiny-dit").state_dict()
    raw = final_weights(run, "raw")
    assert any(not torch.equal(fresh[k], raw[k]) for k in fresh)  # six steps moved the weights
    captions = shapes_pool(TINY_POOL, 0, get_preset("cpu-tiny").image_size).captions
    text = EmbeddingCache.find(cache_dir, "fake-8", "norm_mean", captions)
    images = sample_run(run, captions[:2], [0], text=text, steps=2)
    assert len(images) == 2 and images[0].shape == (16, 16, 3)
    asked = {}  # without a cache given, the prompts are embedded on the sampling device
    spy = lambda *a, **kw: asked.update(kw) or text  # noqa: E731
    monkeypatch.setattr(EmbeddingCache, "get_or_build", spy)
    device = torch.device("cpu")  # the sampling device given, not an equal default made afresh
    sample_run(run, captions[:1], [0], steps=1, device=device)
    assert asked["device"] is device
