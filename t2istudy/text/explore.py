"""An interactive explorer of layer-norm statistics for JupyterLab (ipywidgets + matplotlib).

``LayerExplorer(prompts, encoder=...)`` shows, for the real tokens of a few prompts side by side:
a layer x token heatmap of token norms, per-layer norm curves before and after a normalization,
the top-k channels per layer (massive activations) and the tokens that carry them, the cosine
similarity across layers, and the token norms each aggregation strategy hands to the projection.

The data behind each view is a plain function of the pooled tokens (``heatmap_data``,
``norm_curves``, ``channel_table``, ``similarity_matrix``, ``strategy_norms``; all of them at once:
``compute_views``), so tests check the numbers without a browser. Encodings are cached per
(encoder, prompt) in an ``EncodingCache``: changing a control redraws from the cache and never
reruns the LLM. A redraw renders one PNG into an ``Image`` widget (``benchmarks/explore_redraw.py``
times it).
"""

from __future__ import annotations

import functools
import html
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ipywidgets as widgets
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from t2istudy.text.aggregation import TOKEN_NORMS, aggregate, normalize
from t2istudy.text.encoders import BUILTIN_ENCODERS, FrozenEncoder, load_encoder
from t2istudy.text.massive import PooledTokens, pool_states, top_channels

DEFAULT_PROMPTS = ("a photo of two red circles to the left of a large blue square on a white table",)
SCALES = ("log", "linear")


# -- encodings, cached ------------------------------------------------------------------------------
@dataclass
class PromptEncoding:
    """One prompt's real tokens in every layer."""

    hidden: torch.Tensor  # [L, T, D] float32
    tokens: list[str]
    truncated: bool = False  # cut at the encoder's max_length: the view shows only its first tokens


@dataclass
class EncodingCache:
    """Loaded encoders by name and encodings by (encoder, prompt), so controls never rerun an LLM.

    ``load`` turns a name or path into an encoder (``load_encoder`` by default; tests pass a tiny one).
    ``encoder_calls`` counts forward passes: a control change that only redraws leaves it unchanged.
    """

    load: Callable[[str], FrozenEncoder] = load_encoder
    encoders: dict[str, FrozenEncoder] = field(default_factory=dict)
    encodings: dict[tuple[str, str], PromptEncoding] = field(default_factory=dict)
    encoder_calls: int = 0

    def encoder(self, name: str) -> FrozenEncoder:
        if name not in self.encoders:
            self.encoders[name] = self.load(name)
        return self.encoders[name]

    def get(self, name: str, prompts: Sequence[str]) -> list[PromptEncoding]:
        """The encodings of ``prompts`` under encoder ``name``, running it once on the missing ones."""
        prompts = list(prompts)
        missing = list(dict.fromkeys(p for p in prompts if (name, p) not in self.encodings))
        if missing:
            encoder = self.encoder(name)
            states = encoder.encode(missing)
            self.encoder_calls += 1
            pooled = pool_states(states, encoder.tokenizer)
            for i, prompt in enumerate(missing):
                own = pooled.prompt == i
                labels = [label for label, k in zip(pooled.labels, own.tolist(), strict=True) if k]
                cut = bool(states.n_truncated) and len(labels) >= getattr(
                    encoder, "max_length", len(labels) + 1
                )
                self.encodings[(name, prompt)] = PromptEncoding(pooled.hidden[:, own].clone(), labels, cut)
        return [self.encodings[(name, p)] for p in prompts]


