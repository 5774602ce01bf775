"""Denoiser presets and the text side shared by every encoder.

The study is only fair if everything except the text encoder is held fixed, so the model is a named
preset (one place for every size knob) plus a `TextConditioner` that is the same for every encoder:
optional learned layer weights -> a fixed input scale -> one trainable Linear to cross_attention_dim.
The denoiser is diffusers' SD2-style U-Net; `Preset.backbone` selects a DiT-style transformer instead
(diffusers' PixArt transformer), measured as an alternative (issue 36).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, ModelMixin, PixArtTransformer2DModel, UNet2DConditionModel
from torch import nn

# Preset.backbone -> the diffusers class built from Preset.unet. Both take (sample, timestep=,
# encoder_hidden_states=, encoder_attention_mask=) and save with save_pretrained, so training, sampling and
# checkpoints treat them alike. "pixart": a DiT with adaLN-single timestep modulation and cross-attention to
# the text in every block (diffusers' DiTTransformer2DModel has no cross-attention).
BACKBONES: dict[str, type[ModelMixin]] = {"unet": UNet2DConditionModel, "pixart": PixArtTransformer2DModel}


@dataclass(frozen=True)
class Preset:
    """Everything about the image model that must not change between encoders."""

    name: str
    image_size: int  # pixels of the training images
    latent_channels: int  # 3 = pixel space, 4 = SD latents behind a VAE
    latent_size: int  # spatial size the U-Net sees
    unet: dict  # kwargs for the backbone's class (sample_size/in/out channels filled in by build_unet)
    backbone: str = "unet"  # a key of BACKBONES: "unet" (the study's) or "pixart" (the DiT alternative)
    vae: bool = False  # True: images go through an AutoencoderKL loaded from a local path
    autoencoder: str | None = None  # the t2istudy.autoencoder recipe trained once per machine when no
    # --vae_path is given (small latent presets); None: a VAE path is required (sd2-256)
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"
    zero_terminal_snr: bool = False  # rescale betas so the last step is pure noise (Lin et al. 2024); needs
    # v-prediction, and lets a model set an image's mean brightness (black and white backgrounds)
    timestep_spacing: str = "leading"  # sampling steps; "trailing" starts at the last training timestep
    clip_sample: bool = False  # pixel space: clip the predicted x0 to [-1, 1] while sampling (the cosine
    # schedule's last alpha_bar is ~2e-9, so an unclipped first DDIM step amplifies eps errors ~2e4x)
    guidance_scale: float = 7.0  # CFG default for sampling (the paper's 7.0; small presets tune it)
    guidance_rescale: float = 0.0  # share of the guided prediction pulled to the conditional one's std (Lin
    # et al. 2024 sec. 3.4, against over-exposure under zero-terminal SNR); 0 is plain CFG, every preset's
    sample_steps: int = 25
    sample_noise: str = "per_prompt"  # each (prompt, seed) starts from its own noise, the same in every arm;
    # "shared": every prompt starts from the seed's one draw, so a tier's mean rests on one draw (cpu-small)
    train_defaults: dict = field(default_factory=dict)  # TrainOptions defaults this preset overrides

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet["cross_attention_dim"])

    def noise_scheduler(self, prediction_type: str | None = None) -> DDPMScheduler:
        """The training scheduler; samplers are built from its config so betas always agree."""
        return DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            prediction_type=prediction_type or self.prediction_type,
            clip_sample=False,
            rescale_betas_zero_snr=self.zero_terminal_snr,
            timestep_spacing=self.timestep_spacing,
        )


_SMALL_BLOCKS = {
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 8,
}

# The small latent presets' image side: 32x32 scenes through a shapes autoencoder to 16x16x4 latents, with
# SD2's schedule for latents: its last alpha_bar (~0.005) keeps the first sampling step well posed (the
# pixel presets' cosine schedule ends at ~2e-9 and needs x0 clipping, which latents cannot use).
_SHAPES_LATENTS = {
    "image_size": 32,
    "latent_channels": 4,
    "latent_size": 16,
    "vae": True,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
}

# The latent presets' U-Net: cross-attention at all three levels (16, 8, 4), so a word can reach each
# object's latent cells; 1,763,396 parameters.
_LATENT_UNET = {
    "down_block_types": ("CrossAttnDownBlock2D",) * 3,
    "up_block_types": ("CrossAttnUpBlock2D",) * 3,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "block_out_channels": (32, 64, 64),
    "attention_head_dim": 2,  # diffusers' name for the head count here: 2 heads, as cpu-small
    "cross_attention_dim": 64,
}
_LATENT_TRAIN = {
    # batch 32 at lr 2e-3 reached batch 64 at lr 1e-3's verdict in half the machine-minutes
    # (figures/ladder.csv: both tiers, 1 seed); 3,000 steps ~ 32 machine-minutes under load
    "train_batch_size": 32,
    "learning_rate": 2e-3,
    "lr_warmup_steps": 100,
    "max_train_steps": 3000,
    "use_ema": True,
    "snr_gamma": 5.0,  # Min-SNR-5, as the paper-scale preset; not measured on its own here
    "checkpointing_steps": 500,
    "latents": "cache",  # the autoencoder's latents of the pool, encoded once
}

PRESETS: dict[str, Preset] = {
    # Stable Diffusion 2 base U-Net (865,910,724 parameters) on 32x32x4 latents = 256x256 images.
    "sd2-256": Preset(
        name="sd2-256",
        image_size=256,
        latent_channels=4,
        latent_size=32,
        unet={
            "block_out_channels": (320, 640, 1280, 1280),
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "attention_head_dim": (5, 10, 20, 20),  # diffusers' name; these are SD2's head counts
            "cross_attention_dim": 1024,
            "use_linear_projection": True,
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
        },
        vae=True,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        guidance_scale=7.0,
        train_defaults={
            "train_batch_size": 64,
            "learning_rate": 1e-4,
            "lr_warmup_steps": 10_000,
            "max_train_steps": 500_000,
            "mixed_precision": "bf16",
            "use_ema": True,
            "snr_gamma": 5.0,
            "checkpointing_steps": 5_000,
        },
    ),
    # Pixel space 32x32, 1.7M parameters: ~1.2 s per batch-64 step on 2 quiet cores (docs/training.md).
    "cpu-small": Preset(
        name="cpu-small",
        clip_sample=True,
        image_size=32,
        latent_channels=3,
        latent_size=32,
        unet={
            **_SMALL_BLOCKS,
            "block_out_channels": (32, 64, 64),
            "attention_head_dim": 2,  # 2 heads of width 32: 1.3x faster than 8 of width 8 on CPU
            "cross_attention_dim": 64,
        },
        guidance_scale=3.0,
        sample_noise="shared",  # the record: the cpu-small study was sampled this way
        train_defaults={
            "train_batch_size": 64,
            "learning_rate": 1e-3,
            "lr_warmup_steps": 100,
            "max_train_steps": 800,
            "use_ema": True,
            "checkpointing_steps": 200,
        },
    ),
    # Latent diffusion as SD2 does it, at CPU size: a frozen autoencoder shared by every arm (trained once per
    # machine, t2istudy.autoencoder "shapes-f2c4") turns 32x32 pixels into 16x16x4 latents, encoded once
    # (--latents cache). Cross-attention at every level, so a word can reach each object's 2x2 latent cells.
    "cpu-latent": Preset(
        name="cpu-latent",
        **_SHAPES_LATENTS,
        unet=_LATENT_UNET,
        autoencoder="shapes-f2c4",
        guidance_scale=3.0,
        train_defaults=_LATENT_TRAIN,
    ),
    # The study's small preset (grids/small2.yaml): cpu-latent with the two levers that the ladder measured
    # to help (figures/ladder.csv, docs/training.md): v-prediction on a zero-terminal-SNR schedule and a
    # cosine-decayed learning rate. Same U-Net, autoencoder, batch and steps as cpu-latent.
    "cpu-latent-v": Preset(
        name="cpu-latent-v",
        **_SHAPES_LATENTS,
        unet=_LATENT_UNET,
        autoencoder="shapes-f2c4",
        prediction_type="v_prediction",  # epsilon cannot predict at SNR 0; v can (Salimans & Ho 2022)
        zero_terminal_snr=True,  # the last training step is pure noise, as sampling's first step is
        timestep_spacing="trailing",  # sampling starts at t = 999, the step zero-SNR made pure noise
        guidance_scale=3.0,
        train_defaults={
            **_LATENT_TRAIN,
            "lr_scheduler": "cosine",  # decayed to 0 at max_train_steps: the constant 2e-3 drifted late
        },
    ),
    # Tests and smoke runs of the latent path: cpu-latent's layout with the tiny autoencoder and U-Net.
    "cpu-tiny-latent": Preset(
        name="cpu-tiny-latent",
        **_SHAPES_LATENTS,
        unet={
            **_SMALL_BLOCKS,
            "block_out_channels": (8, 16, 16),
            "attention_head_dim": 4,
            "cross_attention_dim": 16,
        },
        autoencoder="shapes-tiny",
        guidance_scale=3.0,
        train_defaults={
            "train_batch_size": 16,
            "learning_rate": 1e-3,
            "lr_warmup_steps": 10,
            "max_train_steps": 50,
            "checkpointing_steps": 25,
            "latents": "cache",
        },
    ),
    # Tests and smoke runs only: 16x16 pixels, ~0.1M parameters, a step takes tens of milliseconds.
    "cpu-tiny": Preset(
        name="cpu-tiny",
        clip_sample=True,
        image_size=16,
        latent_channels=3,
        latent_size=16,
        unet={
            **_SMALL_BLOCKS,
            "block_out_channels": (8, 16, 16),
            "attention_head_dim": 4,
            "cross_attention_dim": 16,
        },
        guidance_scale=3.0,
        train_defaults={
            "train_batch_size": 16,
            "learning_rate": 1e-3,
            "lr_warmup_steps": 10,
            "max_train_steps": 50,
            "checkpointing_steps": 25,
        },
    ),
}


def get_preset(name: str | Preset) -> Preset:
    """The one place preset names are validated."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}: choose one of {sorted(PRESETS)} (defined in t2istudy/model.py)."
        )
    return PRESETS[name]


