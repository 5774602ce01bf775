"""The training loop: one function, read top to bottom, identical for every encoder and every machine.

    python -m t2istudy.diffusion.train --encoder gemma3-270m --strategy norm_mean --preset cpu-small
    accelerate launch --num_processes 8 -m t2istudy.diffusion.train --preset sd2-256 --data /data/shards --text online ...

Determinism is by construction: the batch indices, noise, timesteps and caption-dropout draws of step s are
a pure function of (seed, s) for the whole global batch, and each process takes its slice. So a resumed
run repeats an uninterrupted one bit for bit, and N processes reproduce 1 process at the same global batch
(up to float summation order).

Run directory (auto-numbered `runs/train/00003-<encoder>-<strategy>/` unless --output_dir is given; its
layout lives in `t2istudy.diffusion.train_folder`, which `grid status` reads without importing torch):
    options.json   every option, resolved, plus `derived` (input scale, sizes, processes, cache path)
    checkpoints/checkpoint-<step>/   accelerate state (model, optimizer, LR schedule, EMA, RNG)
    logs/          TensorBoard;  train_log.jsonl  step, loss, lr (one line per logging step)
    final/         unet/ (EMA weights when --use_ema), conditioner.safetensors, null.safetensors, summary.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
import typing
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration, broadcast_object_list
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from t2istudy.diffusion import objectives
from t2istudy.diffusion.checkpoint import Denoiser
from t2istudy.diffusion.data import StepBatchSampler
from t2istudy.diffusion.inputs import build_data, build_images, build_text, upsample_captions
from t2istudy.diffusion.latents import sample_latents
from t2istudy.diffusion.model import (
    TextConditioner,
    build_unet,
    count_parameters,
    get_preset,
    load_vae_config,
    set_input_scale,
)
from t2istudy.diffusion.options import TrainOptions, option_help, projection_lr_factor, resolve_options
from t2istudy.diffusion.run_checks import (
    INPUTS,
    check_inputs,
    check_run_folder,
    input_digests,
    new_run_dir,
    planned_options,
)
from t2istudy.diffusion.train_folder import (
    CHECKPOINTS,
    FINAL,
    OPTIONS,
    SUMMARY,
    TRAIN_LOG,
    checkpoint_step,
    complete_checkpoints,
    read_train_log,
    trim_train_log,
)
from t2istudy.staging import staging_folder, stale_temporaries, temporary_name
from t2istudy.text.aggregation import parse_strategy
from t2istudy.text.cache import pad_cat
from t2istudy.text.encoders import encoder_width
from t2istudy.text.upsample import RewrittenText

# ---------------------------------------------------------------------------------------------
# The model being trained


def step_randomness(
    seed: int,
    step: int,
    global_batch: int,
    shape: tuple[int, ...],
    num_timesteps: int,
    p_drop: float,
    draw_timesteps=None,
):
    """Noise, timesteps and caption-dropout draws for the whole global batch of one step
    (``draw_timesteps(generator, n)``: another timestep draw, `objectives.timestep_drawer`)."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, 1]).generate_state(1)[0]))
    if draw_timesteps is None:
        t = torch.randint(0, num_timesteps, (global_batch,), generator=g)
    else:
        t = draw_timesteps(g, global_batch)
    noise = torch.randn((global_batch, *shape), generator=g)
    drop = torch.rand(global_batch, generator=g) < p_drop
    return noise, t, drop


def latent_generators(seed: int, step: int, positions: range) -> list[torch.Generator]:
    """One CPU generator per image of a micro-batch, seeded by (seed, step, its place in the global batch): the
    VAE's latent draw of an image is then the same whether 1 or N processes hold it (diffusers' randn_tensor
    draws row i from generator i on the CPU and moves it to the VAE's device)."""
    return [
        torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, 2, p]).generate_state(1)[0]))
        for p in positions
    ]


