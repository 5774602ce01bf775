"""Text embeddings for training: a memory-mapped cache on disk, or on-the-fly frozen encoding.

Small scale encodes every caption once per (encoder, strategy) so a training step costs the same for a
135M and a 0.5B encoder. Paper scale encodes on the fly. Both answer `embed(captions) -> (features, mask)`
with the same numbers (float32, padding trimmed to the longest caption in the batch), which is tested.

Layout of one cache entry
(`<root>/<encoder>/<strategy>[-T<template digest>]-L<max_length>-<caption hash>[-W<weights digest>]/`):
    meta.json                 encoder, strategy (canonical, its template named in it), template_digest (of the
                              template's text, so editing a template never serves stale entries), max_length,
                              caption hash, encoder_digest (of a local folder's or GGUF file's bytes, so
                              replaced weights never serve the old embeddings; None for registry names),
                              shape, dtype, max_abs, token_rms (the input-scale statistic), and the done-mark's
                              rows and checksum (of the files below): an entry that no longer matches them
                              is moved aside and built again
    captions.json             the unique captions, sorted; row i of the arrays belongs to captions[i]
    features.npy              [N, T, D] (or [N, T, L, D] for `learned`), float16 where every |value| fits
    mask.npy                  [N, T] bool, True = real token
    null_features.npy / null_mask.npy   the empty prompt (classifier-free guidance), float32
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from t2istudy.identity import content_digest, move_aside, moved_aside
from t2istudy.staging import staging_folder
from t2istudy.text import encoders
from t2istudy.text.aggregation import parse_strategy
from t2istudy.text.cache_entries import StaleEntry, load_npy, read_meta, verify_entry
from t2istudy.text.registry import local_weights
from t2istudy.text.templates import get_template

CACHE_VERSION = 1
FP16_LIMIT = (
    6.0e4  # float16 max is 65504; anything larger (attention-sink tokens of raw layers) stays float32
)


class Encoder(Protocol):
    """What the cache needs from `t2istudy.text.encoders.FrozenEncoder`."""

    name: str
    max_length: int

    def encode_aggregated(self, prompts, strategy, batch_size=32, progress=False): ...


def caption_hash(captions: list[str]) -> str:
    """Order-independent hash of the caption set (the cache stores unique captions sorted)."""
    unique = sorted(set(captions))
    return hashlib.sha256(json.dumps(unique, ensure_ascii=False).encode()).hexdigest()[:16]


def template_digest(strategy: str) -> str | None:
    """Hash of the text of the strategy's prompt template (None without one): part of the cache key."""
    template = parse_strategy(strategy).template
    return get_template(template).digest() if template else None


def encoder_digest(encoder: str) -> str | None:
    """Digest of the bytes of a local encoder (a folder or a .gguf file given by path; ``identity``), part of
    the cache key: a folder whose weights were replaced gets new entries. None for a registry name, whose
    weights are a released package's."""
    path = local_weights(encoder)
    return content_digest(path) if path is not None else None


DATA_FILES = ("captions.json", "features.npy", "mask.npy", "null_features.npy", "null_mask.npy")
KEY_FIELDS = ("encoder", "strategy", "template_digest", "max_length", "caption_hash", "encoder_digest")


def slug(text: str) -> str:
    """A file-system-safe form of an encoder or strategy name."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def token_rms(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMS over real tokens: a scalar for [B,T,D], one value per layer for [B,T,L,D]."""
    m = mask.bool()
    x = features[m].double()  # [n, D] or [n, L, D]
    if x.numel() == 0:
        raise ValueError("Cannot compute the token RMS: no real tokens (all captions empty?).")
    return x.pow(2).mean(dim=(0, -1)).sqrt().float().reshape(-1)


