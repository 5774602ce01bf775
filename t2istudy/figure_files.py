"""Writing a figure to disk, the same way for every layer that draws one (layer norms, probe, analysis).

Below every subpackage and importing none of them: a figure is PNG + PDF, its numbers as CSV beside it,
and a rerun of an unchanged notebook writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from t2istudy import staging


def check_writable(folder: str | Path) -> Path:
    """The analysis's output folder, checked before its work (not at its first figure) by the one helper."""
    fix = (
        "make it writable (chmod u+w) or pass another folder (figures_dir=...), then run the analysis again."
    )
    return staging.check_writable(folder, "The output folder", fix)


def write_png_pdf(fig: plt.Figure, png: Path, pdf: Path, dpi: int = 150, tight: bool = True) -> None:
    """Every figure's PNG and PDF. The PDF carries no creation date, so rerunning an unchanged
    notebook writes the same bytes and leaves the git tree clean (PNGs hold no date already)."""
    bbox = "tight" if tight else None
    fig.savefig(png, dpi=dpi, bbox_inches=bbox)
    fig.savefig(pdf, bbox_inches=bbox, metadata={"CreationDate": None})


def save_figure(
    fig: plt.Figure, out_dir: str | Path, stem: str, data: pd.DataFrame | None = None
) -> list[Path]:
    """``<out_dir>/<stem>.png`` and ``.pdf``, plus the numbers shown as ``.csv`` when given; the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    write_png_pdf(fig, paths[0], paths[1])
    if data is not None:
        paths.append(out_dir / f"{stem}.csv")
        data.to_csv(paths[-1], index=False)
    return paths
