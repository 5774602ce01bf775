"""Prompt templates: text wrapped around each prompt before encoding, and which of its tokens are kept.

Released systems rarely feed the bare prompt to their LLM: Qwen-Image and HunyuanImage put it in a
chat turn after a system instruction, Sana prepends a long instruction, Lumina-Image-2.0 a system
prompt. With causal attention the prompt's tokens then carry what the template made of them; the
template's own tokens are usually cut before the image model sees the sequence, so the conditioning
keeps the prompt's length.

A template is an encoder-side option, named in a strategy string (``layer:-2[template=lumina2]``), so it
is recorded wherever the strategy is (options.json, params.json, the embedding cache key).

Tokens are built piece by piece, so dropping is exact: the tokenizer's own special tokens (Gemma's BOS,
BERT's [CLS] ... [SEP]) around ``prefix`` + ``prompt`` + ``suffix``, each piece tokenized alone. The kept
prompt tokens are therefore exactly the prompt's own tokens, at known positions. (Released pipelines
tokenize the joined string and cut a fixed count of tokens; where a token straddles the boundary the
two differ by that token.) ``keep`` says what reaches the aggregation:

    prompt          only the prompt's tokens
    bos+prompt      the tokenizer's leading special tokens, then the prompt's (Sana)
    prompt+suffix   everything from the prompt on, i.e. only the prefix is cut (Qwen-Image, HunyuanImage)
    all             nothing is cut (Lumina-Image-2.0, Cosmos-Predict2.5, Z-Image, FLUX.2)

Templates keep the released systems' structure and chat markers; their instructions are paraphrased in
our own words (same role, similar length), not copied. Qwen2.5 and SmolLM2 read
``<|im_start|>`` / ``<|im_end|>`` as their own chat tokens; Gemma-3-270M (a base model without a chat
format) and MiniLM read them as plain text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

KEEPS = ("prompt", "bos+prompt", "prompt+suffix", "all")


@dataclass(frozen=True)
class Template:
    """Text around the prompt and which tokens survive; ``source`` names the system it comes from."""

    name: str
    prefix: str
    suffix: str
    keep: str
    source: str

    def __post_init__(self) -> None:
        if self.keep not in KEEPS:
            raise ValueError(f"Template {self.name!r}: keep={self.keep!r}; choose one of {', '.join(KEEPS)}.")

    def digest(self) -> str:
        """Short hash of what the template does (text and keep), for cache keys."""
        fields = {k: v for k, v in asdict(self).items() if k != "source"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


# The instructions below are our own paraphrases of each system's instruction, same role and roughly the same
# length, with the released chat markup; the released wording is not copied. What a recipe reproduces is
# the structure (an instruction before the prompt, which tokens are cut), not one system's exact text.
_DESCRIBE = (  # the role of Qwen-Image's and HunyuanImage-2.1's system turn: "describe the picture in detail"
    "<|im_start|>system\nGive a detailed account of the picture: the colours, forms, sizes, surfaces, how many "
    "things there are, any writing, where the things sit relative to each other and what is behind them."
    "<|im_end|>\n<|im_start|>user\n"
)
_SANA = "\n".join(  # the role of Sana's default instruction: rewrite a short prompt into a rich one
    [
        "Turn the request below into a richer description that an image generator can follow. First judge how "
        "much detail it already has:",
        "- a short request gains concrete colours, forms, sizes, surfaces and positions;",
        "- a detailed request is only polished, without piling on more.",
        "Two examples of the change:",
        "- Request: a dog on a beach -> Richer: a small brown dog with floppy ears running along wet sand at low "
        "tide, a line of white foam behind it and gulls over the grey sea.",
        "- Request: a market -> Richer: an open-air fruit market in the morning, striped awnings over wooden "
        "stalls piled with oranges and melons, shoppers with baskets walking between the rows.",
        "Write the richer description of the request only, with no remarks of your own.",
        "Request: ",
    ]
)
_LUMINA = (  # the role of Lumina-Image-2.0's system prompt: an assistant aiming at close image-text alignment
    "You are a helper that turns written prompts into pictures which match the words as closely as possible. "
    "<Prompt Start> "
)
_COSMOS = (  # the role of Cosmos-Predict2.5's system turn: an assistant writing prompts for an image model
    "<|im_start|>system\nYou help by writing prompts for a picture generator.<|im_end|>\n<|im_start|>user\n"
)

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template(
            "qwen-image", _DESCRIBE, "<|im_end|>\n<|im_start|>assistant\n", "prompt+suffix", "Qwen-Image"
        ),
        Template("hunyuan", _DESCRIBE, "<|im_end|>", "prompt+suffix", "HunyuanImage-2.1"),
        Template("sana", _SANA, "", "bos+prompt", "Sana"),
        Template("lumina2", _LUMINA, "", "all", "Lumina-Image-2.0"),
        Template("cosmos2.5", _COSMOS, "<|im_end|>\n", "all", "Cosmos-Predict2.5"),
        Template(
            "chat",
            "<|im_start|>user\n",
            "<|im_end|>\n<|im_start|>assistant\n",
            "all",
            "Z-Image, FLUX.2-klein (one user turn, then the assistant's turn opens)",
        ),
    ]
}


def get_template(name: str) -> Template:
    """The named template; an unknown name lists the known ones."""
    if name not in TEMPLATES:
        raise ValueError(
            f"Unknown template {name!r}; known templates: {', '.join(TEMPLATES)} "
            "(add one to t2istudy/text/templates.py)."
        )
    return TEMPLATES[name]


@dataclass
class WrappedTokens:
    """A right-padded batch of templated prompts and the positions that survive the template's cut."""

    ids: torch.Tensor  # [N, T] long, what the encoder runs on
    mask: torch.Tensor  # [N, T] bool, True = real token
    keep: torch.Tensor  # [N, K] long: positions in ids of the kept tokens, in order (0 where padding)
    keep_mask: torch.Tensor  # [N, K] bool, True = a kept token
    n_truncated: int  # prompts whose own tokens were cut at max_length
    shared: int = 0  # leading tokens identical in every row (special tokens + the template's prefix)

    def kept(self, hidden: torch.Tensor) -> torch.Tensor:
        """Gather the kept tokens of one layer's states [N, T, D] -> [N, K, D], padding zeroed."""
        index = self.keep.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, index) * self.keep_mask.to(hidden.device)[..., None]


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer adds before and after a text (Gemma: [BOS], []; BERT: [CLS], [SEP])."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise ValueError(
        f"Cannot tell which special tokens {type(tokenizer).__name__} adds ('a' -> {full}, bare {bare}); "
        "use strategies without a template for this encoder."
    )


def wrap_and_tokenize(
    tokenizer, prompts: list[str], template: str | Template, max_length: int, pad_id: int
) -> WrappedTokens:
    """Tokenize ``prefix + prompt + suffix`` piece by piece; the prompt's own tokens are cut at
    ``max_length`` (the template's tokens come on top, as in the released pipelines)."""
    t = get_template(template) if isinstance(template, str) else template
    before, after = special_tokens(tokenizer)
    prefix, suffix = (
        tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        for text in (t.prefix, t.suffix)
    )
    pieces = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    rows, kept, n_truncated = [], [], 0
    for own in pieces:
        n_truncated += len(own) > max_length
        own = own[:max_length]
        rows.append(before + prefix + own + suffix + after)
        start = len(before) + len(prefix)
        if t.keep == "prompt":
            kept.append(list(range(start, start + len(own))))
        elif t.keep == "bos+prompt":
            kept.append(list(range(len(before))) + list(range(start, start + len(own))))
        elif t.keep == "prompt+suffix":
            kept.append(list(range(start, len(rows[-1]))))
        else:
            kept.append(list(range(len(rows[-1]))))
    return WrappedTokens(*_pad(rows, pad_id), *_pad(kept, 0), n_truncated, len(before) + len(prefix))


def _pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask
