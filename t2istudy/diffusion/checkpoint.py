"""A trained model as one module, and loading a finished run's weights back (for sampling and comparing).

The trainer writes final/ (`train.save_final`); everything that reads it lives here, so sampling depends
on the model and the folder layout, not on the training loop.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from t2istudy.diffusion.model import TextConditioner, load_backbone
from t2istudy.diffusion.options import TrainOptions, load_options
from t2istudy.diffusion.train_folder import FINAL


class Denoiser(nn.Module):
    """Backbone (U-Net or DiT) + text conditioner as one module, so DDP, EMA and checkpoints treat them
    together."""

    def __init__(self, unet: nn.Module, conditioner: TextConditioner):
        super().__init__()
        self.unet = unet
        self.conditioner = conditioner

    def forward(
        self, noisy: torch.Tensor, t: torch.Tensor, features: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        context, mask = self.conditioner(features, mask)
        # timestep by name: the U-Net takes it second, the PixArt transformer third
        return self.unet(noisy, timestep=t, encoder_hidden_states=context, encoder_attention_mask=mask).sample


def final_weights(run_dir: str | Path, weights: str = "final") -> dict[str, torch.Tensor]:
    """Every trained tensor of final/ (EMA when trained with it) or final/raw/, in one flat dict.

    The conditioner's names get a ``cond.`` prefix. For comparing runs tensor by tensor (a resumed run
    against an uninterrupted one); ``load_denoiser`` is the way to sample from a run.
    """
    folder = _weights_folder(Path(run_dir), weights)
    return {
        **load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"),
        **{f"cond.{k}": v for k, v in load_file(folder / "conditioner.safetensors").items()},
    }


def _weights_folder(run_dir: Path, weights: str) -> Path:
    """final/ or final/raw/, checked to hold a finished run's weights."""
    folder = run_dir / FINAL if weights == "final" else run_dir / FINAL / "raw"
    if not (folder / "unet").is_dir() or not (folder / "conditioner.safetensors").is_file():
        raise FileNotFoundError(
            f"No trained weights in {folder}: the run has not finished. Resume it with "
            f"--output_dir {run_dir} --resume_from_checkpoint latest."
        )
    return folder


def load_denoiser(run_dir: str | Path, weights: str = "final") -> tuple[Denoiser, TrainOptions, tuple]:
    """(model, options, null embedding) from final/ (EMA if trained with it) or final/raw/."""
    run_dir = Path(run_dir)
    opts, derived = load_options(run_dir)
    folder = _weights_folder(run_dir, weights)

    unet = load_backbone(folder / "unet")
    conditioner = TextConditioner(
        derived["text_width"], unet.config.cross_attention_dim, derived["num_layers"]
    )
    conditioner.load_state_dict(load_file(folder / "conditioner.safetensors"))
    null = load_file(run_dir / FINAL / "null.safetensors")
    return Denoiser(unet, conditioner).eval(), opts, (null["features"], null["mask"].bool())
