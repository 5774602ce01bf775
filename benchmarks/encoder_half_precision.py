"""An encoder loaded in bf16 / fp16 against float32: do the features stay finite, and how close are they?

gemma3-270m's first token is an attention sink beyond float16's range. Unguarded float16 turns it into NaN
that attention spreads to every token; the guard (`t2istudy.text.encoders`: clamp linear and block outputs
and norm inputs) keeps them finite. Per-token cosine similarity of norm_mean features to float32's, over
the real tokens of the shapes benchmark's prompts:

    .venv/bin/python benchmarks/encoder_half_precision.py [--encoder gemma3-270m] [--per_skill 4]

Writes figures/encoder_half_precision.csv.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pandas as pd
import torch

from t2istudy.text.encoders import FrozenEncoder, load_encoder
from t2istudy.world.shapes_benchmark import make_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="gemma3-270m", help="text encoder to load in each precision")
    parser.add_argument(
        "--strategy", default="norm_mean", help="layer-aggregation strategy of the features compared"
    )
    parser.add_argument("--per_skill", type=int, default=4, help="shapes benchmark prompts per skill")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parents[1] / "figures" / "encoder_half_precision.csv"),
        help="CSV the comparison is written to",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    prompts = make_benchmark(n_per_skill=args.per_skill, seed=0)["prompt"].tolist()
    ref, mask = load_encoder(args.encoder).encode_aggregated(prompts, args.strategy)
    rows = []
    for label, dtype, guard in (
        ("bf16", "bf16", True),
        ("fp16", "fp16", True),
        ("fp16 unguarded", "fp16", False),
    ):
        if not guard:
            FrozenEncoder._clamp_overflow = lambda *a: None  # noqa: SLF001 - the guard off, for the comparison
            FrozenEncoder._clamp_inputs = lambda *a: None
        enc = load_encoder(args.encoder, dtype=dtype)
        feats, _ = enc.encode_aggregated(prompts, args.strategy)
        real = feats[mask]
        cos = torch.nn.functional.cosine_similarity(real.nan_to_num(), ref[mask], dim=-1)
        rows.append({
            "encoder": args.encoder, "strategy": args.strategy, "dtype": label, "prompts": len(prompts),
            "tokens": int(mask.sum()), "non_finite": int((~torch.isfinite(real)).sum()),
            "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
        })  # fmt: skip
        print(rows[-1])
    pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
