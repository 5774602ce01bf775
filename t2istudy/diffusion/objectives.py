"""Training objectives beside the DDPM ones: flow matching, and where on the noise scale training looks.

Why (issue 36): the small models draw single objects but not two bound ones, and the layout of a scene is
decided at the high-noise steps. Two levers live here, both off by default (the study's runs unchanged):

- ``prediction_type = "flow"``: rectified flow as in SD3 (Esser et al. 2024): x_t = (1 - s) x0 + s noise
  for a noise level s in (0, 1), the model predicts the velocity noise - x0, and the U-Net is told the
  timestep s * num_train_timesteps. Sampled with diffusers' `FlowMatchEulerDiscreteScheduler`.
- ``timestep_sampling = "logit_normal"``: the training noise levels drawn as sigmoid(mean + std * z),
  z ~ N(0, 1) (SD3's logit-normal; ``logit_mean`` > 0 leans toward high noise), for flow matching and
  for the DDPM objectives alike (there the level picks the integer timestep). "uniform" is today's draw.

All randomness comes from the step's generator (`train.step_randomness`), so a resumed run repeats an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

FLOW = "flow"
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


def training_scheduler(preset, prediction_type: str):
    """The scheduler whose config training reads: flow matching's, or the preset's DDPM one."""
    if prediction_type == FLOW:
        return flow_scheduler(preset)
    return preset.noise_scheduler(prediction_type)


def flow_scheduler(preset) -> FlowMatchEulerDiscreteScheduler:
    """The flow sampler and training config: no shift (SD3's shift 3 is for 1024 px; 16x16 latents need none)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=preset.num_train_timesteps, shift=1.0)


def timestep_drawer(prediction_type: str, sampling: str, mean: float, std: float, num_timesteps: int):
    """``draw(generator, n) -> timesteps`` for one step's global batch, or None for today's uniform integer
    draw (so the default stream of random numbers is unchanged). Flow timesteps are floats s * T."""
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(
            f"Unknown timestep_sampling {sampling!r}: choose one of {', '.join(TIMESTEP_SAMPLINGS)}."
        )
    if prediction_type != FLOW and sampling == "uniform":
        return None

    def draw(g: torch.Generator, n: int) -> torch.Tensor:
        if sampling == "uniform":  # flow: a level uniform in (0, 1)
            level = torch.rand(n, generator=g).clamp(min=1e-5)
        else:
            level = torch.sigmoid(mean + std * torch.randn(n, generator=g))
        if prediction_type == FLOW:
            return level * num_timesteps
        return (level * num_timesteps).long().clamp(0, num_timesteps - 1)

    return draw


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction_type: str):
    """The noised input at timesteps ``t``: the DDPM scheduler's, or flow matching's straight line."""
    if prediction_type != FLOW:
        return scheduler.add_noise(x0, noise, t)
    s = (t.float() / scheduler.config.num_train_timesteps).view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What a flow model predicts: the velocity d x_t / d s = noise - x0."""
    return noise - x0


def edm_sigma(scheduler, t: torch.Tensor) -> float:
    """The noise level of sampling timestep ``t`` as EDM's sigma (noise std over signal scale), the unit of
    the guidance interval (Kynkaanniemi et al. 2024): sqrt((1 - abar) / abar) for DDPM schedulers, s / (1 - s)
    for flow (inf at pure noise)."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        s = float(t) / scheduler.config.num_train_timesteps
        return float("inf") if s >= 1 else s / (1 - s)
    abar = float(scheduler.alphas_cumprod[int(t)])
    return float("inf") if abar <= 0 else ((1 - abar) / abar) ** 0.5
