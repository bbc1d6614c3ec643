"""GenRM SFT pipeline: one module per DVC stage, plus shared helpers."""

import os

# transformers warns at import that PyTorch is missing; this project never needs it.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Before anything imports mlx.core: bind MLX's CBLAS calls to a fast BLAS on Linux (src/blas.py).
from .blas import preload_fast_blas  # noqa: E402

preload_fast_blas()
