"""Which BLAS MLX's CPU backend uses, and a fast one on Linux when one is installed.

The ``mlx-cpu`` Linux wheel links the reference BLAS (~6 GFLOP/s for a 1024^2 fp32 matmul).
Loading an optimized CBLAS with ``RTLD_GLOBAL`` *before* ``mlx.core`` is imported makes MLX's
``cblas_sgemm`` calls bind to it; after the import it does nothing, and a failed load is silent,
so ``blas_report`` checks what was actually loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import sysconfig
from pathlib import Path

_loaded: str | None = None


def _candidates() -> list[str]:
    env = os.environ.get("GENRM_BLAS")
    if env:
        return [env]
    found = []
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], sys.prefix}:
        found += sorted(glob.glob(str(Path(base) / "**/libmkl_rt.so*"), recursive=True))[:1]
    for name in ("openblas", "openblasp", "openblas64"):
        lib = ctypes.util.find_library(name)
        if lib:
            found.append(lib)
    return found


def fast_blas() -> str | None:
    """The fast CBLAS the preload would load (what ``LD_PRELOAD`` should name), or None."""
    found = _candidates()
    return found[0] if found else None


def preload_fast_blas() -> str | None:
    """On Linux, load the first fast CBLAS found; no-op elsewhere, when disabled or too late."""
    global _loaded
    if (
        sys.platform != "linux"
        or "mlx.core" in sys.modules
        or os.environ.get("GENRM_BLAS", "").lower() in ("0", "off", "none")
    ):
        return None
    for lib in _candidates():
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _loaded = lib
        return lib
    return None


def blas_report() -> str:
    """The BLAS libraries mapped into this process (Linux), e.g. 'mkl_rt', else 'platform'."""
    if sys.platform != "linux":
        return "accelerate" if sys.platform == "darwin" else "platform"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return _loaded or "unknown"
    libs = sorted(
        {
            Path(line.split()[-1]).name
            for line in maps.splitlines()
            if any(k in line for k in ("blas", "mkl_rt", "openblas"))
        }
    )
    return ", ".join(libs) or "none"


_warned = False


def warn_if_slow_blas() -> None:
    """Say once per process, with the fix, when MLX computes on the Linux CPU with the
    reference BLAS (a program that imported MLX before ``src``: the preload came too late)."""
    global _warned
    import mlx.core as mx

    if _warned or sys.platform != "linux" or mx.default_device() != mx.cpu:
        return
    report = blas_report()
    # numpy's own scipy-openblas is mapped too, but its symbols are prefixed: MLX never calls it
    mlx_can_use = [lib for lib in report.split(", ") if "scipy_openblas" not in lib]
    if not any(k in lib for lib in mlx_can_use for k in ("mkl", "openblas")):
        _warned = True
        fast = fast_blas()
        fix = (
            f"import src before mlx in your program, or start it with LD_PRELOAD={fast}"
            if fast
            else "install the project with `uv sync` (it brings MKL on x86_64), or point "
            "GENRM_BLAS at a libopenblas.so"
        )
        print(
            f"WARNING: MLX is using the reference BLAS (~30x slower matmuls; loaded: {report}). "
            f"Fix: {fix}.",
            file=sys.stderr,
        )
