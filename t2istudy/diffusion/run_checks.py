"""Whether this session may train in a run folder, with these options: the checks made before anything loads.

A fresh start never overwrites a trained or checkpointed run; a resume refuses what would change the result and
records what would not; a model trained earlier is reused only for the options it was trained with.

What changes the result is the options and the inputs' bytes: the VAE's weights, a local encoder's weights,
the embedding and latent cache entries. options.json records the inputs' digests (``inputs``, by
``t2istudy.identity``); a resume compares them twice: before anything loads (the VAE and encoder folders), and
once the caches are open (their done-marks' checksums).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

from t2istudy.diffusion.autoencoder import autoencoder_dir, get_or_train
from t2istudy.diffusion.model import Preset, get_preset, load_vae_config
from t2istudy.diffusion.options import TrainOptions, resolve_options
from t2istudy.diffusion.train_folder import (
    FINAL,
    OPTIONS,
    RESULT_NEUTRAL,
    changed_options,
    checkpoint_step,
    complete_checkpoints,
    describe_differences,
    read_options,
    result_changing_differences,
)
from t2istudy.identity import content_digest
from t2istudy.text.cache import slug
from t2istudy.text.registry import local_weights

INPUTS = "inputs"  # options.json: digest of each input that decides the result
INPUT_NAMES = {
    "vae": "the VAE (autoencoder) weights",
    "encoder": "the local encoder's weights",
    "embedding_cache": "the embedding cache entry",
    "latent_cache": "the latent cache entry",
}


def new_run_dir(opts: TrainOptions) -> Path:
    """EDM-style auto-numbered run folder: <runs_root>/<00000>-<encoder>-<strategy>."""
    root = Path(opts.runs_root)
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[:5]) for p in root.iterdir() if p.name[:5].isdigit()]
    run = root / f"{max(numbers, default=-1) + 1:05d}-{slug(opts.encoder)}-{slug(opts.strategy)}"
    run.mkdir()
    return run


def find_checkpoint(run_dir: Path, which: str) -> Path:
    if which == "latest":
        found = complete_checkpoints(run_dir)
        if not found and (run_dir / FINAL).is_dir():
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: {run_dir} is trained (final/ exists) and has no checkpoint left "
                "to train further from (they are deleted once final/ is written unless kept). Use final/ as it "
                "is, or train a longer run in a new --output_dir."
            )
        if not found:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no checkpoint in {run_dir / 'checkpoints'}; drop the flag to "
                "start fresh, or point --output_dir at the run you want to resume."
            )
        return found[-1]
    path = Path(which)
    if not path.is_dir() or checkpoint_step(path) is None:
        raise FileNotFoundError(
            f"Checkpoint {which!r} is not a checkpoint-<step> folder: pass 'latest' or a folder from "
            f"{run_dir / 'checkpoints'}."
        )
    return path


def planned_options(opts: TrainOptions, preset: Preset, world: int) -> dict:
    """What options.json will record for this session, as far as it is known before anything loads: the
    resolved options, the preset's own autoencoder as the VAE path, and the global batch."""
    planned = asdict(opts)
    if opts.vae_path is None and preset.autoencoder:  # what build_images will record
        planned["vae_path"] = str(autoencoder_dir(preset.autoencoder, opts.autoencoder_dir))
    global_batch = opts.train_batch_size * world * opts.gradient_accumulation_steps
    return {**planned, "derived": {"global_batch_size": global_batch}}


def check_reusable(run_dir: str | Path, opts: TrainOptions) -> None:
    """Refuse to reuse a model trained earlier (a run's ``shared_train_dir``) for options it was not trained
    with: sampling it would credit the wrong arm. Options that do not change the result may differ, and so
    may the number of processes (a model trained on 8 GPUs is sampled anywhere)."""
    run_dir = Path(run_dir)
    opts = resolve_options(opts)
    planned = planned_options(opts, get_preset(opts.preset), world=1)
    trained = read_options(run_dir)  # unlike a resume, a longer max_train_steps is a different model here
    refused = {
        k: v
        for k, v in changed_options(trained, planned).items()
        if k not in RESULT_NEUTRAL and k != "global_batch_size"
    }
    if refused:
        raise ValueError(
            f"{run_dir} holds a model trained with other options than this run asks for (recorded in "
            f"{run_dir / OPTIONS} -> asked now):\n{describe_differences(refused, trained)}\n"
            "Point shared_train_dir at a model trained with these options, or leave it empty to train one."
        )
    # the same options over other bytes (a VAE retrained in place, a local encoder's file replaced) are
    # another model's inputs: the sampler would encode prompts with an encoder the model never saw
    check_inputs(run_dir, trained, input_digests(opts.encoder, planned.get("vae_path")), reuse=True)