def diffusion_loss(
    pred, x0, noise, t, scheduler, prediction_type: str, snr_gamma: float | None
) -> torch.Tensor:
    """MSE to the epsilon / v / flow target, optionally Min-SNR-gamma weighted per sample (Hang et al. 2023;
    DDPM objectives only, `resolve_options` refuses it with flow)."""
    if prediction_type == objectives.FLOW:
        target = objectives.flow_target(x0, noise)
    else:
        target = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(
        dim=tuple(range(1, pred.dim()))
    )
    if snr_gamma is not None and snr_gamma > 0:
        snr = compute_snr(scheduler, t).clamp(min=1e-8)
        clipped = snr.clamp(max=snr_gamma)
        per_sample = per_sample * (clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1))
    return per_sample.mean()


# ---------------------------------------------------------------------------------------------
# The loop


def train(opts: TrainOptions) -> Path:
    """Train one (encoder, strategy) model; returns the run directory. Safe to re-run with --resume."""
    # Set-up: options, threads, run directory, accelerate.
    opts = resolve_options(opts)
    preset = get_preset(opts.preset)
    if opts.num_threads:
        torch.set_num_threads(opts.num_threads)
    t_start = time.time()

    # Run directory: decided on the main process, shared with the others.
    # cpu=True without CUDA: torchrun on a CPU machine then forms one gloo group instead of N solo runs.
    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if state.num_processes == 1:
        # accelerate keeps mixed precision and accumulation in process-wide singletons; a notebook or test
        # that trains twice with different settings would be refused, so single-process runs start clean.
        AcceleratorState._reset_state()
        GradientState._reset_state()
    run_dir = [None]
    if state.is_main_process:
        if opts.output_dir:
            Path(opts.output_dir).mkdir(parents=True, exist_ok=True)
            run_dir[0] = str(Path(opts.output_dir))
        elif opts.resume_from_checkpoint not in (None, "latest"):
            run_dir[0] = str(Path(opts.resume_from_checkpoint).parent.parent)
        elif opts.resume_from_checkpoint == "latest":
            raise ValueError("--resume_from_checkpoint latest needs --output_dir (the run to resume).")
        else:
            run_dir[0] = str(new_run_dir(opts))
    run_dir = Path(broadcast_object_list(run_dir)[0]) if state.num_processes > 1 else Path(run_dir[0])
    # Before anything loads: may this session train here, and with these options?
    ckpt, resumed_with_changes = check_run_folder(
        run_dir, opts, planned_options(opts, preset, state.num_processes)
    )
    if ckpt is None and state.is_main_process and (run_dir / TRAIN_LOG).is_file():
        (run_dir / TRAIN_LOG).unlink()  # a run killed before its first checkpoint starts over: a fresh log

    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=opts.mixed_precision,
        gradient_accumulation_steps=opts.gradient_accumulation_steps,
        log_with=None if opts.report_to == "none" else opts.report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    per_device = opts.train_batch_size
    global_batch = per_device * world * opts.gradient_accumulation_steps

    # Data and text: the training pairs, and the cache or the frozen encoder with its input scale.
    # Folder data: the main process builds the dataset index beside the data, the others then read it.
    with accelerator.main_process_first():
        dataset = build_data(opts, preset)
    captions, rewrites = upsample_captions(opts, dataset.captions, accelerator, run_dir)
    text, rms, cache_path = build_text(opts, captions, accelerator)
    if rewrites is not None:  # the loader yields original captions; embed their rewrites
        text = RewrittenText(text, rewrites)
    # Images: the frozen VAE in the mixed-precision dtype, as in diffusers' train_text_to_image (bf16 encodes
    # 1.6x faster than fp32 on an H100, where fp32 took a third of the sd2-256 loop; figures/gpu/).
    vae_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(opts.mixed_precision, torch.float32)
    with accelerator.main_process_first():
        dataset, vae, latent_cache, opts.vae_path = build_images(
            opts,
            preset,
            dataset,
            accelerator.device,
            vae_dtype,
            opts.progress and accelerator.is_main_process,
        )
    # The inputs' bytes: recorded, and on a resume compared with the record (now that the caches are open).
    inputs = input_digests(opts.encoder, opts.vae_path, cache_path, latent_cache and latent_cache.meta)
    if ckpt is not None and (run_dir / OPTIONS).is_file():
        check_inputs(run_dir, json.loads((run_dir / OPTIONS).read_text()), inputs)
    probe_features, _ = text.embed(dataset.captions[:1])
    num_layers = probe_features.shape[2] if probe_features.dim() == 4 else None
    if (num_layers is not None) != (parse_strategy(opts.strategy).kind == "learned"):
        raise ValueError(
            f"Features of shape {tuple(probe_features.shape)} do not fit strategy {opts.strategy!r}."
        )
    scale = [1.0 / r for r in rms] if opts.input_scale == "rms" else [1.0] * len(rms)

    # Model: U-Net + text conditioner (same initialisation on every process and for every encoder width).
    torch.manual_seed(opts.seed)
    unet = build_unet(preset)
    conditioner = TextConditioner(probe_features.shape[-1], preset.cross_attention_dim, num_layers)
    set_input_scale(conditioner, scale)
    model = Denoiser(unet, conditioner)
    scheduler = objectives.training_scheduler(preset, opts.prediction_type)
    draw_timesteps = objectives.timestep_drawer(
        opts.prediction_type,
        opts.timestep_sampling,
        opts.logit_mean,
        opts.logit_std,
        scheduler.config.num_train_timesteps,
    )
    ema = EMAModel(model.parameters(), decay=opts.ema_decay, use_ema_warmup=True) if opts.use_ema else None

    in_width = int(probe_features.shape[-1])
    state_width = encoder_width(opts.encoder) if opts.projection_lr == "width" else in_width
    lr_factor = projection_lr_factor(opts, in_width, state_width)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, opts.learning_rate, lr_factor),
        lr=opts.learning_rate,
        betas=(opts.adam_beta1, opts.adam_beta2),
        weight_decay=opts.adam_weight_decay,
        eps=opts.adam_epsilon,
    )
    # Stepped by hand once per optimizer step (a prepared scheduler would step once per process).
    lr_scheduler = get_scheduler(
        opts.lr_scheduler,
        optimizer,
        num_warmup_steps=opts.lr_warmup_steps,
        num_training_steps=opts.max_train_steps,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    derived = {
        "input_scale_value": scale,
        "token_rms": rms,
        "text_width": in_width,
        "projection_lr_factor": lr_factor,
        "num_layers": num_layers,
        "unet_parameters": count_parameters(unet),
        "conditioner_parameters": count_parameters(conditioner),
        "num_processes": world,
        "global_batch_size": global_batch,
        "dataset_size": len(dataset),
        "skipped_pairs": dict(getattr(dataset, "skipped", {})),
        "cache_path": cache_path,
        "latent_cache_path": str(latent_cache.path) if latent_cache else None,
        "vae_scaling_factor": float(load_vae_config(opts.vae_path)["scaling_factor"]) if preset.vae else None,
    }

    # Resume: accelerate state (model, optimizer, LR schedule, EMA, RNG) and the log up to that step.
    start_step = 0
    if ckpt is not None:
        try:
            accelerator.load_state(str(ckpt))
        except Exception as err:
            raise ValueError(
                f"Checkpoint {ckpt} cannot be loaded ({type(err).__name__}: {err}). It is probably incomplete or "
                f"corrupt: move it aside and resume from an earlier one in {ckpt.parent}, or start a new run."
            ) from err
        if ema is not None:  # accelerate loads the EMA's shadow weights onto the CPU: back beside the model
            ema.to(accelerator.device)
        start_step = checkpoint_step(ckpt)
        # A killed run logged steps past its checkpoint (or tore its last line): keep the log strictly increasing.
        if accelerator.is_main_process:
            trim_train_log(run_dir, start_step)
    if accelerator.is_main_process:
        record = {**asdict(opts), "derived": derived, INPUTS: inputs}
        if resumed_with_changes:  # which result-neutral options differed, at which resume
            record["resumed_with_changes"] = resumed_with_changes
        (run_dir / OPTIONS).write_text(json.dumps(record, indent=1))
        if opts.report_to != "none":
            flat = {k: v for k, v in asdict(opts).items() if isinstance(v, int | float | str | bool)}
            accelerator.init_trackers("train", config=flat)

    # Per step: randomness, latents, text, loss, update, EMA, log, checkpoint.
    stop_step = min(opts.max_train_steps, opts.stop_after_steps or opts.max_train_steps)
    sampler = StepBatchSampler(
        len(dataset),
        per_device,
        seed=opts.data_seed + 1000 * opts.seed,
        start_step=start_step,
        max_steps=stop_step,
        world=world,
        rank=rank,
        accumulation=opts.gradient_accumulation_steps,
    )
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=opts.dataloader_num_workers)
    shape = (preset.latent_channels, preset.latent_size, preset.latent_size)
    null_f, null_m = text.null(1)

    step, micro, losses, grad_norms = start_step, 0, [], []
    bar = tqdm(
        total=stop_step, initial=start_step, disable=not (opts.progress and accelerator.is_main_process)
    )
    model.train()
    for images, captions in loader:
        # Randomness: noise, timesteps and caption dropout of the whole global batch, from (seed, step).
        if micro == 0:
            noise_all, t_all, drop_all = step_randomness(
                opts.seed,
                step,
                global_batch,
                shape,
                scheduler.config.num_train_timesteps,
                opts.caption_dropout,
                draw_timesteps,
            )
        lo = (micro * world + rank) * per_device
        part = slice(lo, lo + per_device)
        noise, t, drop = (
            noise_all[part].to(accelerator.device),
            t_all[part].to(accelerator.device),
            drop_all[part],
        )
        with accelerator.accumulate(model):
            # Latents: pixels as they are (pixel presets), or the frozen VAE's latents, encoded now or read
            # from the latent cache (cpu-latent, sd2-256 with --latents cache).
            x0 = images.to(accelerator.device)
            if preset.vae:  # one latent draw per image and step, from the same generators either way
                g = latent_generators(opts.seed, step, range(lo, lo + len(x0)))
                if latent_cache is not None:  # images are the cached moments
                    x0 = sample_latents(x0, g, derived["vae_scaling_factor"])
                else:
                    with torch.no_grad():
                        x0 = vae.encode(x0.to(vae.dtype)).latent_dist.sample(generator=g).float()
                        x0 = x0 * vae.config.scaling_factor
            # Text: cached or online features; dropped captions get the empty prompt's.
            features, mask = text.embed(list(captions))
            if drop.any():  # caption dropout: swap in the empty prompt, same encoder and strategy
                kept = [
                    (features[i : i + 1], mask[i : i + 1]) if not d else (null_f, null_m)
                    for i, d in enumerate(drop)
                ]
                features, mask = pad_cat(kept)
            # Loss: epsilon or v target, optionally Min-SNR weighted; a non-finite loss stops the run.
            noisy = objectives.add_noise(scheduler, x0, noise, t, opts.prediction_type)
            pred = model(noisy, t, features.to(accelerator.device), mask.to(accelerator.device))
            loss = diffusion_loss(pred, x0, noise, t, scheduler, opts.prediction_type, opts.snr_gamma)
            all_losses = accelerator.gather(loss.detach().float().reshape(1))
            if not torch.isfinite(all_losses).all():
                last = complete_checkpoints(run_dir)
                raise FloatingPointError(
                    f"Loss became non-finite at step {step} ({all_losses.tolist()}); training stopped before the "
                    f"update. Last good checkpoint: {last[-1] if last else 'none yet'}. Lower --learning_rate, keep "
                    "--max_grad_norm > 0, use --mixed_precision no or bf16, or check --input_scale."
                )
            losses.append(float(all_losses.mean()))
            # Update: backward, clip (the norm is logged), step.
            accelerator.backward(loss)
            if accelerator.sync_gradients:  # the norm is logged; inf = measure without clipping
                limit = opts.max_grad_norm if opts.max_grad_norm > 0 else float("inf")
                grad_norms.append(float(accelerator.clip_grad_norm_(model.parameters(), limit)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        micro = (micro + 1) % opts.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            continue

        # LR schedule and EMA, once per optimizer step.
        lr_scheduler.step()
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
        step += 1
        bar.update(1)
        # Log: mean loss and grad norm since the last record (train_log.jsonl, TensorBoard).
        if step % opts.logging_steps == 0 or step == stop_step:
            record = {
                "step": step,
                "loss": float(np.mean(losses)),
                "grad_norm": float(np.mean(grad_norms)),
                "lr": lr_scheduler.get_last_lr()[0],
            }
            losses, grad_norms = [], []
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)
            if accelerator.is_main_process:
                with open(run_dir / TRAIN_LOG, "a") as f:
                    f.write(json.dumps(record) + "\n")
        # Checkpoint: written to a .tmp folder, then renamed.
        if step % opts.checkpointing_steps == 0 or step == stop_step:
            save_checkpoint(accelerator, run_dir, step, opts.checkpoints_total_limit)
    bar.close()

    # Finish: final/ (EMA weights when enabled), or leave a --stop_after_steps run as a killed one.

    if step < opts.max_train_steps:  # --stop_after_steps: leave it as a killed run would be
        accelerator.end_training()
        return run_dir
    if accelerator.is_main_process:
        save_final(
            accelerator.unwrap_model(model),
            ema,
            run_dir,
            (null_f, null_m),
            {
                "steps": step,
                "wall_seconds_this_session": time.time() - t_start,
                "load_average": os.getloadavg(),
                "last_logged_loss": _last_logged_loss(run_dir),
            },
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


def parameter_groups(model: Denoiser, learning_rate: float, projection_factor: float) -> list:
    """The optimizer's parameters: one list at the shared rate when ``projection_factor`` is 1 (the optimizer
    of a run without the width rule, state dict and checkpoints included), else two groups, the projection's
    at ``learning_rate * projection_factor``."""
    if projection_factor == 1.0:
        return list(model.parameters())
    projection = {id(p) for p in model.conditioner.proj.parameters()}
    return [
        {"params": [p for p in model.parameters() if id(p) not in projection]},
        {"params": list(model.conditioner.proj.parameters()), "lr": learning_rate * projection_factor},
    ]


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, keep: int | None) -> None:
    """Write to checkpoint-<step>.tmp-<host>-<pid>-<random>, then rename: a crash mid-save never looks like a
    checkpoint, and two processes saving the same step never share a folder. The main process names it."""
    final = run_dir / CHECKPOINTS / f"checkpoint-{step}"
    name = [temporary_name(final.name)]
    if accelerator.num_processes > 1:
        name = broadcast_object_list(name)
    tmp = final.with_name(name[0])
    if accelerator.is_main_process:
        for stale in stale_temporaries(final.parent, "checkpoint-"):  # saves cut short by a kill
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if keep:
            for old in complete_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def save_final(model: Denoiser, ema: EMAModel | None, run_dir: Path, null, summary: dict) -> None:
    """final/: the weights used for sampling (EMA when enabled; raw ones in final/raw/)."""
    out = run_dir / FINAL
    tmp = staging_folder(out)  # after removing what killed saves of final/ left behind
    if ema is not None:
        model.unet.save_pretrained(tmp / "raw" / "unet")
        save_file(model.conditioner.state_dict(), tmp / "raw" / "conditioner.safetensors")
        ema.copy_to(model.parameters())
    model.unet.save_pretrained(tmp / "unet")
    save_file(dict(model.conditioner.state_dict()), tmp / "conditioner.safetensors")
    save_file({"features": null[0].contiguous(), "mask": null[1].contiguous()}, tmp / "null.safetensors")
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _last_logged_loss(run_dir: Path) -> float | None:
    logged = read_train_log(run_dir)
    return logged[-1]["loss"] if logged else None


# ---------------------------------------------------------------------------------------------
# Command line


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainOptions field, same name, same default, its comment as its help."""
    parser = argparse.ArgumentParser(
        prog="t2istudy train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(TrainOptions)
    helps = {name: text.replace("%", "%%") for name, text in option_help().items()}  # argparse formats help
    for f in dataclasses.fields(TrainOptions):
        base = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        kind = base[0]
        if kind is bool:
            parser.add_argument(
                f"--{f.name}", type=_parse_bool, nargs="?", const=True, default=f.default, help=helps[f.name]
            )
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=f.default, help=helps[f.name])
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        opts = TrainOptions(**vars(args))
    except ValueError as err:  # a value out of range: a usage error naming the flag, before anything loads
        parser.error(str(err))
    run_dir = train(opts)
    if PartialState().is_main_process:
        print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