def build_unet(preset: str | Preset) -> ModelMixin:
    """A freshly initialised denoiser backbone (the U-Net, or the preset's other backbone); wrap in
    `torch.device('meta')` to count parameters without memory."""
    p = get_preset(preset)
    if p.backbone not in BACKBONES:
        raise ValueError(
            f"Preset {p.name} names backbone {p.backbone!r}, which is not one of {sorted(BACKBONES)}: "
            "fix the preset's backbone field."
        )
    return BACKBONES[p.backbone](
        sample_size=p.latent_size, in_channels=p.latent_channels, out_channels=p.latent_channels, **p.unet
    )


def load_backbone(folder: str | Path) -> ModelMixin:
    """A saved backbone (save_pretrained folder) as the class its config.json names."""
    name = json.loads((Path(folder) / "config.json").read_text()).get("_class_name")
    classes = {cls.__name__: cls for cls in BACKBONES.values()}
    if name not in classes:
        raise ValueError(
            f"{folder} holds a {name!r}, which is not a denoiser this project builds ({sorted(classes)}): "
            "point at a run trained by t2istudy.train."
        )
    return classes[name].from_pretrained(str(folder))


def count_parameters(module: nn.Module) -> int:
    return sum(t.numel() for t in module.parameters())


def load_vae_config(path: str | Path) -> dict:
    """The VAE folder's config (scaling factor, channels) without loading its weights."""
    return json.loads((Path(path) / "config.json").read_text())


