"""Training pairs (image, caption) and a deterministic, resumable, shardable batch order.

Two sources, one interface (`captions` list + `__getitem__ -> (image [3,H,W] in [-1, 1], caption)`):
- small scale: a fixed pool of shapes-world scenes (`shapes_pool`), so every caption can be cached;
- paper scale: an image-text dataset on disk (`FolderPairs`, read through an index built once beside the
  data, `t2istudy.diffusion.data_index`), in either documented format:
    folder:  <root>/**/<key>.{jpg,jpeg,png,webp} with <key>.txt beside it (one caption, UTF-8)
    shards:  <root>/*.tar (webdataset style) holding <key>.jpg|png|webp and <key>.txt members
  An unreadable image or a missing/empty caption is skipped and counted (`on_bad="skip"`) or stops
  loading with the offending path (`on_bad="stop"`).

The batch order is a pure function of (seed, step): `StepBatchSampler` walks a per-epoch permutation, so a
resumed run sees exactly the batches an uninterrupted one would, and N processes see disjoint slices of
the same global batch that 1 process would see.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from t2istudy.diffusion.data_index import DatasetIndex
from t2istudy.world.shapes import MAX_OBJECTS, ShapesWorld


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """float [B, 3, H, W] in [-1, 1] -> list of uint8 [H, W, 3] (what the scorers take)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).cpu().numpy())


def fit_image(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square and resize (bicubic) to size x size RGB."""
    image = image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


class ArrayPairs(Dataset):
    """Pairs held in memory: uint8 images [N, H, W, 3] and N captions."""

    def __init__(self, images: np.ndarray, captions: list[str]):
        if len(images) != len(captions):
            raise ValueError(
                f"{len(images)} images but {len(captions)} captions: they must pair up one to one."
            )
        self.images = images
        self.captions = list(captions)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return to_tensor(self.images[i]), self.captions[i]


def shapes_pool(
    pool_size: int,
    seed: int,
    resolution: int,
    max_objects: int | None = None,
    colourless_captions: float = 0.0,
    *,
    named_captions: bool = False,
    two_object_share: float | None = None,
) -> ArrayPairs:
    """A fixed pool of shapes-world training scenes (never a held-out composition). The binding levers
    (issue 36): ``named_captions`` (every caption names each object with its colour, same scenes) and
    ``two_object_share`` (exactly that share of two-object scenes); see `ShapesWorld`."""
    world = ShapesWorld(
        seed=seed,
        max_objects=max_objects or MAX_OBJECTS,
        p_colourless=colourless_captions,
        named_captions=named_captions,
        two_object_share=two_object_share,
    )
    images, captions, _ = world.batch(pool_size, np.random.default_rng(seed), resolution)
    return ArrayPairs(np.asarray(images, dtype=np.uint8), list(captions))


class FolderPairs(Dataset):
    """Image-text pairs on disk (folder of files or webdataset-style .tar shards), read lazily through the
    index built once beside the data (`t2istudy.diffusion.data_index`): memory-mapped, shared by every
    process and every resume. ``verify_images`` opens every image once, when the index is built."""

    def __init__(self, root: str | Path, resolution: int, on_bad: str = "skip", verify_images: bool = True):
        if on_bad not in ("skip", "stop"):
            raise ValueError(f"on_bad must be 'skip' or 'stop', got {on_bad!r}.")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Dataset folder {self.root} does not exist: pass --data <folder> holding images + captions."
            )
        self.resolution = resolution
        self.index = DatasetIndex.open_or_build(self.root, on_bad=on_bad, verify_images=verify_images)
        self.captions = self.index.captions
        self.skipped: Counter[str] = Counter(self.index.skipped)
        self._files: dict[Path, io.BufferedReader] = {}
        if not len(self.index):
            raise ValueError(
                f"No usable (image, caption) pairs under {self.root} (skipped: {dict(self.skipped)}); expected "
                "<key>.jpg|png|webp with <key>.txt beside it, or webdataset .tar shards of the same. After fixing "
                f"the data, delete {self.index.folder} so that it is listed again."
            )

    def _read(self, where) -> io.BytesIO | Path:
        if isinstance(where, Path):
            return where
        shard, offset, size = where
        if shard not in self._files:  # one handle per worker process (the dict is copied into workers empty)
            self._files[shard] = open(shard, "rb")  # noqa: SIM115 - kept open for the dataset's lifetime
        handle = self._files[shard]
        handle.seek(offset)
        return io.BytesIO(handle.read(size))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        where = self.index.locate(i)
        try:
            with Image.open(self._read(where)) as im:
                image = fit_image(im, self.resolution)
        except Exception as err:
            name = where if isinstance(where, Path) else f"{where[0]} (bytes {where[1]}+{where[2]})"
            raise ValueError(
                f"Cannot read image {name}: {err}. Remove the pair and delete {self.index.folder}."
            ) from err
        return to_tensor(image), self.captions[i]


class StepBatchSampler(Sampler[list[int]]):
    """Yields this process's micro-batches for steps start_step..max_steps-1, a pure function of the step.

    Step s covers positions [s*G, (s+1)*G) of an endless sequence of per-epoch permutations (epoch e seeded
    by (seed, e)), G = per_device * world * accumulation. Micro-batch a of rank r is the slice
    [(a*world + r) * per_device, ... + per_device) of the global batch.
    """

    def __init__(
        self,
        n: int,
        per_device: int,
        *,
        seed: int,
        start_step: int,
        max_steps: int,
        world: int = 1,
        rank: int = 0,
        accumulation: int = 1,
    ):
        if n < 1:
            raise ValueError("The dataset is empty.")
        self.n, self.per, self.seed = n, per_device, seed
        self.start, self.stop, self.world, self.rank, self.acc = (
            start_step,
            max_steps,
            world,
            rank,
            accumulation,
        )
        self.global_batch = per_device * world * accumulation
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def global_indices(self, step: int) -> np.ndarray:
        positions = np.arange(step * self.global_batch, (step + 1) * self.global_batch, dtype=np.int64)
        out = np.empty_like(positions)
        for epoch in np.unique(positions // self.n):
            sel = positions // self.n == epoch
            out[sel] = self._permutation(int(epoch))[positions[sel] % self.n]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            idx = self.global_indices(step)
            for a in range(self.acc):
                lo = (a * self.world + self.rank) * self.per
                yield idx[lo : lo + self.per].tolist()

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.acc
