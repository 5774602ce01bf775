"""A small autoencoder for the shapes world, trained once and frozen: the small presets' "VAE".

Why: Stable Diffusion 2 trains its U-Net on the latents of a frozen VAE shared by every model. The small
latent presets do the same, so the U-Net works on 16x16 latents instead of 32x32 pixels and the same
CPU minutes buy ~4x the steps. The autoencoder is a diffusers ``AutoencoderKL`` (the class SD2's VAE is),
so training, sampling and the latent cache run one code path at both scales: a run points ``--vae_path``
at this folder exactly as a paper-scale run points it at SD2's VAE.

The autoencoder is a pure function of its recipe: fresh shapes-world scenes every step, drawn from
seeded generators, fixed initialization. ``get_or_train`` trains it once per machine into
``cache/autoencoders/<recipe>-<hash>/`` and every arm of a study loads the same folder. Training scenes
come from the training world, so no held-out composition is ever seen by the autoencoder either.

The package ships the ``shapes-f2c4`` autoencoder that its recipe trained (``t2istudy/data/autoencoders/``,
2.5 MB; ~16 min on one core), as SD2 ships its VAE: a fresh machine copies it instead of training, and
every machine's study then shares the same frozen weights. The release's folder name is the recipe's
hash, so a changed recipe never picks up a stale release; it is trained instead.

``shapes-f2c4r`` is the same autoencoder trained on varied renders (``varied_render``: jittered colours,
other object sizes, hard to soft edges), for scenes another renderer drew; the study's protocol
(``cpu-latent-v``) keeps ``shapes-f2c4``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from t2istudy.diffusion.data import to_tensor
from t2istudy.identity import content_digest, move_aside
from t2istudy.staging import staging_folder
from t2istudy.world.shapes import BACKGROUNDS, PALETTE, Scene, ShapesWorld, render


@dataclass(frozen=True)
class AutoencoderRecipe:
    """Everything that decides the trained autoencoder (its folder name hashes all of it)."""

    name: str
    image_size: int = 32  # pixels of the images it encodes (the preset's image_size)
    latent_channels: int = 4  # SD's VAE uses 4
    block_out_channels: tuple[int, ...] = (32, 64)  # one block per level; len - 1 halvings of the side
    layers_per_block: int = 1
    norm_num_groups: int = 8
    steps: int = 1500  # optimizer steps on fresh scenes (MSE 0.0017 at the end; the judge reads >= 99.7% of
    # reconstructed benchmark scenes right, tests/test_latent.py)
    batch_size: int = 32
    learning_rate: float = 2e-3  # cosine-decayed to 0 over `steps`
    kl_weight: float = 1e-6  # SD's VAE regularizes its latents lightly; here only to keep them bounded
    seed: int = 0

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.block_out_channels) - 1)

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return f"{self.name}-{hashlib.sha1(blob).hexdigest()[:10]}"


@dataclass(frozen=True)
class RobustAutoencoderRecipe(AutoencoderRecipe):
    """A recipe whose training scenes vary as another renderer's would (``varied_render``): colours off the
    palette, other object sizes, hard or soft edges from other resampling filters. The study's renderer
    draws exact palette colours with box-filtered edges; a decoder trained only on those misreads scenes
    drawn otherwise (shapes-f2c4: blue for green on black backgrounds). A subclass, so the recipes
    before it keep their fields, their hashes and their releases."""

    varied_share: float = 0.75  # share of each batch drawn by varied_render (the rest: shapes.render)
    colour_jitter: int = 24  # levels per channel, either way, for every colour (background included)
    size_scale: tuple[float, float] = (0.8, 1.0)  # each object's side times a factor drawn from this range


RECIPES: dict[str, AutoencoderRecipe] = {
    # 32x32x3 pixels -> 16x16x4 latents (3x fewer numbers); what the cpu-latent preset trains on.
    "shapes-f2c4": AutoencoderRecipe(name="shapes-f2c4"),
    # shapes-f2c4 trained on varied renders (issue 36): what a new preset may use; cpu-latent-v keeps f2c4.
    "shapes-f2c4r": RobustAutoencoderRecipe(name="shapes-f2c4r", steps=2000),
    # Tests and smoke runs: a few steps, judged only for plumbing.
    "shapes-tiny": AutoencoderRecipe(
        name="shapes-tiny", block_out_channels=(8, 16), norm_num_groups=4, steps=20, batch_size=16
    ),
}


def get_recipe(name: str | AutoencoderRecipe) -> AutoencoderRecipe:
    if isinstance(name, AutoencoderRecipe):
        return name
    if name not in RECIPES:
        raise ValueError(
            f"Unknown autoencoder recipe {name!r}: choose one of {sorted(RECIPES)} (t2istudy/autoencoder.py)."
        )
    return RECIPES[name]


def build_autoencoder(recipe: AutoencoderRecipe) -> AutoencoderKL:
    """A freshly initialised AutoencoderKL of the recipe's shape (no attention: the scenes are local)."""
    levels = len(recipe.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=recipe.block_out_channels,
        layers_per_block=recipe.layers_per_block,
        latent_channels=recipe.latent_channels,
        norm_num_groups=recipe.norm_num_groups,
        sample_size=recipe.image_size,
        mid_block_add_attention=False,
    )