def load_vae(path: str | Path | None) -> AutoencoderKL:
    """The frozen SD VAE from a local diffusers folder (nothing downloads at run time)."""
    if path is None or not Path(path).is_dir():
        raise FileNotFoundError(
            f"The sd2-256 preset needs a VAE on disk but {path!r} is not a folder: pass --vae_path pointing at a "
            "diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors), e.g. the 'vae' "
            "subfolder of stabilityai/stable-diffusion-2-base downloaded beforehand."
        )
    vae = AutoencoderKL.from_pretrained(str(path))
    vae.requires_grad_(False).eval()
    return vae


class TextConditioner(nn.Module):
    """Frozen-encoder features -> cross-attention context, identical for every encoder.

    features: [B, T, D] (or [B, T, L, D] for the `learned` strategy: softmax weights over L, trained jointly).
    `input_scale` is a fixed buffer (dataset-wide 1/RMS, or 1) so every encoder enters the projection at
    the same scale; for `learned` it holds one scale per layer, because raw layer norms differ ~1000x.
    Rows without any real token (an empty prompt on a tokenizer without BOS) attend to one zero token.
    """

    def __init__(self, in_width: int, cross_attention_dim: int, num_layers: int | None = None):
        super().__init__()
        self.in_width = in_width
        self.num_layers = num_layers
        self.proj = nn.Linear(in_width, cross_attention_dim)
        self.layer_logits = nn.Parameter(torch.zeros(num_layers)) if num_layers else None
        self.register_buffer("input_scale", torch.ones(num_layers or 1))

    def layer_weights(self) -> torch.Tensor | None:
        return None if self.layer_logits is None else torch.softmax(self.layer_logits, dim=0)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = features.to(self.proj.weight.dtype)
        real = mask.bool()
        # Keep attention well defined without a host sync (no `if empty.any()`): an empty row attends to
        # its first position, whose input is zeroed below with the padding.
        first = torch.zeros_like(real)
        first[:, 0] = True
        attend = real | (first & ~real.any(dim=1, keepdim=True))
        if self.layer_logits is None:
            x = features * self.input_scale
        else:
            if features.dim() != 4 or features.shape[2] != self.num_layers:
                raise ValueError(
                    f"The learned strategy expects features [B, T, {self.num_layers}, D], got "
                    f"{tuple(features.shape)}: the cache or encoder was built for another strategy."
                )
            w = self.layer_weights() * self.input_scale
            x = torch.einsum("btld,l->btd", features, w)
        x = x * real.unsqueeze(-1)  # padding carries no signal even if the encoder left values there
        return self.proj(x), attend

    def config(self) -> dict:
        return {
            "in_width": self.in_width,
            "cross_attention_dim": self.proj.out_features,
            "num_layers": self.num_layers,
        }


