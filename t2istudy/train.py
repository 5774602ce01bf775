"""`python -m t2istudy.train` and `from t2istudy.train import ...`, kept for the commands in docs and scripts.

The training loop lives in `t2istudy.diffusion.train`, options in `t2istudy.diffusion.options` and loading
a finished run in `t2istudy.diffusion.checkpoint`; this module only forwards to them.
"""

from t2istudy.diffusion.checkpoint import Denoiser, final_weights, load_denoiser
from t2istudy.diffusion.options import TrainOptions, load_options, resolve_options
from t2istudy.diffusion.train import build_parser, main, train

__all__ = [
    "Denoiser",
    "TrainOptions",
    "build_parser",
    "final_weights",
    "load_denoiser",
    "load_options",
    "main",
    "resolve_options",
    "train",
]

if __name__ == "__main__":
    main()