def pool(encodings: Sequence[PromptEncoding], include_first: bool = True) -> PooledTokens:
    """Tokens of several prompts side by side, labelled ``token@position`` (``p.position`` from the
    second prompt on); without each prompt's first token if ``include_first`` is False."""
    if not encodings:
        raise ValueError("No prompts to show; type at least one prompt (one per line).")
    hidden, labels, first, position, prompt = [], [], [], [], []
    for index, enc in enumerate(encodings):
        n = len(enc.tokens)
        hidden.append(enc.hidden)
        where = (lambda pos: f"@{pos}") if index == 0 else (lambda pos, i=index: f"@{i}.{pos}")
        labels += [f"{token}{where(pos)}" for pos, token in enumerate(enc.tokens)]
        first.append(torch.arange(n) == 0)
        position.append(torch.arange(n))
        prompt.append(torch.full((n,), index))
    pooled = PooledTokens(
        torch.cat(hidden, dim=1), labels, torch.cat(first), torch.cat(position), torch.cat(prompt)
    )
    if include_first:
        return pooled
    if bool(pooled.first.all()):
        raise ValueError(
            "Every prompt is a single token: nothing is left without the first; turn it back in."
        )
    return pooled.without_first()


# -- the data behind each view ----------------------------------------------------------------------
def token_norm_matrix(pooled: PooledTokens, norm: str = "none") -> torch.Tensor:
    """L2 norm of every token in every layer after ``norm`` (``none`` = raw): [L, n]."""
    return normalize(pooled.hidden, norm).norm(dim=-1)


def heatmap_data(pooled: PooledTokens, norm: str = "none") -> pd.DataFrame:
    """The heatmap: rows = layers (0 = embedding output), columns = token labels, cells = token norms."""
    return pd.DataFrame(
        token_norm_matrix(pooled, norm).double().numpy(),
        index=pd.RangeIndex(pooled.hidden.shape[0], name="layer"),
        columns=pooled.labels,
    )


def norm_curves(pooled: PooledTokens, norm: str) -> pd.DataFrame:
    """Per layer, the mean and max token norm before (raw) and after ``norm``."""
    before, after = token_norm_matrix(pooled, "none").double(), token_norm_matrix(pooled, norm).double()
    return pd.DataFrame(
        {
            "layer": np.arange(before.shape[0]),
            "before_mean": before.mean(dim=1).numpy(),
            "before_max": before.amax(dim=1).numpy(),
            "after_mean": after.mean(dim=1).numpy(),
            "after_max": after.amax(dim=1).numpy(),
        }
    )


def channel_table(pooled: PooledTokens, k: int = 4) -> pd.DataFrame:
    """Top-``k`` channels per layer by magnitude (massive activations) and their carrier tokens."""
    return top_channels(pooled, k)


def similarity_matrix(pooled: PooledTokens, norm: str = "none") -> pd.DataFrame:
    """Mean cosine similarity [L, L] of one token's (normalized) states in two layers."""
    unit = torch.nn.functional.normalize(normalize(pooled.hidden, norm), dim=-1).double()
    sim = torch.einsum("and,bnd->ab", unit, unit) / unit.shape[1]
    layers = pd.RangeIndex(sim.shape[0], name="layer")
    return pd.DataFrame(sim.numpy(), index=layers, columns=layers)


def strategies_for(num_states: int, layer: int, norm: str) -> list[str]:
    """The strategies compared in the last view: last, layer:k, mean, norm_mean (and with ``norm``)."""
    names = ["last", f"layer:{layer}", "mean", "norm_mean"]
    if norm not in ("none", "layernorm"):
        names.append(f"norm_mean[{norm}]")
    return names


def strategy_norms(pooled: PooledTokens, strategies: Sequence[str]) -> pd.DataFrame:
    """Token norms each strategy hands to the projection: rows = strategies, columns = token labels."""
    mask = torch.ones(1, pooled.hidden.shape[1], dtype=torch.bool)
    rows = {
        s: aggregate(pooled.hidden[:, None], mask, s)[0].norm(dim=-1).double().numpy() for s in strategies
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=pooled.labels)


