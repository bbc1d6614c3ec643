"""GenRM SFT pipeline: one module per DVC stage (``python -m src.<stage>``), and the helpers they
share, by job: ``data/`` (rows and batches), ``modeling/`` (models, loss, CPU kernels),
``training/`` (the loop and its state), ``judging/`` (the judge's prompt, formats and scores)."""

import os

# transformers warns at import that PyTorch is missing; this project never needs it.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Before anything imports mlx.core: bind MLX's CBLAS calls to a fast BLAS on Linux
# (src/modeling/blas.py).
from .modeling.blas import preload_fast_blas  # noqa: E402

preload_fast_blas()
