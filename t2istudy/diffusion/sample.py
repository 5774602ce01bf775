"""Sampling with classifier-free guidance: DDIM or DPM-Solver++ from diffusers, batched, deterministic.

The starting noise of image (prompt, seed) comes from a generator seeded by (seed, prompt) (the preset's
``sample_noise = "per_prompt"``): every compared model (encoder, strategy) starts a prompt from the same
noise, so differences between arms are paired, and every prompt of a tier gets its own draw, so a tier's
mean averages over noise as well as prompts. ``"shared"`` seeds by `seed` alone: every prompt starts from
one draw, and the tier's verdict then moves with that draw (by 0.18 overall for one 4,000-step model,
figures/sample_noise.md); cpu-small's record was sampled so. DDIM (eta 0) and DPM-Solver++ are
deterministic after that.

    images = sample_run("runs/train/00003-gemma3-270m-norm_mean", prompts, seeds=[0, 1], out_dir="samples")
    table = scoring.get_scorer("judge").score(images, bench)   # one image per prompt when seeds=[0]
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.utils import make_image_grid
from PIL import Image
from tqdm.auto import tqdm

from t2istudy.diffusion import objectives
from t2istudy.diffusion.checkpoint import load_denoiser
from t2istudy.diffusion.data import to_uint8
from t2istudy.diffusion.model import Preset, get_preset, load_vae
from t2istudy.text.cache import EmbeddingCache, pad_cat
from t2istudy.text.upsample import parse_upsampling, upsample_records, write_upsampled

SAMPLERS = ("ddim", "dpm++")
NOISE_RULES = ("per_prompt", "shared")
# mixed_precision as training names it -> the autocast dtype sampling runs the U-Net and the VAE in
PRECISIONS = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_device() -> torch.device:
    """Where sampling runs when no device is given: where training runs (the first GPU when there is one)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def noise_seed(seed: int, prompt: str, rule: str = "per_prompt") -> int:
    """The generator seed of image (prompt, seed): `seed` itself ("shared"), or the first 63 bits of
    sha256("<seed>\\n<prompt>") ("per_prompt": independent of the prompt's position, batch and arm)."""
    if rule == "shared":
        return int(seed)
    if rule != "per_prompt":
        raise ValueError(f"Unknown sample noise rule {rule!r}: choose one of {', '.join(NOISE_RULES)}.")
    digest = hashlib.sha256(f"{int(seed)}\n{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def make_sampler(name: str, preset: Preset, prediction_type: str):
    """A sampling scheduler sharing the training betas (built from the preset's DDPM config). A flow-matching
    model (prediction_type "flow") is sampled by diffusers' flow Euler scheduler under "ddim", the same
    first-order deterministic step of the probability-flow ODE; it has no DPM-Solver++ here."""
    if prediction_type == objectives.FLOW:
        if name != "ddim":
            raise ValueError(
                f"A flow-matching model samples with the flow Euler scheduler, not {name!r}: pass sampler='ddim'."
            )
        return objectives.flow_scheduler(preset)
    config = preset.noise_scheduler(prediction_type).config
    clip = preset.clip_sample
    if name == "ddim":
        return DDIMScheduler.from_config(
            config, clip_sample=clip, clip_sample_range=1.0, set_alpha_to_one=False
        )
    if name == "dpm++":  # thresholding with max 1.0 = clipping x0 to [-1, 1]
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, thresholding=clip, sample_max_value=1.0
        )
    raise ValueError(f"Unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}.")