_FILTERS = (  # how a supersampled canvas is brought down: soft (box) to sharp with ringing (Lanczos)
    Image.Resampling.BOX,
    Image.Resampling.BILINEAR,
    Image.Resampling.HAMMING,
    Image.Resampling.BICUBIC,
    Image.Resampling.LANCZOS,
)


def varied_render(scene: Scene, rng: np.random.Generator, recipe: RobustAutoencoderRecipe) -> np.ndarray:
    """``scene`` as uint8 [S, S, 3] the way another renderer might draw it: every colour jittered, each
    object's side scaled, drawn on a 1x to 8x canvas (1x: aliased edges) and brought down by a random
    filter. Positions, shapes and colour names stay those of the scene, so its caption stays true."""
    factor = int(rng.choice([1, 2, 4, 8]))
    side = recipe.image_size * factor
    low, high = recipe.size_scale

    def jitter(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
        shift = rng.integers(-recipe.colour_jitter, recipe.colour_jitter + 1, size=3)
        return tuple(int(v) for v in np.clip(np.asarray(rgb) + shift, 0, 255))

    image = Image.new("RGB", (side, side), jitter(BACKGROUNDS[scene.background]))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        half = obj.size * float(rng.uniform(low, high)) * side
        x, y = obj.x * side, obj.y * side
        box = (x - half, y - half, x + half - 1, y + half - 1)
        fill = jitter(PALETTE[obj.color])
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=fill)
    if factor == 1:
        return np.asarray(image, dtype=np.uint8)
    size = (recipe.image_size, recipe.image_size)
    return np.asarray(image.resize(size, _FILTERS[int(rng.integers(len(_FILTERS)))]), dtype=np.uint8)


def scene_batch(recipe: AutoencoderRecipe, step: int) -> torch.Tensor:
    """The fresh training images of one step, [B, 3, H, W] in [-1, 1], a pure function of (seed, step).
    A ``RobustAutoencoderRecipe`` draws its ``varied_share`` of them with ``varied_render``."""
    rng = np.random.default_rng([recipe.seed, step, 7])
    if not isinstance(recipe, RobustAutoencoderRecipe):
        images, _, _ = ShapesWorld(seed=recipe.seed).batch(recipe.batch_size, rng, recipe.image_size)
        return torch.stack([to_tensor(im) for im in images])
    world = ShapesWorld(seed=recipe.seed)
    images = []
    for _ in range(recipe.batch_size):
        scene = world.sample_scene(rng)
        varied = rng.random() < recipe.varied_share
        images.append(varied_render(scene, rng, recipe) if varied else render(scene, recipe.image_size))
    return torch.stack([to_tensor(im) for im in images])


