"""Training pairs (image, caption) and a deterministic, resumable, shardable batch order.

Two sources, one interface (`captions` list + `__getitem__ -> (image [3,H,W] in [-1, 1], caption)`):
- small scale: a fixed pool of shapes-world scenes (`shapes_pool`), so every caption can be cached;
- paper scale: an image-text dataset on disk (`FolderPairs`), in either documented format:
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
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from t2istudy.world.shapes import MAX_OBJECTS, ShapesWorld

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


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
) -> ArrayPairs:
    """A fixed pool of shapes-world training scenes (never a held-out composition)."""
    world = ShapesWorld(seed=seed, max_objects=max_objects or MAX_OBJECTS, p_colourless=colourless_captions)
    images, captions, _ = world.batch(pool_size, np.random.default_rng(seed), resolution)
    return ArrayPairs(np.asarray(images, dtype=np.uint8), list(captions))


class FolderPairs(Dataset):
    """Image-text pairs on disk (folder of files or webdataset-style .tar shards), loaded lazily."""

    def __init__(self, root: str | Path, resolution: int, on_bad: str = "skip", verify_images: bool = True):
        if on_bad not in ("skip", "stop"):
            raise ValueError(f"on_bad must be 'skip' or 'stop', got {on_bad!r}.")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Dataset folder {self.root} does not exist: pass --data <folder> holding images + captions."
            )
        self.resolution = resolution
        self.on_bad = on_bad
        self.skipped: Counter[str] = Counter()
        self.items: list[tuple[str, str]] = []  # (tar path or "", image path or member name)
        self.captions: list[str] = []
        shards = sorted(self.root.glob("*.tar"))
        self._tars: dict[str, tarfile.TarFile] = {}
        if shards:
            for shard in shards:
                self._index_shard(shard, verify_images)
        else:
            self._index_folder(verify_images)
        if not self.items:
            raise ValueError(
                f"No usable (image, caption) pairs under {self.root} (skipped: {dict(self.skipped)}); expected "
                "<key>.jpg|png|webp with <key>.txt beside it, or webdataset .tar shards of the same."
            )

    def _bad(self, reason: str, where: str) -> None:
        if self.on_bad == "stop":
            raise ValueError(
                f"{where}: {reason}. Fix or remove it, or pass --on_bad skip to skip such pairs."
            )
        self.skipped[reason] += 1

    def _add(self, caption: str | None, source: str, name: str, read, verify: bool) -> None:
        where = f"{source}:{name}" if source else name
        if caption is None or not caption.strip():
            return self._bad("missing or empty caption", where)
        if verify:
            try:
                with Image.open(read()) as im:
                    im.verify()
            except Exception:  # PIL raises many types for broken files
                return self._bad("unreadable image", where)
        self.items.append((source, name))
        self.captions.append(caption.strip())

    def _index_folder(self, verify: bool) -> None:
        for path in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
            txt = path.with_suffix(".txt")
            caption = txt.read_text(encoding="utf-8") if txt.is_file() else None
            self._add(caption, "", str(path), lambda p=path: p, verify)

    def _index_shard(self, shard: Path, verify: bool) -> None:
        tar = self._tar(str(shard))
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        for member in tar.getmembers():
            folder, _, base = member.name.rpartition("/")
            if member.isfile() and "." in base:  # webdataset: key = path up to the first dot of the file name
                stem, ext = base.split(".", 1)
                groups.setdefault(f"{folder}/{stem}", {})["." + ext.lower()] = member
        for parts in groups.values():
            image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
            if image is None:
                continue
            caption = tar.extractfile(parts[".txt"]).read().decode("utf-8") if ".txt" in parts else None
            self._add(
                caption, str(shard), image.name, lambda m=image: io.BytesIO(tar.extractfile(m).read()), verify
            )

    def _tar(self, shard: str) -> tarfile.TarFile:
        if shard not in self._tars:  # one handle per worker process (the dict is copied into workers empty)
            self._tars[shard] = tarfile.open(shard)
        return self._tars[shard]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tars": {}}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        source, name = self.items[i]
        try:
            raw = io.BytesIO(self._tar(source).extractfile(name).read()) if source else name
            with Image.open(raw) as im:
                image = fit_image(im, self.resolution)
        except Exception as err:
            raise ValueError(
                f"Cannot read image {source + ':' if source else ''}{name}: {err}. Remove the pair."
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