@torch.no_grad()
def sample(
    model,
    prompts: Sequence[str],
    seeds: Sequence[int] = (0,),
    *,
    text,
    null: tuple[torch.Tensor, torch.Tensor],
    preset: str | Preset = "cpu-small",
    prediction_type: str = "epsilon",
    sampler: str = "ddim",
    steps: int | None = None,
    guidance_scale: float | None = None,
    guidance_rescale: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    noise: str | None = None,
    noise_keys: Sequence[str] | None = None,
    batch_size: int = 32,
    vae=None,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    precision: str | None = None,
    progress: bool = False,
) -> list[np.ndarray]:
    """One uint8 [H, W, 3] image per (prompt, seed), prompt-major (image i*len(seeds)+j = prompts[i], seeds[j]).

    `model` is a `checkpoint.Denoiser`; `text` anything with `embed(captions) -> (features, mask)` (an
    `EmbeddingCache` or `OnlineText`); `null` the empty-prompt embedding the model was trained with.
    `guidance_rescale` (default the preset's, 0 = plain CFG) mixes in the guided prediction rescaled to the
    conditional one's std (diffusers' ``rescale_noise_cfg``, Lin et al. 2024 sec. 3.4).
    `guidance_interval` (lo, hi) guides only the steps whose noise level, as EDM's sigma
    (`objectives.edm_sigma`), lies in (lo, hi], and takes the conditional prediction alone elsewhere
    (Kynkaanniemi et al. 2024); None guides every step.
    `noise` ("per_prompt" | "shared", default the preset's) picks the starting noise (`noise_seed`);
    `noise_keys` are the texts it is keyed by (default `prompts`; a rewritten prompt keeps its original's).
    Writes `<out_dir>/<prompt index>-s<seed>.png` and `grid.png` (rows = prompts) when out_dir is given.
    `device` (default: the GPU when there is one, as training) holds the U-Net, the VAE and every tensor of
    the loop; `precision` ("no" | "fp16" | "bf16", the run's mixed_precision) autocasts the U-Net and runs
    the VAE in that dtype, as training did. The starting noise is drawn on the CPU either way, so an image
    does not depend on the device it was sampled on beyond float rounding.
    """
    preset = get_preset(preset)
    device = torch.device(device) if device is not None else default_device()
    if precision not in (None, *PRECISIONS):
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)} (or None = no).")
    half = PRECISIONS.get(precision or "no")
    steps = steps or preset.sample_steps
    scale = preset.guidance_scale if guidance_scale is None else guidance_scale
    rescale = preset.guidance_rescale if guidance_rescale is None else guidance_rescale
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance_rescale={rescale} is a share: give a value in [0, 1] (0 = plain CFG).")
    noise = noise or preset.sample_noise
    keys = list(prompts) if noise_keys is None else list(noise_keys)
    if len(keys) != len(prompts):
        raise ValueError(f"noise_keys has {len(keys)} texts for {len(prompts)} prompts: give one per prompt.")
    if not prompts or not seeds:
        raise ValueError("sample() needs at least one prompt and one seed.")
    if preset.vae and vae is None:
        raise ValueError(f"Preset {preset.name} samples latents: pass vae=model.load_vae(<local folder>).")
    model = model.to(device).eval()
    autocast = (  # cuda and cpu autocast; other devices (meta in the tests) run the weights' dtype
        torch.autocast(device.type, dtype=half)
        if half is not None and torch.amp.is_autocast_available(device.type)
        else contextlib.nullcontext()
    )
    if vae is not None:  # the VAE decodes where the latents are, in the dtype training encoded with
        vae = vae.to(device, half or torch.float32)
    jobs = [(i, p, s) for i, p in enumerate(prompts) for s in seeds]
    shape = (preset.latent_channels, preset.latent_size, preset.latent_size)
    images: list[np.ndarray] = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="sample", disable=not progress):
        chunk = jobs[start : start + batch_size]
        n = len(chunk)
        x = torch.stack(
            [
                torch.randn(shape, generator=torch.Generator().manual_seed(noise_seed(s, keys[i], noise)))
                for i, _, s in chunk
            ]
        )
        cond_f, cond_m = text.embed([p for _, p, _ in chunk])
        guided = scale != 1.0
        if guided:
            null_f, null_m = null
            feats, mask = pad_cat(
                [(null_f.expand(n, *null_f.shape[1:]), null_m.expand(n, -1)), (cond_f, cond_m)]
            )
        else:
            feats, mask = cond_f, cond_m
        feats, mask, x = feats.to(device), mask.to(device), x.to(device)
        scheduler = make_sampler(sampler, preset, prediction_type)
        scheduler.set_timesteps(steps)
        x = x * getattr(scheduler, "init_noise_sigma", 1.0)  # the flow scheduler starts at unit noise
        for t in scheduler.timesteps:
            guide = guided and _in_interval(guidance_interval, objectives.edm_sigma(scheduler, t))
            inp = torch.cat([x, x]) if guide else x
            if hasattr(scheduler, "scale_model_input"):
                inp = scheduler.scale_model_input(inp, t)
            # an unguided step of a guided batch: the conditional half of its features alone
            f, m = (feats[n:], mask[n:]) if guided and not guide else (feats, mask)
            with autocast:
                pred = model(inp, t.expand(inp.shape[0]).to(device), f, m).float()
            if guide:
                uncond, cond = pred.chunk(2)
                pred = uncond + scale * (cond - uncond)
                if rescale:
                    # imported here: its module imports the whole SD pipeline and transformers' CLIP
                    # classes (seconds, and torchvision warnings) for one function few samplings use
                    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
                        rescale_noise_cfg,
                    )

                    pred = rescale_noise_cfg(pred, cond, guidance_rescale=rescale)
            x = scheduler.step(pred, t, x).prev_sample
        if vae is not None:
            x = vae.decode((x / vae.config.scaling_factor).to(vae.dtype)).sample
        images.extend(to_uint8(x))
    if out_dir is not None:
        write_images(images, jobs, len(seeds), Path(out_dir))
    return images


