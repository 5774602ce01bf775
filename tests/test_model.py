"""Presets, the SD2 parameter count (meta device, no weights), and the text conditioner's arithmetic."""

from dataclasses import replace

import pytest
import torch

from t2istudy.diffusion.model import (
    PRESETS,
    TextConditioner,
    build_unet,
    count_parameters,
    get_preset,
    load_vae,
    set_input_scale,
)


def test_sd2_256_matches_stable_diffusion_2_unet_size():
    with torch.device("meta"):
        unet = build_unet("sd2-256")
    assert count_parameters(unet) == 865_910_724  # SD2 / SD2-base UNet2DConditionModel
    cfg = unet.config
    assert tuple(cfg.block_out_channels) == (320, 640, 1280, 1280)
    assert tuple(cfg.attention_head_dim) == (5, 10, 20, 20)
    assert cfg.cross_attention_dim == 1024 and cfg.use_linear_projection
    assert (cfg.in_channels, cfg.sample_size) == (4, 32)


def test_small_presets_sizes():
    with torch.device("meta"):
        assert count_parameters(build_unet("cpu-small")) == 1_687_075
        assert count_parameters(build_unet("cpu-tiny")) == 108_619
        assert count_parameters(build_unet("cpu-latent")) == 1_763_396  # 4 latent channels, attention x3
        assert count_parameters(build_unet("cpu-tiny-latent")) == 108_764
    latent = get_preset("cpu-latent")
    assert (latent.latent_channels, latent.latent_size, latent.autoencoder) == (4, 16, "shapes-f2c4")
    assert get_preset("cpu-small").guidance_scale == 3.0 and get_preset("sd2-256").guidance_scale == 7.0


CAPACITY_LEVERS = {  # name -> (the one U-Net change to cpu-latent-v, backbone parameters)
    "cpu-latent-v-xattn128": ({"cross_attention_dim": 128}, 1_833_028),
    "cpu-latent-v-heads4": ({"attention_head_dim": 4}, 1_763_396),
    "cpu-latent-v-attn16x2": ({"transformer_layers_per_block": (2, 1, 1)}, 1_832_612),
    "cpu-latent-v-attn2": ({"transformer_layers_per_block": 2}, 2_413_668),
    "cpu-latent-v-wide16": ({"block_out_channels": (64, 64, 64)}, 2_417_156),
}


def test_capacity_levers_change_one_unet_knob_of_cpu_latent_v():
    base = get_preset("cpu-latent-v")
    for name, (change, params) in CAPACITY_LEVERS.items():
        preset = get_preset(name)
        assert replace(preset, name=base.name, unet=base.unet) == base, name  # all else is cpu-latent-v's
        assert {k: v for k, v in preset.unet.items() if base.unet.get(k) != v} == change, name
        with torch.device("meta"):
            assert count_parameters(build_unet(preset)) == params, name
    with torch.device("meta"):
        unet = build_unet(base)
        deep16 = build_unet("cpu-latent-v-attn16x2")
        heads4 = build_unet("cpu-latent-v-heads4")
    assert (
        unet.mid_block.attentions[0].transformer_blocks[0].attn2 is not None
    )  # the base's mid block reads text
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.heads == 2
    assert heads4.down_blocks[0].attentions[0].transformer_blocks[0].attn2.heads == 4
    # 2 transformer layers at 16x16 (first down block, last up block), 1 at 8x8, 4x4 and in the mid block
    layers = [len(b.attentions[0].transformer_blocks) for b in (*deep16.down_blocks, *deep16.up_blocks)]
    assert layers == [2, 1, 1, 1, 1, 2]
    assert len(deep16.mid_block.attentions[0].transformer_blocks) == 1