def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Encode (distribution mode) and decode, in [-1, 1]."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            z = vae.encode(images[i : i + batch_size]).latent_dist.mode()
            out.append(vae.decode(z).sample.clamp(-1, 1))
    return torch.cat(out)


def train_autoencoder(
    recipe: str | AutoencoderRecipe,
    out_dir: str | Path,
    *,
    num_threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Train the recipe's autoencoder and save it as a diffusers folder; returns ``out_dir``.

    Loss: MSE to the input plus ``kl_weight`` x KL (the VAE objective without its GAN and LPIPS terms,
    which flat-coloured scenes do not need). ``scaling_factor`` is set to 1 / std of the training latents,
    as SD does, so the diffusion model sees unit-variance latents.
    """
    recipe = get_recipe(recipe)
    if num_threads:
        torch.set_num_threads(num_threads)
    out_dir = Path(out_dir)
    t0 = time.time()
    torch.manual_seed(recipe.seed)
    vae = build_autoencoder(recipe)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.steps)
    log = []
    bar = tqdm(range(recipe.steps), desc=f"autoencoder {recipe.name}", disable=not progress)
    for step in bar:
        x = scene_batch(recipe, step)
        posterior = vae.encode(x).latent_dist
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        recon = vae.decode(posterior.sample(generator=g)).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + recipe.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == recipe.steps - 1:
            log.append({"step": step + 1, "mse": mse.item()})
            bar.set_postfix(mse=f"{mse.item():.5f}")
    vae.eval()
    with torch.no_grad():
        probe = torch.cat([scene_batch(recipe, recipe.steps + k) for k in range(4)])
        std = float(vae.encode(probe).latent_dist.mode().std())
    vae.register_to_config(scaling_factor=1.0 / std)
    tmp = staging_folder(out_dir)  # unique to this process: two trainers never save into one folder
    vae.save_pretrained(tmp)
    summary = {
        "recipe": dataclasses.asdict(recipe),
        "latent_std": std,
        "final_mse": log[-1]["mse"],
        "wall_seconds": time.time() - t0,
        "parameters": sum(p.numel() for p in vae.parameters()),
        "log": log,
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    return out_dir


def autoencoder_dir(recipe: str | AutoencoderRecipe, root: str | Path = "cache/autoencoders") -> Path:
    return Path(root) / get_recipe(recipe).key()


RELEASED_ROOT = Path(__file__).resolve().parents[1] / "data" / "autoencoders"


def released_dir(recipe: str | AutoencoderRecipe) -> Path | None:
    """The folder of the package's released copy of this exact recipe, or None when none ships."""
    path = RELEASED_ROOT / get_recipe(recipe).key()
    return path if (path / "config.json").is_file() else None


def get_or_train(
    recipe: str | AutoencoderRecipe,
    root: str | Path = "cache/autoencoders",
    *,
    num_threads: int | None = None,
    progress: bool = True,
    use_released: bool = True,
) -> Path:
    """The trained autoencoder's folder under ``root``: copied from the package's release of this recipe
    when one ships (``use_released=False`` retrains instead), else trained once on this machine.

    A copy of a released recipe must have the release's bytes (``identity.content_digest``): a copy that is
    cut short or altered is moved aside, with a warning naming it, and copied again."""
    path = autoencoder_dir(recipe, root)
    released = released_dir(recipe) if use_released else None
    if (path / "config.json").is_file():
        if released is None or content_digest(path) == content_digest(released, remember=False):
            return path
        move_aside(path, f"this copy differs from the package's release {released} (cut short or altered)")
    if released is None:
        return train_autoencoder(recipe, path, num_threads=num_threads, progress=progress)
    tmp = staging_folder(path)
    shutil.copytree(released, tmp, dirs_exist_ok=True)
    try:
        tmp.rename(path)
    except OSError:  # another process put it there first: keep theirs (same bytes)
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "config.json").is_file():
            raise
    return path