def check_run_folder(run_dir: Path, opts: TrainOptions, planned: dict) -> tuple[Path | None, list[dict]]:
    """Whether this session may train in ``run_dir``; returns (checkpoint to resume, resumed_with_changes).

    A fresh start never overwrites a trained run (final/) or a checkpointed one; a resume refuses options
    that change the result (``result_changing_differences``) and records the ones that do not.
    """
    if not opts.resume_from_checkpoint:
        saved = complete_checkpoints(run_dir)
        if (run_dir / FINAL).is_dir() or saved:
            what = "is trained (final/ exists)" if (run_dir / FINAL).is_dir() else f"has {saved[-1].name}"
            raise FileExistsError(
                f"{run_dir} {what}; training it again from step 0 would overwrite it and repeat its log. To "
                "continue it, add --resume_from_checkpoint latest (with a larger --max_train_steps to train "
                "further); to start over, pass a new --output_dir, or delete the folder yourself."
            )
        return None, []
    ckpt = find_checkpoint(run_dir, opts.resume_from_checkpoint)
    if not (run_dir / OPTIONS).is_file():
        warnings.warn(f"{run_dir / OPTIONS} is missing: the resumed options cannot be checked.", stacklevel=2)
        return ckpt, []
    old = read_options(run_dir)
    refused = result_changing_differences(old, planned)
    if refused:
        raise ValueError(
            f"Cannot resume {run_dir} with options that change the result (recorded in {run_dir / OPTIONS} "
            f"-> given now):\n{describe_differences(refused, old)}\nResume with the recorded values (drop these "
            "flags or give the old ones), or train the new options as a new run: a new --output_dir, or delete "
            f"{run_dir} yourself. Options that do not change the result (threads, logging, checkpointing, "
            "locations, stop_after_steps) may differ."
        )
    # Inputs known before anything loads: the VAE folder (a damaged copy of a released autoencoder is
    # replaced from the release first: the same bytes as before) and a local encoder's weights.
    vae_path, autoencoder = planned.get("vae_path"), get_preset(opts.preset).autoencoder
    if opts.vae_path is None and autoencoder and Path(vae_path or "").is_dir():
        get_or_train(autoencoder, opts.autoencoder_dir, progress=False)
    check_inputs(run_dir, old, input_digests(opts.encoder, vae_path))
    history = list(old.get("resumed_with_changes", []))
    changes = {k: list(v) for k, v in changed_options(old, planned).items() if k != "resume_from_checkpoint"}
    if changes:
        history.append({"step": checkpoint_step(ckpt), "changes": changes})
    return ckpt, history


def input_digests(
    encoder: str,
    vae_path: str | None,
    cache_path: str | None = None,
    latent_cache_meta: dict | None = None,
) -> dict[str, str]:
    """The digest of each input of a run that is known (``INPUT_NAMES``): a VAE or encoder given as a local
    folder (a Hub id has no bytes here), a cache entry's done-mark checksum."""
    found = {}
    if vae_path and Path(vae_path).is_dir():
        found["vae"] = content_digest(vae_path)
    weights = local_weights(encoder)
    if weights is not None:
        found["encoder"] = content_digest(weights)
    if cache_path and (Path(cache_path) / "meta.json").is_file():
        checksum = json.loads((Path(cache_path) / "meta.json").read_text()).get("checksum")
        if checksum:
            found["embedding_cache"] = checksum
    if latent_cache_meta and latent_cache_meta.get("checksum"):
        found["latent_cache"] = latent_cache_meta["checksum"]
    return found


def check_inputs(run_dir: Path, recorded: dict, now: dict[str, str], reuse: bool = False) -> None:
    """Refuse to resume ``run_dir`` (or, ``reuse``, to sample its model for another run) when an input
    recorded in its options.json has other bytes now, listing every difference (an input not recorded, by a
    run of an earlier version, is not compared)."""
    old = recorded.get(INPUTS) or {}
    changed = {k: (old[k], v) for k, v in now.items() if k in old and old[k] != v}
    if changed:
        where = {"vae": recorded.get("vae_path"), "encoder": recorded.get("encoder")}
        lines = "\n".join(
            f"  {INPUT_NAMES[k]}" + (f" ({where[k]})" if where.get(k) else "") + f": digest {a} -> {b}"
            for k, (a, b) in changed.items()
        )
        what = f"reuse the model in {run_dir}" if reuse else f"resume {run_dir}"
        fix = (
            "leave shared_train_dir empty to train a model on the new inputs"
            if reuse
            else f"train with the new inputs as a new run: a new --output_dir, or delete {run_dir} yourself"
        )
        raise ValueError(
            f"Cannot {what}: inputs that decide the result have other bytes than when it was "
            f"trained (recorded in {run_dir / OPTIONS} under '{INPUTS}' -> found now):\n{lines}\nPut the "
            f"original files back (a cache entry is rebuilt from its VAE or encoder), or {fix}."
        )


def check_vae_fits(preset: Preset, vae_path: str | Path) -> None:
    """Refuse a VAE whose latents do not fit the preset's U-Net, from its config.json alone: before the VAE
    loads and before any image is encoded (a mismatch otherwise surfaced as a raw tensor-size error at the
    first step, after the whole latent cache was built). AutoencoderKL halves the size once per level but
    the last, so its latents are image_size / 2**(levels - 1) wide with `latent_channels` channels."""
    config_file = Path(vae_path) / "config.json"
    if not config_file.is_file():
        return  # load_vae names the missing folder with its fix
    config = load_vae_config(vae_path)
    factor = 2 ** (len(config.get("block_out_channels", [0])) - 1)
    got = (int(config.get("latent_channels", 4)), preset.image_size // factor)
    want = (preset.latent_channels, preset.latent_size)
    if got != want or preset.image_size % factor:
        raise ValueError(
            f"The VAE in {vae_path} turns {preset.image_size}x{preset.image_size} images into {got[1]}x{got[1]}x"
            f"{got[0]} latents (downscaling {factor}x), but preset {preset.name} trains on {want[1]}x{want[1]}x"
            f"{want[0]} latents: pass a --vae_path whose latents are {want[1]}x{want[1]}x{want[0]} at "
            f"{preset.image_size} px (downscaling {preset.image_size // want[1]}x), or a preset made for this VAE."
        )