def _trim(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop padding columns beyond the longest caption (keeps at least one column)."""
    if features.shape[1] == 0:  # an empty prompt on a tokenizer without BOS: one padding column
        features = features.new_zeros((features.shape[0], 1, *features.shape[2:]))
        mask = mask.new_zeros((mask.shape[0], 1))
    length = max(int(mask.sum(dim=1).max()), 1)
    return features[:, :length].float(), mask[:, :length].bool()


class EmbeddingCache:
    """One (encoder, strategy, max_length, caption set) entry on disk, opened memory-mapped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"No embedding cache at {self.path} (meta.json missing): build it with "
                "EmbeddingCache.build(...) or let training build it (it writes meta.json last)."
            )
        meta = read_meta(meta_file)
        if meta is None:
            raise ValueError(f"{meta_file} is torn: delete {self.path} and rerun; the entry is built again.")
        self.meta = meta
        if self.meta.get("version") != CACHE_VERSION:
            raise ValueError(
                f"Cache {self.path} has version {self.meta.get('version')}, expected {CACHE_VERSION}: rebuild it."
            )
        self.captions: list[str] = json.loads((self.path / "captions.json").read_text())
        fix = (
            f"delete the folder {self.path} and rerun; the entry is rebuilt from the encoder on the next run "
            "(training builds a missing entry, as does `t2istudy grid prepare <grid>`)."
        )
        self.features = load_npy(self.path / "features.npy", mmap=True, fix=fix)
        self.mask = load_npy(self.path / "mask.npy", mmap=True, fix=fix)
        self.null_features = torch.from_numpy(load_npy(self.path / "null_features.npy", mmap=False, fix=fix))
        self.null_mask = torch.from_numpy(load_npy(self.path / "null_mask.npy", mmap=False, fix=fix))
        self.row = {c: i for i, c in enumerate(self.captions)}
        verify_entry(self.path, self.meta, DATA_FILES, int(self.features.shape[0]))
        if len(self.row) != self.features.shape[0]:
            raise ValueError(
                f"Cache {self.path} is inconsistent ({len(self.row)} captions, {self.features.shape[0]} rows): rebuild it."
            )

    # ---- identity ---------------------------------------------------------------------------------------
    @property
    def encoder(self) -> str:
        return self.meta["encoder"]

    @property
    def strategy(self) -> str:
        return self.meta["strategy"]

    @property
    def token_rms(self) -> list[float]:
        return list(self.meta["token_rms"])

    def check(self, encoder: str | None = None, strategy: str | None = None) -> EmbeddingCache:
        """Refuse to serve embeddings made by another encoder or strategy."""
        if encoder is not None and encoder != self.encoder:
            raise ValueError(
                f"Embedding cache {self.path} was built with encoder {self.encoder!r}, not {encoder!r}: "
                "use a cache built for this encoder (or a different --cache_dir) instead of mixing embeddings."
            )
        if strategy is not None and str(parse_strategy(strategy)) != self.strategy:
            raise ValueError(
                f"Embedding cache {self.path} holds strategy {self.strategy!r}, not {str(parse_strategy(strategy))!r}: "
                "build a cache for this strategy (each strategy variant has its own entry)."
            )
        return self

    def __len__(self) -> int:
        return len(self.captions)

    # ---- reading ------------------------------------------------------------------------------------------
    def embed(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 features and bool mask for these captions, trimmed to the longest one."""
        try:
            rows = np.array([self.row[c] for c in captions], dtype=np.int64)
        except KeyError as err:
            raise KeyError(
                f"Caption {err.args[0]!r} is not in the embedding cache {self.path}: the cache covers a fixed "
                "caption pool; rebuild it with every caption you train on, or encode on the fly (--text online)."
            ) from None
        order = np.argsort(rows)  # memmap fancy indexing reads faster in order
        feats = np.empty((len(rows), *self.features.shape[1:]), dtype=np.float32)
        feats[order] = self.features[rows[order]]
        mask = np.asarray(self.mask[rows])
        return _trim(torch.from_numpy(feats), torch.from_numpy(mask))

    def null(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        f, m = _trim(self.null_features, self.null_mask)
        return f.expand(batch, *f.shape[1:]), m.expand(batch, -1)

    # ---- building ----------------------------------------------------------------------------------------
    @staticmethod
    def entry_dir(
        root: str | Path, encoder: str, strategy: str, max_length: int, captions: list[str]
    ) -> Path:
        digest = template_digest(strategy)
        tag = f"-T{digest}" if digest else ""
        weights = encoder_digest(encoder)
        name = f"{slug(str(parse_strategy(strategy)))}{tag}-L{max_length}-{caption_hash(captions)}"
        return Path(root) / slug(encoder) / (name + (f"-W{weights}" if weights else ""))

    @classmethod
    def find(
        cls, root: str | Path, encoder: str, strategy: str, captions: list[str], max_length: int | None = None
    ):
        """An existing complete entry for this key, or None. A torn meta.json costs only its own entry (a
        warning names it); an entry whose files no longer match its done-mark is moved aside (None: the
        caller builds it again)."""
        want = {
            "encoder": encoder,
            "strategy": str(parse_strategy(strategy)),
            "template_digest": template_digest(strategy),
            "caption_hash": caption_hash(captions),
            "encoder_digest": encoder_digest(encoder),
        }
        folder = Path(root) / slug(encoder)
        for meta_file in sorted(folder.glob("*/meta.json")) if folder.is_dir() else []:
            if ".tmp-" in meta_file.parent.name or moved_aside(meta_file.parent):  # a build, a discard
                continue
            meta = read_meta(meta_file)
            if (
                meta is not None
                and all(meta.get(k) == v for k, v in want.items())
                and (max_length is None or meta.get("max_length") == max_length)
            ):
                try:
                    return cls(meta_file.parent)
                except StaleEntry as err:
                    move_aside(meta_file.parent, str(err))
                    return None
        return None

    @classmethod
    def build(
        cls,
        encoder: Encoder,
        strategy: str,
        captions: list[str],
        root: str | Path,
        *,
        batch_size: int = 64,
        dtype: str = "auto",
        progress: bool = True,
    ) -> EmbeddingCache:
        """Encode each unique caption once and write the entry (meta.json last, so a crash leaves no entry)."""
        return cls.build_many(
            encoder, [strategy], captions, root, batch_size=batch_size, dtype=dtype, progress=progress
        )[0]

    @classmethod
    def build_many(
        cls,
        encoder: Encoder,
        strategies: list[str],
        captions: list[str],
        root: str | Path,
        *,
        batch_size: int = 64,
        dtype: str = "auto",
        progress: bool = True,
    ) -> list[EmbeddingCache]:
        """One entry per strategy from a single pass of the encoder over the captions (an encoder with
        ``encode_aggregated_many``); the entries are the same as ``build`` would write one by one."""
        canonical = list(dict.fromkeys(str(parse_strategy(s)) for s in strategies))
        unique = sorted(set(captions))
        if not unique:
            raise ValueError("Cannot build an embedding cache from an empty caption list.")
        if not canonical:
            raise ValueError("build_many needs at least one strategy.")
        if dtype not in ("auto", "float16", "float32"):
            raise ValueError(f"dtype must be 'auto', 'float16' or 'float32', got {dtype!r}.")
        writers = [
            _EntryWriter(cls.entry_dir(root, encoder.name, s, encoder.max_length, unique)) for s in canonical
        ]
        try:
            cls._encode_chunks(encoder, canonical, unique, writers, batch_size, progress)
            return [
                cls(
                    writer.finish(
                        unique, cls._meta(encoder, s, unique), dtype, partial(null_embedding, encoder, s)
                    )
                )
                for writer, s in zip(writers, canonical, strict=True)
            ]
        except BaseException:  # a half-written entry is worthless and may be gigabytes: never leave it
            for writer in writers:
                shutil.rmtree(writer.tmp, ignore_errors=True)
            raise

    @staticmethod
    def _meta(encoder: Encoder, strategy: str, unique: list[str]) -> dict:
        return {
            "version": CACHE_VERSION,
            "encoder": encoder.name,
            "strategy": strategy,
            "template_digest": template_digest(strategy),
            "max_length": encoder.max_length,
            "caption_hash": caption_hash(unique),
            "encoder_digest": encoder_digest(encoder.name),
            "num_captions": len(unique),
        }

    @staticmethod
    def _encode_chunks(encoder, canonical, unique, writers, batch_size: int, progress: bool) -> None:
        """Pass 1 of every entry: encode the captions batch by batch into each writer's float32 chunks;
        after the first batch, refuse early if the disk cannot hold the entries (``check_disk_space``)."""
        steps = range(0, len(unique), batch_size)
        label = f"encode {encoder.name}" + (f" ({len(canonical)} strategies)" if len(canonical) > 1 else "")
        for i, start in enumerate(tqdm(steps, desc=label, disable=not progress)):
            batch = unique[start : start + batch_size]
            if hasattr(encoder, "encode_aggregated_many"):  # one forward pass per prompt template
                by_template: dict[str | None, list[str]] = {}
                for s in canonical:
                    by_template.setdefault(parse_strategy(s).template, []).append(s)
                found = {}
                for group in by_template.values():
                    all_feats, mask = encoder.encode_aggregated_many(batch, group, batch_size=batch_size)
                    found.update({s: (f, mask) for s, f in zip(group, all_feats, strict=True)})
                outputs = [found[s] for s in canonical]
            else:  # a minimal Encoder: one call per strategy
                outputs = [encoder.encode_aggregated(batch, s, batch_size=batch_size) for s in canonical]
            for writer, strategy, (feats, mask) in zip(writers, canonical, outputs, strict=True):
                writer.add_chunk(
                    i,
                    feats,
                    mask,
                    f"Encoder {encoder.name} produced non-finite values for strategy {strategy}.",
                )
            if i == 0:
                check_disk_space(writers, len(unique), canonical)

    @classmethod
    def get_or_build(
        cls,
        root: str | Path,
        encoder: str | Encoder,
        strategy: str,
        captions: list[str],
        *,
        max_length: int | None = None,
        batch_size: int = 64,
        progress: bool = True,
        device: str | torch.device = "cpu",
    ) -> EmbeddingCache:
        """Open the matching entry, or load the encoder (only then, on ``device``) and build it."""
        return cls.get_or_build_many(
            root,
            encoder,
            [strategy],
            captions,
            max_length=max_length,
            batch_size=batch_size,
            progress=progress,
            device=device,
        )[0]

    @classmethod
    def get_or_build_many(
        cls,
        root: str | Path,
        encoder: str | Encoder,
        strategies: list[str],
        captions: list[str],
        *,
        max_length: int | None = None,
        batch_size: int = 64,
        progress: bool = True,
        device: str | torch.device = "cpu",
    ) -> list[EmbeddingCache]:
        """The entries for these strategies; the missing ones are built together, in one encoder pass (an
        encoder given by name loads on ``device`` in fp32, as on the CPU: an entry is keyed by what it encodes)."""
        name = encoder if isinstance(encoder, str) else encoder.name
        found = {s: cls.find(root, name, s, captions, max_length) for s in strategies}
        missing = [s for s, entry in found.items() if entry is None]
        if missing:
            if isinstance(encoder, str):
                encoder = encoders.load_encoder(encoder, max_length=max_length, device=device)
            built = cls.build_many(encoder, missing, captions, root, batch_size=batch_size, progress=progress)
            found.update(zip(missing, built, strict=True))
        return [found[s] for s in strategies]


# Peak disk of an entry, in units of its float32 chunks: the chunks, plus the final array written while they
# are deleted one by one (float16: half as large; padded to the longest caption, hence the margin).
PEAK_OVER_CHUNKS = 1.75


def check_disk_space(writers: list[_EntryWriter], n_captions: int, strategies: list[str]) -> None:
    """Refuse before the encoder pass goes on when the entries' projected peak size (from the first batch's
    chunks) exceeds the free space: a concat strategy's entry is n_states x wider, and a disk filled
    halfway would fail late and could take other runs' checkpoints down with it."""
    need = 0.0
    for writer in writers:
        rows = writer.chunks[0][1]
        first = (writer.tmp / "chunk000000.npy").stat().st_size
        need += first / rows * n_captions * PEAK_OVER_CHUNKS
    free = shutil.disk_usage(writers[0].tmp).free
    if need > free:
        raise OSError(
            f"The embedding cache entries for {strategies} need about {need / 1e9:.1f} GB while being built, "
            f"but {writers[0].tmp.parent} has {free / 1e9:.1f} GB free. Free disk space, or put the cache on "
            "a larger disk (--cache_dir, or cache_dir in the grid's params)."
        )