@dataclass(frozen=True)
class Settings:
    """Every control's value; the views depend on nothing else."""

    encoder: str = BUILTIN_ENCODERS[0]
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    norm: str = "none"
    include_first: bool = True
    scale: str = "log"
    layer: int = -1  # for layer:k and the channel table; negative counts from the end
    top_k: int = 4

    def check(self) -> None:
        if self.norm not in TOKEN_NORMS:
            raise ValueError(f"Unknown normalization {self.norm!r}; choose one of {', '.join(TOKEN_NORMS)}.")
        if self.scale not in SCALES:
            raise ValueError(f"Unknown scale {self.scale!r}; choose 'log' or 'linear'.")


def compute_views(pooled: PooledTokens, settings: Settings) -> dict[str, pd.DataFrame]:
    """The data behind all five views for these settings (pooled tokens already exclude the first
    token when ``settings.include_first`` is False)."""
    settings.check()
    num_states = pooled.hidden.shape[0]
    layer = settings.layer % num_states
    return {
        "heatmap": heatmap_data(pooled, settings.norm),
        "curves": norm_curves(pooled, settings.norm),
        "channels": channel_table(pooled, settings.top_k),
        "similarity": similarity_matrix(pooled, settings.norm),
        "strategies": strategy_norms(pooled, strategies_for(num_states, layer, settings.norm)),
    }


# -- drawing ----------------------------------------------------------------------------------------
def _tick_every(n: int, most: int = 48) -> int:
    return max(1, int(np.ceil(n / most)))


def draw(views: dict[str, pd.DataFrame], settings: Settings) -> Figure:
    """One figure with the five views (a plain Figure: no pyplot state, nothing shown by itself)."""
    log = settings.scale == "log"
    fig = Figure(figsize=(14, 9))  # fixed margins: a constrained layout would double the drawing time
    grid = fig.add_gridspec(2, 3, left=0.05, right=0.98, bottom=0.12, top=0.96, hspace=0.5, wspace=0.3)
    heat_ax = fig.add_subplot(grid[0, :2])
    sim_ax, curve_ax = fig.add_subplot(grid[0, 2]), fig.add_subplot(grid[1, 0])
    chan_ax, strat_ax = fig.add_subplot(grid[1, 1]), fig.add_subplot(grid[1, 2])

    heat = views["heatmap"]
    values = heat.to_numpy()
    scale = LogNorm(max(values.min(), 1e-6), values.max()) if log else Normalize(values.min(), values.max())
    image = heat_ax.imshow(values, aspect="auto", origin="lower", cmap="magma", norm=scale)
    step = _tick_every(heat.shape[1])
    heat_ax.set_xticks(range(0, heat.shape[1], step), heat.columns[::step], rotation=90, fontsize=7)
    heat_ax.set(ylabel="layer (0 = embedding)", title=f"Token norm, {settings.norm} ({settings.encoder})")
    fig.colorbar(image, ax=heat_ax, pad=0.01)

    sim = views["similarity"].to_numpy()
    image = sim_ax.imshow(sim, origin="lower", cmap="viridis", vmin=min(0.0, sim.min()), vmax=1.0)
    sim_ax.set(xlabel="layer", ylabel="layer", title=f"Cosine across layers ({settings.norm})")
    fig.colorbar(image, ax=sim_ax, pad=0.01)

    curves = views["curves"]
    curve_ax.plot(curves["layer"], curves["before_mean"], "o-", ms=3, color="C3", label="raw, mean")
    curve_ax.plot(curves["layer"], curves["before_max"], ":", color="C3", label="raw, max")
    curve_ax.plot(
        curves["layer"], curves["after_mean"], "o-", ms=3, color="C0", label=f"{settings.norm}, mean"
    )
    curve_ax.set(xlabel="layer", ylabel="token L2 norm", yscale="log" if log else "linear")
    curve_ax.set_title("Token norm per layer, before / after")
    curve_ax.legend(fontsize=7)

    channels = views["channels"]
    median = channels.drop_duplicates("layer")[["layer", "median_channel"]]
    peak = channels.groupby("channel")["relative"].max().nlargest(settings.top_k)
    for channel in peak.index:
        rows = channels[channels["channel"] == channel]
        chan_ax.plot(rows["layer"], rows["magnitude"], "o-", ms=3, label=f"channel {channel}")
    chan_ax.plot(median["layer"], median["median_channel"], "--", color="grey", label="median channel")
    chan_ax.set(xlabel="layer", ylabel="max |activation|", yscale="log" if log else "linear")
    chan_ax.set_title(f"Top-{settings.top_k} channels (massive activations)")
    chan_ax.legend(fontsize=7)

    strategies = views["strategies"]
    for name, row in strategies.iterrows():
        strat_ax.plot(range(strategies.shape[1]), row.to_numpy(), "o-", ms=3, label=name)
    step = _tick_every(strategies.shape[1], 24)
    strat_ax.set_xticks(
        range(0, strategies.shape[1], step), strategies.columns[::step], rotation=90, fontsize=7
    )
    strat_ax.set(ylabel="token L2 norm", yscale="log" if log else "linear")
    strat_ax.set_title("Norm handed to the projection")
    strat_ax.legend(fontsize=7)
    return fig


