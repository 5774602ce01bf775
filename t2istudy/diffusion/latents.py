"""VAE latents of a fixed image pool, encoded once and memory-mapped (`--latents cache`).

Why: a frozen VAE gives the same latent distribution for an image at every step, yet encoding it on the
fly costs a VAE forward pass per image per step (at paper scale the loop then ran at 0.60x of the bare
U-Net step). The cache stores each image's latent *distribution* (the VAE's moments: mean and log-variance),
so a training step still draws a fresh latent sample from it, with the same generator and the same
operations as on-the-fly encoding: the two paths give the same latents (tested).

Layout of one entry (`<root>/<vae key>-<data key>/`): ``moments.npy`` [N, 2C, h, w] float32 (the VAE's
``quant_conv`` output, row i = dataset item i), ``meta.json`` (written last; its absence = incomplete; it
holds the rows and checksum of moments.npy: an entry that no longer matches them, or whose meta.json is
torn, is moved aside with a warning naming it and encoded again).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from t2istudy.identity import content_digest, move_aside
from t2istudy.staging import staging_folder
from t2istudy.text.cache_entries import StaleEntry, load_npy, read_meta, verify_entry

LATENT_CACHE_VERSION = 1


def vae_key(vae) -> str:
    """Identity of a VAE: its config and every weight (two VAEs with one key encode identically)."""
    h = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def sample_latents(
    moments: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None, scaling_factor: float
) -> torch.Tensor:
    """One latent draw from moments [B, 2C, h, w], scaled for the U-Net (what train.py does on the fly); a list
    of generators draws row i from generator i."""
    return DiagonalGaussianDistribution(moments).sample(generator=generator) * scaling_factor


class LatentCache:
    """One memory-mapped entry: ``moments[i]`` belongs to dataset item ``i``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a complete latent cache entry (no meta.json).")
        meta = read_meta(meta_file)
        if meta is None:
            raise ValueError(
                f"{meta_file} is torn: delete {self.path} and rerun; the cache is encoded again."
            )
        self.meta = meta
        self.moments = load_npy(  # a truncated file is caught before numpy's nameless mmap error
            self.path / "moments.npy",
            mmap=True,
            fix=f"delete {self.path} and rerun; the cache is rebuilt from the dataset and the VAE.",
        )
        if list(self.moments.shape) != self.meta["shape"]:
            raise ValueError(
                f"{self.path}: moments.npy has shape {self.moments.shape}, meta.json says {self.meta['shape']}."
            )
        verify_entry(self.path, self.meta, ("moments.npy",), int(self.moments.shape[0]))

    def __len__(self) -> int:
        return self.moments.shape[0]

    @staticmethod
    def entry_dir(root: str | Path, vae_id: str, data_id: str) -> Path:
        return Path(root) / f"{vae_id}-{data_id}"

    @classmethod
    def get_or_build(
        cls,
        root: str | Path,
        vae,
        dataset: Dataset,
        data_id: str,
        *,
        batch_size: int = 64,
        progress: bool = True,
    ) -> LatentCache:
        """The entry for (this VAE, this dataset), encoding every item once if it is missing."""
        path = cls.entry_dir(root, vae_key(vae), data_id)
        if (path / "meta.json").is_file():
            try:
                return cls(path)
            except (StaleEntry, ValueError) as err:  # cut short, altered, torn: encode it again
                move_aside(path, str(err))
        tmp = staging_folder(path)
        n = len(dataset)
        moments = None
        device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
        with torch.no_grad():
            for lo in tqdm(range(0, n, batch_size), desc="latent cache", disable=not progress):
                images = torch.stack([dataset[i][0] for i in range(lo, min(n, lo + batch_size))])
                m = vae.encode(images.to(device, dtype)).latent_dist.parameters.float().cpu().numpy()
                if moments is None:
                    shape = (n, *m.shape[1:])
                    moments = np.lib.format.open_memmap(
                        tmp / "moments.npy", mode="w+", dtype="float32", shape=shape
                    )
                moments[lo : lo + len(m)] = m
        moments.flush()
        del moments
        meta = {
            "version": LATENT_CACHE_VERSION,
            "vae": vae_key(vae),
            "data": data_id,
            "shape": list(shape),
            "scaling_factor": float(vae.config.scaling_factor),
            "rows": n,
            "checksum": content_digest(tmp, files=["moments.npy"]),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if (path / "meta.json").is_file():  # another process finished the same entry first
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
        return cls(path)


class LatentPairs(Dataset):
    """(moments [2C, h, w], caption) pairs: a dataset whose images were replaced by cached latent moments."""

    def __init__(self, cache: LatentCache, captions: list[str]):
        if len(cache) != len(captions):
            raise ValueError(
                f"The latent cache {cache.path} holds {len(cache)} items but the dataset has {len(captions)}: "
                "it was built for other data; delete it and rerun."
            )
        self.cache = cache
        self.captions = list(captions)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return torch.from_numpy(np.array(self.cache.moments[i])), self.captions[i]
