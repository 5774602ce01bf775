"""Per-layer statistics of token states: why a plain mean over layers is dominated by a few layers.

Token norm = L2 norm of one real (unpadded) token's state vector in one layer. Tables are tidy
pandas DataFrames (one row per encoder x layer x normalization x token set) so that notebooks can
plot them with seaborn and save them as CSV beside the figure.

Token sets: ``all`` real tokens, or ``no_first`` (the first token is an attention sink whose norm
can be 10-100x the others and would otherwise dominate every statistic).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from t2istudy.text.aggregation import TOKEN_NORMS, normalize
from t2istudy.text.encoders import FrozenEncoder, LayerStates
from t2istudy.world.genai_bench import load_genai_bench

PERCENTILES = (5, 25, 50, 75, 95)
TOKEN_SETS = ("all", "no_first")


def _real_tokens(states: LayerStates) -> tuple[torch.Tensor, torch.Tensor]:
    """Real tokens as [L, n_tokens, D] and a [n_tokens] flag marking each prompt's first token."""
    mask = states.mask
    first = torch.zeros_like(mask)
    first[:, 0] = mask[:, 0]
    return states.hidden[:, mask], first[mask]


def token_norms(states: LayerStates, norm: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """L2 norms [L, n_tokens] of every real token after ``norm`` (``none`` = raw), and first-token flags."""
    tokens, first = _real_tokens(states)
    return normalize(tokens, norm).norm(dim=-1), first


def _describe(values: torch.Tensor, percentiles: Sequence[int]) -> dict[str, float]:
    v = values.double()
    row = {"n_tokens": v.numel(), "mean": v.mean().item(), "std": v.std().item() if v.numel() > 1 else 0.0}
    row["min"], row["max"] = v.min().item(), v.max().item()
    qs = torch.quantile(v, torch.tensor([p / 100 for p in percentiles], dtype=torch.float64))
    row.update({f"p{p}": q.item() for p, q in zip(percentiles, qs, strict=True)})
    return row


def layer_norm_stats(
    states: LayerStates,
    *,
    encoder: str = "",
    norms: Sequence[str] = TOKEN_NORMS,  # per-token norms: a prompt-level one (minmax) needs its prompt
    percentiles: Sequence[int] = PERCENTILES,
) -> pd.DataFrame:
    """Token-norm statistics per layer, before (``norm="none"``) and after each normalization.

    Columns: encoder, layer, depth (layer / last layer, 0..1), norm, tokens (all | no_first),
    n_tokens, mean, std, min, max, p5 .. p95.
    """
    first = _real_tokens(states)[1]
    values = {norm: token_norms(states, norm)[0] for norm in norms}
    return _stats_table(values, first, encoder, states.hidden.shape[0], percentiles)


def _stats_table(
    values: dict[str, torch.Tensor],
    first: torch.Tensor,
    encoder: str,
    num_states: int,
    percentiles: Sequence[int],
) -> pd.DataFrame:
    rows = []
    for norm, norms_per_layer in values.items():
        for tokens in TOKEN_SETS:
            keep = ~first if tokens == "no_first" else torch.ones_like(first)
            if not keep.any():
                continue  # every prompt is a single token: nothing left without the first
            for layer in range(num_states):
                row = {"encoder": encoder, "layer": layer, "depth": layer / max(num_states - 1, 1)}
                row |= {
                    "norm": norm,
                    "tokens": tokens,
                    **_describe(norms_per_layer[layer, keep], percentiles),
                }
                rows.append(row)
    return pd.DataFrame(rows)


def _similarity_table(sim: torch.Tensor, n_tokens: int, encoder: str) -> pd.DataFrame:
    n = sim.shape[0]
    return pd.DataFrame(
        {
            "encoder": encoder,
            "layer_a": [a for a in range(n) for _ in range(n)],
            "layer_b": [b for _ in range(n) for b in range(n)],
            "cosine": sim.flatten().tolist(),
            "n_tokens": n_tokens,
        }
    )


def layer_similarity(states: LayerStates, *, encoder: str = "", exclude_first: bool = True) -> pd.DataFrame:
    """Mean cosine similarity between the states of one token in layers i and j, over real tokens.

    Tidy columns: encoder, layer_a, layer_b, cosine, n_tokens (all L x L pairs, symmetric).
    """
    tokens, first = _real_tokens(states)
    if exclude_first and (~first).any():
        tokens = tokens[:, ~first]
    unit = F.normalize(tokens, dim=-1).double()  # [L, n, D]
    sim = torch.einsum("and,bnd->ab", unit, unit) / max(unit.shape[1], 1)
    return _similarity_table(sim, unit.shape[1], encoder)


def norm_spread(stats: pd.DataFrame, norm: str = "none", tokens: str = "no_first") -> pd.DataFrame:
    """Per encoder: largest / smallest mean token norm across layers (how much one layer dominates a mean)."""
    sel = stats[(stats["norm"] == norm) & (stats["tokens"] == tokens)]
    if sel.empty:
        raise ValueError(
            f"No rows with norm={norm!r}, tokens={tokens!r}; compute them with layer_norm_stats."
        )
    grouped = sel.groupby("encoder", sort=False)["mean"]
    out = pd.DataFrame({"min_mean_norm": grouped.min(), "max_mean_norm": grouped.max()})
    out["ratio"] = out["max_mean_norm"] / out["min_mean_norm"]
    out["argmax_layer"] = sel.loc[grouped.idxmax(), "layer"].to_numpy()
    return out.reset_index()


def encoder_layer_stats(
    encoder: FrozenEncoder,
    prompts: Sequence[str],
    *,
    chunk_size: int = 64,
    batch_size: int = 32,
    norms: Sequence[str] = TOKEN_NORMS,  # per-token norms: a prompt-level one (minmax) needs its prompt
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(norm stats, similarity) for one encoder over many prompts, encoding ``chunk_size`` at a time.

    Only token norms (a few floats per token and layer) and similarity sums are kept between chunks,
    never the [L, N, T, D] states of all prompts, so 1,600 prompts fit in memory.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("The prompt list is empty; pass at least one prompt.")
    per_norm: dict[str, list[torch.Tensor]] = {n: [] for n in norms}
    firsts, sim_sum, sim_count = [], None, 0
    for start in range(0, len(prompts), chunk_size):
        states = encoder.encode(prompts[start : start + chunk_size], batch_size=batch_size, progress=progress)
        for norm in norms:
            per_norm[norm].append(token_norms(states, norm)[0])
        tokens, first = _real_tokens(states)
        firsts.append(first)
        unit = F.normalize(tokens[:, ~first], dim=-1).double()
        chunk_sim = torch.einsum("and,bnd->ab", unit, unit)
        sim_sum = chunk_sim if sim_sum is None else sim_sum + chunk_sim
        sim_count += unit.shape[1]
    values = {norm: torch.cat(parts, dim=1) for norm, parts in per_norm.items()}
    stats = _stats_table(values, torch.cat(firsts), encoder.name, encoder.num_states, PERCENTILES)
    return stats, _similarity_table(sim_sum / max(sim_count, 1), sim_count, encoder.name)


def load_prompts(source: str | Path = "genai-bench", n: int | None = None) -> list[str]:
    """Prompts for the explorer: ``"genai-bench"`` (the shipped 527), a GenAI-Bench folder or JSON file,
    a ``.txt`` file (one prompt per line) or a ``.csv`` with a ``prompt`` column; the first ``n`` (None = all).
    """
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n_prompts must be a positive integer or None (all), got {n!r}.")
    path = Path(source)
    if str(source) == "genai-bench":
        prompts = load_genai_bench()["prompt"].tolist()
    elif path.is_dir() or path.suffix == ".json":
        prompts = load_genai_bench(path)["prompt"].tolist()
    elif path.suffix == ".txt" and path.exists():
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".csv" and path.exists():
        table = pd.read_csv(path)
        if "prompt" not in table.columns:
            raise ValueError(f"{path} has no 'prompt' column (columns: {', '.join(table.columns)}); add one.")
        prompts = table["prompt"].astype(str).tolist()
    else:
        raise ValueError(
            f"Prompt source {str(source)!r} is not 'genai-bench', a GenAI-Bench folder/.json, an existing .txt "
            f"(one prompt per line) or a .csv with a 'prompt' column."
        )
    if not prompts:
        raise ValueError(f"Prompt source {str(source)!r} holds no prompts.")
    return prompts[:n]