def figure_png(fig: Figure, dpi: int = 72) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def channel_html(channels: pd.DataFrame, layer: int) -> str:
    """The channel table of one layer as HTML, beside the figure."""
    rows = channels[channels["layer"] == layer]
    columns = [
        "rank",
        "channel",
        "magnitude",
        "relative",
        "value",
        "peak_token",
        "carriers",
        "carrier_tokens",
    ]
    table = rows[columns].to_html(index=False, float_format=lambda v: f"{v:.3g}", escape=True)
    return f"<b>Top channels at layer {layer} and the tokens that carry them</b>{table}"


# -- the widget -------------------------------------------------------------------------------------
class LayerExplorer:
    """Controls + one figure + one table; display it (the last expression of a cell) in JupyterLab.

    Every control is a public widget (``encoder``, ``prompts``, ``norm``, ``first_token``, ``scale``,
    ``layer``, ``top_k``): set ``.value`` from Python and the explorer redraws, as a click would.
    """

    def __init__(
        self,
        prompts: Sequence[str] = DEFAULT_PROMPTS,
        encoder: str = BUILTIN_ENCODERS[0],
        *,
        norm: str = "none",
        include_first: bool = True,
        scale: str = "log",
        layer: int = -1,
        top_k: int = 4,
        max_length: int | None = None,
        cache: EncodingCache | None = None,
    ):
        Settings(encoder, tuple(prompts), norm, include_first, scale, layer, top_k).check()
        # max_length: tokens kept per prompt (load_encoder's; default 128): a longer prompt is cut, and said so
        self.cache = cache or EncodingCache(load=functools.partial(load_encoder, max_length=max_length))
        wide = widgets.Layout(width="460px")
        self.encoder = widgets.Combobox(
            value=str(encoder),
            options=list(BUILTIN_ENCODERS),
            description="encoder",
            placeholder="a built-in name or a path",
            ensure_option=False,
            continuous_update=False,
            layout=wide,
        )
        self.prompts = widgets.Textarea(
            value="\n".join(prompts),
            description="prompts",
            placeholder="one prompt per line",
            continuous_update=False,
            layout=widgets.Layout(width="460px", height="70px"),
        )
        self.norm = widgets.Dropdown(options=list(TOKEN_NORMS), value=norm, description="normalize")
        self.first_token = widgets.ToggleButtons(
            options=[("first token in", True), ("first token out", False)], value=include_first
        )
        self.scale = widgets.ToggleButtons(options=list(SCALES), value=scale)
        self.layer = widgets.IntSlider(value=0, min=0, max=0, description="layer k", continuous_update=False)
        self.top_k = widgets.IntSlider(
            value=top_k, min=1, max=16, description="top-k", continuous_update=False
        )
        self.status = widgets.HTML()
        self.image = widgets.Image(format="png")
        self.table = widgets.HTML()
        self.last_redraw_s = float("nan")
        self._quiet = True
        self._set_layer_range(layer)
        for control in (
            self.encoder,
            self.prompts,
            self.norm,
            self.first_token,
            self.scale,
            self.layer,
            self.top_k,
        ):
            control.observe(self.redraw, names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox(
                    [
                        widgets.VBox([self.encoder, self.prompts]),
                        widgets.VBox([self.norm, self.layer, self.top_k]),
                    ]
                ),
                widgets.HBox([self.first_token, self.scale]),
                self.status,
                self.image,
                self.table,
            ]
        )
        self._quiet = False
        self.redraw()

    # the explorer displays as its widget
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def prompt_list(self) -> list[str]:
        return [line.strip() for line in self.prompts.value.splitlines() if line.strip()]

    def settings(self) -> Settings:
        return Settings(
            self.encoder.value.strip(),
            tuple(self.prompt_list()),
            self.norm.value,
            self.first_token.value,
            self.scale.value,
            self.layer.value,
            self.top_k.value,
        )

    def pooled(self) -> PooledTokens:
        """The current prompts' tokens under the current encoder (from the cache when seen before)."""
        settings = self.settings()
        encodings = self.cache.get(settings.encoder, settings.prompts)
        return pool(encodings, settings.include_first)

    def views(self) -> dict[str, pd.DataFrame]:
        """The data behind every view for the current control values."""
        return compute_views(self.pooled(), self.settings())

    def _set_layer_range(self, layer: int | None = None) -> None:
        """Fit the layer slider to the current encoder (its number of states), without a redraw."""
        quiet, self._quiet = self._quiet, True
        try:
            num_states = self.cache.encoder(self.encoder.value.strip()).num_states
        except (ValueError, FileNotFoundError, OSError):
            self._quiet = quiet
            return  # the redraw reports the bad encoder
        wanted = self.layer.value if layer is None else layer % num_states
        self.layer.max = num_states - 1
        self.layer.value = min(wanted, num_states - 1)
        self._quiet = quiet

    def redraw(self, change=None) -> None:
        """Recompute the views from the cache and redraw; errors show in the status line."""
        if self._quiet:
            return
        if change is not None and change.get("owner") is self.encoder:
            self._set_layer_range(-1)
        start = time.perf_counter()
        try:
            settings = self.settings()
            views = compute_views(self.pooled(), settings)
            fig = draw(views, settings)
            self.image.value = figure_png(fig)
            self.table.value = channel_html(views["channels"], settings.layer)
        except (ValueError, FileNotFoundError, OSError, RuntimeError) as err:
            # the figure and table of the previous settings would read as this one's: cleared
            self.image.value, self.table.value = b"", ""
            self.status.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        self.last_redraw_s = time.perf_counter() - start
        tokens = views["heatmap"].shape[1]
        self.status.value = (
            f"{len(settings.prompts)} prompt(s), {tokens} tokens, encoder calls so far: "
            f"{self.cache.encoder_calls}; redraw {self.last_redraw_s:.2f} s"
        ) + self._truncation_note(settings)

    def _truncation_note(self, settings: Settings) -> str:
        """A warning line when a prompt was cut at the encoder's max_length (its tail is not shown)."""
        cut = [p for p in settings.prompts if self.cache.encodings[(settings.encoder, p)].truncated]
        if not cut:
            return ""
        limit = getattr(self.cache.encoder(settings.encoder), "max_length", "?")
        return (
            f"<br><span style='color:#b00'>{len(cut)} prompt(s) cut at max_length={limit} tokens: only their "
            "first tokens are shown; pass explore(..., max_length=N) for more (up to the model's "
            "position limit).</span>"
        )


def explore(
    prompts: Sequence[str] = DEFAULT_PROMPTS, encoder: str = BUILTIN_ENCODERS[0], **options
) -> LayerExplorer:
    """Build a ``LayerExplorer`` (display it as a cell's last expression); ``options`` are its keywords, e.g.
    ``max_length=512`` to see prompts longer than the default 128 tokens whole."""
    return LayerExplorer(prompts, encoder, **options)
