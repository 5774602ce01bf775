"""What a training run reads: the image pairs, the frozen VAE or its latent cache, the (upsampled) captions and
the text side (the embedding cache or the frozen encoder online). Each builder is called once by ``train()``."""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator

from t2istudy.diffusion.autoencoder import get_or_train
from t2istudy.diffusion.data import FolderPairs, shapes_pool
from t2istudy.diffusion.latents import LatentCache, LatentPairs
from t2istudy.diffusion.model import Preset, get_preset, load_vae
from t2istudy.diffusion.options import TrainOptions
from t2istudy.diffusion.run_checks import check_vae_fits
from t2istudy.text.cache import EmbeddingCache, OnlineText, caption_hash, slug, token_rms
from t2istudy.text.encoders import load_encoder
from t2istudy.text.upsample import parse_upsampling, upsample_records, write_upsampled


def build_data(opts: TrainOptions, preset: Preset):
    if opts.data == "shapes":
        return shapes_pool(
            opts.pool_size,
            opts.data_seed,
            preset.image_size,
            opts.max_objects,
            opts.colourless_captions,
            named_captions=bool(opts.named_captions),
            two_object_share=opts.two_object_share,
        )
    return FolderPairs(opts.data, preset.image_size, on_bad=opts.on_bad, verify_images=opts.verify_images)


def pool_key(opts: TrainOptions) -> tuple:
    """The options `build_data` reads: runs with equal keys train on the same pool (built once per key)."""
    fields = ("data", "pool_size", "data_seed", "max_objects", "colourless_captions", "named_captions")
    return tuple(getattr(opts, f) for f in (*fields, "two_object_share", "preset"))


def data_id(opts: TrainOptions, dataset) -> str:
    """What identifies the training images for the latent cache: the source, its size and its captions."""
    if opts.data == "shapes":
        source = f"shapes-n{opts.pool_size}-d{opts.data_seed}-o{opts.max_objects}-r{get_preset(opts.preset).image_size}"
        source += (
            f"-c{opts.colourless_captions:g}" if opts.colourless_captions else ""
        )  # default: ids unchanged
        source += "-named" if opts.named_captions else ""
        source += f"-two{opts.two_object_share:g}" if opts.two_object_share is not None else ""
    else:
        source = f"{slug(str(Path(opts.data).resolve()))[-48:]}-n{len(dataset)}"
    return f"{source}-{caption_hash(dataset.captions)}"


def build_images(opts: TrainOptions, preset: Preset, dataset, device, dtype, progress: bool):
    """The image side: (dataset, vae, latent cache, vae path). Pixel presets: the dataset alone. VAE presets:
    the frozen VAE (--vae_path, else the preset's own autoencoder, trained once per machine); with
    --latents cache the dataset's images are replaced by their cached latent moments and no VAE is returned."""
    if not preset.vae:
        return dataset, None, None, opts.vae_path
    vae_path = opts.vae_path
    if vae_path is None and preset.autoencoder:
        vae_path = str(get_or_train(preset.autoencoder, opts.autoencoder_dir, progress=progress))
    check_vae_fits(preset, vae_path)  # before the VAE loads and any image is encoded
    vae = load_vae(vae_path).to(device, dtype)
    if opts.latents != "cache":
        return dataset, vae, None, vae_path
    cache = LatentCache.get_or_build(
        opts.latent_cache_dir,
        vae,
        dataset,
        data_id(opts, dataset),
        batch_size=opts.encode_batch_size,
        progress=progress,
    )
    return LatentPairs(cache, dataset.captions), None, cache, vae_path


def upsample_captions(
    opts: TrainOptions, captions: list[str], accelerator: Accelerator, run_dir: Path
) -> tuple[list[str], dict[str, str] | None]:
    """The caption pool rewritten once by `--caption_upsampling` (main process first; the others read the
    rewrite cache), and the original -> rewrite map; (captions, None) without upsampling.

    The embedding cache is then built from the rewrites, so its key (the caption hash) differs from the
    plain pool's; the rewrites and their template are kept in the run folder.
    """
    spec = parse_upsampling(opts.caption_upsampling, cache_path=str(Path(opts.cache_dir) / "upsample.sqlite"))
    if spec is None:
        return captions, None
    unique = sorted(set(captions))
    with accelerator.main_process_first():
        record = upsample_records(unique, spec)
    if accelerator.is_main_process:
        write_upsampled(record, run_dir)
    rewrites = {r["original"]: r["rewritten"] for r in record["prompts"]}
    return [rewrites[c] for c in captions], rewrites


def build_text(opts: TrainOptions, captions: list[str], accelerator: Accelerator):
    """The cache (built once, by the main process) or the frozen encoder, plus its input-scale statistic."""
    if opts.text == "cache":
        with accelerator.main_process_first():
            text = EmbeddingCache.get_or_build(
                opts.cache_dir,
                opts.encoder,
                opts.strategy,
                captions,
                max_length=opts.max_length,
                batch_size=opts.encode_batch_size,
                progress=opts.progress and accelerator.is_main_process,
                device=accelerator.device,  # a GPU job encodes its captions on its GPU, as --text online does
            )
        return text.check(opts.encoder, opts.strategy), text.token_rms, str(text.path)
    encoder = load_encoder(
        opts.encoder, device=accelerator.device, max_length=opts.max_length, dtype=opts.text_dtype
    )
    text = OnlineText(encoder, opts.strategy, opts.encode_batch_size)
    # the statistic the cache would compute, on a fixed subset (of the first 65,536: a paper-scale caption
    # column is memory-mapped, and a set of all 46M captions would be built in every process)
    probe = sorted(set(captions[:65_536]))[:512]
    return text, token_rms(*text.embed(probe)).tolist(), None