def set_input_scale(conditioner: TextConditioner, scale: float | list[float]) -> None:
    values = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    if values.numel() != conditioner.input_scale.numel():
        raise ValueError(
            f"input scale has {values.numel()} values, the conditioner expects {conditioner.input_scale.numel()}."
        )
    conditioner.input_scale.copy_(values)


def replace_preset(preset: Preset, **changes) -> Preset:
    """A preset with some fields changed (e.g. a different U-Net width for an ablation)."""
    return dataclasses.replace(preset, **changes)


# Issue 36's conditioning-capacity levers: cpu-latent-v with one U-Net change each (same autoencoder,
# objective, schedule and training defaults), so a binding score that moves is the change's. cpu-latent-v
# already has cross-attention at every level (16, 8, 4, down and up) and in the mid block (diffusers' default
# UNetMidBlock2DCrossAttn); its text-to-image attention is 32 wide at 16x16, where the objects are placed
# (2x2 latent cells each), and 64 wide below. Parameters are the backbone's (tests/test_model.py counts them).
def _capacity_lever(name: str, unet: dict) -> Preset:
    base = PRESETS["cpu-latent-v"]
    return replace_preset(base, name=name, unet={**base.unet, **unet})


_CAPACITY_LEVERS = [
    # Text context 128 wide instead of 64 (the conditioner projects to it; keys and values read it): more room
    # for which colour goes with which word. 1,833,028 parameters.
    _capacity_lever("cpu-latent-v-xattn128", {"cross_attention_dim": 128}),
    # 4 attention heads instead of 2 at every level (widths 8/16/16): two objects' words can be attended by
    # different heads at once. 1,763,396 parameters (heads split the same width).
    _capacity_lever("cpu-latent-v-heads4", {"attention_head_dim": 4}),
    # 2 transformer layers (self-attention, cross-attention, feed-forward) per attention at 16x16, 1 below:
    # a second look at the text where layout is drawn. 1,832,612 parameters.
    _capacity_lever("cpu-latent-v-attn16x2", {"transformer_layers_per_block": (2, 1, 1)}),
    # 2 transformer layers at every level and in the mid block. 2,413,668 parameters.
    _capacity_lever("cpu-latent-v-attn2", {"transformer_layers_per_block": 2}),
    # 64 channels at 16x16 instead of 32: text-to-image attention 64 wide there (its width is the level's
    # channels), at twice the step's FLOPs (convolutions at 16x16 cost 4x). 2,417,156 parameters.
    _capacity_lever("cpu-latent-v-wide16", {"block_out_channels": (64, 64, 64)}),
]
PRESETS.update({p.name: p for p in _CAPACITY_LEVERS})

# The transformer alternative (issue 36): a DiT on cpu-latent-v's latents, objective and training defaults.
# Patch 2 turns the 16x16x4 latents into 64 tokens of width 128 (4 heads of 32); each of 6 blocks has
# self-attention, cross-attention to the text and a feed-forward, with the timestep through adaLN-single.
# 1,740,432 parameters and 17.8 GFLOP per batch-32 training step, against the U-Net's 1,763,396 and 19.1:
# the same size, with its FLOPs in [batch x 64, 128] matmuls instead of 32-64-channel convolutions.
_DIT = {
    "num_layers": 6,
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "cross_attention_dim": 128,  # the text context as wide as the tokens, as PixArt's
    "patch_size": 2,
}
PRESETS["cpu-latent-v-dit"] = replace_preset(
    PRESETS["cpu-latent-v"], name="cpu-latent-v-dit", backbone="pixart", unet=_DIT
)
# Tests and smoke runs of the DiT path: cpu-tiny's pixels, 2 blocks of width 16.
PRESETS["cpu-tiny-dit"] = replace_preset(
    PRESETS["cpu-tiny"],
    name="cpu-tiny-dit",
    backbone="pixart",
    unet={
        **_DIT,
        "num_layers": 2,
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 16,
    },
)
