"""t2istudy: frozen decoder-only LLMs as text encoders for text-to-image diffusion.

Importing the package sets OMP_WAIT_POLICY=PASSIVE (unless already set) before torch loads:
on a shared 2-core machine torch's default OpenMP spinning made small ops ~10x slower.
"""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