def test_unknown_backbone_is_a_clear_error():
    bad = replace(get_preset("cpu-tiny"), name="bad", backbone="mamba")
    with pytest.raises(ValueError, match="backbone 'mamba'.*fix the preset"):
        build_unet(bad)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="Unknown preset 'sd3'.*cpu-small"):
        get_preset("sd3")
    assert set(PRESETS) == {
        "sd2-256",
        "cpu-small",
        "cpu-latent",
        "cpu-latent-v",
        "cpu-tiny",
        "cpu-tiny-latent",
        "cpu-latent-v-xattn128",
        "cpu-latent-v-heads4",
        "cpu-latent-v-attn16x2",
        "cpu-latent-v-attn2",
        "cpu-latent-v-wide16",
        "cpu-latent-v-dit",
        "cpu-tiny-dit",
    }


def test_every_preset_train_default_reaches_the_resolved_options():
    """A preset's train_defaults only take effect on fields whose TrainOptions default is None: a fixed
    default once silently kept cpu-latent-v's cosine schedule at constant_with_warmup."""
    from t2istudy.diffusion.options import PRESET_SETTABLE, TrainOptions, resolve_options

    for preset in PRESETS.values():
        assert set(preset.train_defaults) <= PRESET_SETTABLE, preset.name
        resolved = resolve_options(TrainOptions(preset=preset.name, encoder="fake-8"))
        for key, value in preset.train_defaults.items():
            assert getattr(resolved, key) == value, (preset.name, key)
    v = get_preset("cpu-latent-v")
    assert (v.prediction_type, v.zero_terminal_snr, v.timestep_spacing) == ("v_prediction", True, "trailing")
    assert (
        resolve_options(TrainOptions(preset="cpu-latent", encoder="fake-8")).lr_scheduler
        == "constant_with_warmup"
    )
    explicit = TrainOptions(preset="cpu-latent-v", encoder="fake-8", lr_scheduler="linear")
    assert resolve_options(explicit).lr_scheduler == "linear"
    PRESETS["broken"] = replace(PRESETS["cpu-tiny"], name="broken", train_defaults={"logging_steps": 5})
    try:
        with pytest.raises(ValueError, match=r"Preset broken sets \['logging_steps'\].*None default"):
            resolve_options(TrainOptions(preset="broken", encoder="fake-8"))
    finally:
        del PRESETS["broken"]


def test_missing_vae_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--vae_path"):
        load_vae(tmp_path / "nope")


def _identity(cond: TextConditioner) -> None:
    with torch.no_grad():
        cond.proj.weight.copy_(torch.eye(2))
        cond.proj.bias.zero_()


def test_conditioner_scales_projects_and_masks():
    cond = TextConditioner(2, 2)
    _identity(cond)
    set_input_scale(cond, 0.5)
    feats = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    out, out_mask = cond(feats, mask)
    assert torch.equal(out, torch.tensor([[[0.5, 1.0], [1.5, 2.0], [0.0, 0.0]]]))
    assert torch.equal(out_mask, mask)


def test_conditioner_learned_layer_weights_start_uniform():
    cond = TextConditioner(2, 2, num_layers=2)
    _identity(cond)
    set_input_scale(cond, [1.0, 0.5])  # one scale per layer
    feats = torch.tensor([[[[2.0, 0.0], [0.0, 8.0]]]])  # [B=1, T=1, L=2, D=2]
    out, _ = cond(feats, torch.tensor([[True]]))
    assert torch.allclose(out, torch.tensor([[[1.0, 2.0]]]))  # 0.5*[2,0]*1 + 0.5*[0,8]*0.5
    assert torch.allclose(cond.layer_weights(), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="learned strategy expects"):
        cond(torch.zeros(1, 1, 2), torch.tensor([[True]]))


def test_conditioner_empty_prompt_attends_to_one_zero_token():
    cond = TextConditioner(2, 2)
    _identity(cond)
    with torch.no_grad():
        cond.proj.bias.fill_(0.25)
    out, mask = cond(torch.ones(1, 2, 2), torch.zeros(1, 2, dtype=torch.bool))
    assert mask.tolist() == [[True, False]]
    assert torch.equal(out[0, 0], torch.tensor([0.25, 0.25]))