def _in_interval(interval: tuple[float, float] | None, sigma: float) -> bool:
    """Whether a step at noise level ``sigma`` is guided: every step without an interval, else lo < sigma <= hi."""
    if interval is None:
        return True
    lo, hi = interval
    if not lo < hi:
        raise ValueError(f"guidance_interval {interval} needs lo < hi (EDM sigmas), e.g. (0.28, 5.42).")
    return lo < sigma <= hi


def write_images(
    images: list[np.ndarray], jobs: list, num_seeds: int, out_dir: Path, max_grid_rows: int = 64
) -> None:
    """One PNG per (prompt, seed) plus a grid (rows = prompts, columns = seeds)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pil = [Image.fromarray(im) for im in images]
    for im, (i, _, s) in zip(pil, jobs, strict=True):
        im.save(out_dir / f"{i:04d}-s{s}.png")
    rows = min(len(pil) // num_seeds, max_grid_rows)
    make_image_grid(pil[: rows * num_seeds], rows=rows, cols=num_seeds).save(out_dir / "grid.png")


def sample_run(
    run_dir: str | Path,
    prompts: Sequence[str],
    seeds: Sequence[int] = (0,),
    *,
    text=None,
    weights: str = "final",
    vae_path: str | None = None,
    prompt_upsampling: dict | str | None = None,
    **kwargs,
) -> list[np.ndarray]:
    """Sample from a finished training run; prompts are embedded with the run's encoder and strategy.

    Without `text`, the prompts get their own cache entry under the run's cache_dir (the encoder loads
    only if that entry is missing). `prompt_upsampling` (None, or `{"backend", "model", "style", ...}` /
    "backend:model[:style]", see `t2istudy.text.upsample`) rewrites the prompts before they are embedded;
    images stay in the order of `prompts` (score them against the original prompts' specs), and the
    rewrites with their template go to `<out_dir>/upsampled_prompts.json` when `out_dir` is given.
    Sampling runs on ``device`` (default: the GPU when there is one) in the run's mixed precision.
    """
    model, opts, null = load_denoiser(run_dir, weights)
    embedded = list(prompts)
    if parse_upsampling(prompt_upsampling) is not None:
        record = upsample_records(embedded, prompt_upsampling)
        embedded = [r["rewritten"] for r in record["prompts"]]
        if kwargs.get("out_dir") is not None:
            write_upsampled(record, Path(kwargs["out_dir"]))
    if text is None:  # embedded where the images are drawn: a GPU job does not encode on its CPU
        text = EmbeddingCache.get_or_build(
            opts.cache_dir,
            opts.encoder,
            opts.strategy,
            embedded,
            max_length=opts.max_length,
            progress=False,
            device=kwargs.get("device") or default_device(),
        )
    if isinstance(text, EmbeddingCache):
        text.check(opts.encoder, opts.strategy)
    vae = None
    if get_preset(opts.preset).vae:
        vae = load_vae(vae_path or opts.vae_path)
    kwargs.setdefault("precision", opts.mixed_precision)  # sample as the run trained: bf16 for sd2-256
    return sample(
        model,
        embedded,
        seeds,
        text=text,
        null=null,
        preset=opts.preset,
        prediction_type=opts.prediction_type,
        vae=vae,
        noise_keys=list(prompts),  # a rewritten prompt starts from its original's noise: paired with it
        **kwargs,
    )