class _EntryWriter:
    """Writes one cache entry: float32 chunks while encoding, then one padded memory-mapped array."""

    def __init__(self, path: Path):
        self.path = path
        # One folder per process: parallel builds of the same entry never share one.
        self.tmp = staging_folder(path)
        self.chunks: list[tuple[int, int]] = []  # (chunk index, rows)
        self.max_t, self.max_abs, self.sq, self.count = 1, 0.0, None, 0

    def add_chunk(self, i: int, feats: torch.Tensor, mask: torch.Tensor, non_finite: str) -> None:
        """Pass 1: keep one encoded chunk (each padded to its own longest caption) and its statistics."""
        feats, mask = _trim(feats.float().cpu(), mask.bool().cpu())
        if not torch.isfinite(feats).all():
            raise ValueError(non_finite)
        self.max_t = max(self.max_t, feats.shape[1])
        self.max_abs = max(self.max_abs, float(feats.abs().max()))
        real = feats[mask].double()
        sq = real.pow(2).sum(dim=(0, -1))
        self.sq = sq if self.sq is None else self.sq + sq
        self.count += real.shape[0] * real.shape[-1]
        np.save(self.tmp / f"chunk{i:06d}.npy", feats.numpy())
        np.save(self.tmp / f"mask{i:06d}.npy", mask.numpy())
        self.chunks.append((i, feats.shape[0]))

    def finish(self, captions: list[str], meta: dict, dtype: str, null_fn) -> Path:
        """Pass 2: one padded array (float16 only if every value fits), then meta.json, then the rename."""
        tmp = self.tmp
        rms = (self.sq / max(self.count, 1)).sqrt().reshape(-1).tolist()
        store = dtype if dtype != "auto" else ("float16" if self.max_abs < FP16_LIMIT else "float32")
        if store == "float16" and self.max_abs >= FP16_LIMIT:
            raise ValueError(
                f"max |value| {self.max_abs:.3g} does not fit float16 (limit {FP16_LIMIT:g}); use dtype='float32'."
            )
        first = np.load(tmp / "chunk000000.npy", mmap_mode="r")
        shape = (len(captions), self.max_t, *first.shape[2:])
        features = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=store, shape=shape)
        masks = np.zeros((len(captions), self.max_t), dtype=bool)
        row = 0
        for i, _ in self.chunks:
            f = np.load(tmp / f"chunk{i:06d}.npy")
            m = np.load(tmp / f"mask{i:06d}.npy")
            rows = slice(row, row + f.shape[0])
            features[rows] = 0
            features[rows, : f.shape[1]] = f
            masks[rows, : m.shape[1]] = m
            row += f.shape[0]
            (tmp / f"chunk{i:06d}.npy").unlink()
            (tmp / f"mask{i:06d}.npy").unlink()
        features.flush()
        del features
        np.save(tmp / "mask.npy", masks)

        null_f, null_m, null_kind = null_fn(first.shape[2:])
        np.save(tmp / "null_features.npy", null_f.numpy())
        np.save(tmp / "null_mask.npy", null_m.numpy())
        (tmp / "captions.json").write_text(json.dumps(captions, ensure_ascii=False))
        meta = {
            **meta,
            "shape": list(shape),
            "dtype": store,
            "max_abs": self.max_abs,
            "token_rms": rms,
            "null": null_kind,
            "rows": len(captions),
            "checksum": content_digest(tmp, files=list(DATA_FILES)),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        path = self.path
        if (path / "meta.json").exists():
            if same_entry(path, meta):  # another process finished the same entry first: keep theirs
                shutil.rmtree(tmp)
                return path
            # another entry under this entry's name (moved or copied there): it would be served for this key
            move_aside(path, "its meta.json names another entry than its folder does")
        shutil.rmtree(path, ignore_errors=True)  # an incomplete entry (no meta.json)
        try:
            tmp.rename(path)
        except OSError:  # lost a rename race to an identical, complete entry
            if not (path / "meta.json").exists():
                raise
            shutil.rmtree(tmp)
        return path


def same_entry(path: Path, meta: dict) -> bool:
    """Whether the complete entry at ``path`` is the one ``meta`` describes (same key) and is intact."""
    found = read_meta(path / "meta.json")
    if found is None or any(found.get(k) != meta.get(k) for k in KEY_FIELDS):
        return False
    try:
        EmbeddingCache(path)
    except ValueError:  # cut short or altered (StaleEntry), or unreadable
        return False
    return True


def null_embedding(encoder: Encoder, strategy: str, feature_shape) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The empty prompt for classifier-free guidance, from the same encoder and strategy.

    An empty prompt with no special token (SmolLM2, Qwen2.5), or an encoder that refuses "", gives an
    all-padding null: the conditioner then attends to one zero token, the projection bias ("zero" in meta.json).
    """
    try:
        if hasattr(
            encoder, "encode_null"
        ):  # t2istudy.text.encoders: special tokens only (Gemma's BOS, BERT's CLS/SEP)
            feats, mask = encoder.encode_null(strategy)
        else:
            feats, mask = encoder.encode_aggregated([""], strategy, batch_size=1)
    except ValueError:
        feats, mask = torch.zeros(1, 0, *feature_shape), torch.zeros(1, 0, dtype=torch.bool)
    feats, mask = _trim(feats.float().cpu(), mask.bool().cpu())
    return feats, mask, "encoded" if mask.any() else "zero"


class OnlineText:
    """Frozen encoding inside the training loop (paper scale): same interface and numbers as the cache."""

    def __init__(self, encoder: Encoder, strategy: str, batch_size: int = 64):
        self.encoder = encoder
        self.strategy = str(parse_strategy(strategy))
        self.batch_size = batch_size
        self._null: tuple[torch.Tensor, torch.Tensor] | None = None

    def embed(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            feats, mask = self.encoder.encode_aggregated(
                list(captions), self.strategy, batch_size=self.batch_size
            )
        return _trim(feats.float().cpu(), mask.bool().cpu())

    def null(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if self._null is None:
            probe, _ = self.embed(["a"])
            f, m, _ = null_embedding(self.encoder, self.strategy, probe.shape[2:])
            self._null = f, m
        f, m = self._null
        return f.expand(batch, *f.shape[1:]), m.expand(batch, -1)


def pad_cat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (features, mask) pairs of different token lengths along the batch, right-padding."""
    t = max(f.shape[1] for f, _ in parts)
    feats, masks = [], []
    for f, m in parts:
        pad = t - f.shape[1]
        if pad:
            f = torch.cat([f, f.new_zeros((f.shape[0], pad, *f.shape[2:]))], dim=1)
            m = torch.cat([m, m.new_zeros((m.shape[0], pad))], dim=1)
        feats.append(f)
        masks.append(m)
    return torch.cat(feats), torch.cat(masks)
