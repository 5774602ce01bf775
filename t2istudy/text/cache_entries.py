"""What a cache entry on disk must be to be read: its arrays whole, its done-mark (meta.json) readable, and
its files the ones the done-mark describes (row count and checksum, ``t2istudy.identity``).

Shared by the embedding cache (``text.cache``) and the latent cache (``diffusion.latents``): a truncated
``.npy`` is named before numpy's nameless mmap error, a torn meta.json costs only its own entry, and an entry
altered since it was written raises ``StaleEntry`` (its store moves it aside and builds it again).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from t2istudy.identity import content_digest


def load_npy(path: str | Path, *, mmap: bool, fix: str) -> np.ndarray:
    """``np.load`` (memory-mapped or not) that names the file and ``fix`` when the file is cut short.

    A truncated ``.npy`` (a copy or a build interrupted, a full disk) otherwise fails deep in numpy with
    "mmap length is greater than file size", naming neither; the header says how many bytes to expect.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # a newer format: numpy checks it itself
                shape, dtype = None, None
            offset = f.tell()
        if shape is not None:
            expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            size = path.stat().st_size
            if size < expected:
                raise ValueError(f"truncated: {size} bytes, {expected} expected for {dtype} {tuple(shape)}")
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path} is unreadable ({err}): {fix}") from err


class StaleEntry(ValueError):
    """A cache entry whose files do not match its done-mark (meta.json): cut short or altered since."""


def read_meta(meta_file: Path) -> dict | None:
    """An entry's meta.json, or None with a warning naming the file when it is torn (a copy or write cut
    short): that entry reads as missing, and every other entry stays usable."""
    try:
        meta = json.loads(meta_file.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        return meta
    except (OSError, ValueError) as err:
        warnings.warn(
            f"{meta_file} is unreadable ({err}): that cache entry is ignored and built again if needed; "
            f"delete {meta_file.parent} to reclaim its space.",
            stacklevel=3,
        )
        return None


def verify_entry(path: Path, meta: dict, files: tuple[str, ...], rows: int) -> None:
    """Raise StaleEntry naming the entry when its files or row count differ from its done-mark's (entries
    written before the done-mark carried them are not checked)."""
    if "checksum" not in meta:
        return
    if rows != meta.get("rows"):
        raise StaleEntry(f"{path} holds {rows} rows, its meta.json says {meta.get('rows')}")
    found = content_digest(path, files=[f for f in files if (path / f).is_file()])
    if found != meta["checksum"]:
        raise StaleEntry(f"{path}: its files' checksum {found} differs from meta.json's {meta['checksum']}")
