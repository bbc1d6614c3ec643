"""Decode attention on all CPU cores, in C: the one part of a judge's decode step that MLX's CPU
backend runs far slower than PyTorch.

A decode step's attention is, per row and key/value head, a (3 x 64) @ (64 x cache) product, a
masked softmax and a second product. MLX runs those as hundreds of tiny single-threaded BLAS
calls plus element-wise passes, over the whole fixed-capacity buffer; PyTorch's SDPA is one
fused kernel over the cache's real length, on every core. On SmolLM2 at batch 32 that was 28 vs
17 ms of a ~135 ms step (benchmarks/README.md, "Judging speed"), and MLX lets a custom kernel in
only on Metal and CUDA. So here the decode step leaves MLX at each layer's attention:
``cpu_attention.c`` (compiled once per machine with the system C compiler, loaded with ctypes)
writes the step's keys and values into the row's cache, kept in NumPy buffers, and attends over
each row's own positions only, its (row, kv head) pairs split across the cores.

``HostKV`` is the cache object mlx-lm's attention layers see (``offset``, ``update_and_fetch``,
``make_mask``); ``src/modeling/kernels.py``'s attention hands a call with a ``HostKV`` to
``HostKV.attend``. Only models bound with the fast kernels (``cpu_kernels: fast``), on the CPU,
in float32, and only ``src/judging/generate.py``'s decoder make them: nothing else in the
process changes. Where no C compiler is found (or it fails) ``library()`` returns None, says so
once, and generation keeps MLX's attention (the same judgements, slower).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("cpu_attention.c")
FLAGS = ("-O3", "-fPIC", "-shared", "-pthread")
_state: dict = {}


def threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _cpu_identity() -> str:
    """What ``-march=native`` compiles for: a library built on one CPU is not loaded on another
    (a home directory shared between machines)."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({x for x in info if x.startswith(("model name", "flags"))}))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "genrm-cpu-kernels"


def _compile(cc: str, out: Path) -> str | None:
    """Build the library at ``out`` (atomically: concurrent builds cannot tear it); returns the
    compiler's complaint, or None."""
    out.parent.mkdir(parents=True, exist_ok=True)
    error = ""
    for arch in (["-march=native"], []):  # some compilers (Apple clang on arm64) refuse it
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        cmd = [cc, *FLAGS, *arch, "-o", tmp, str(SOURCE), "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            done, error = None, str(exc)
        if done is not None and done.returncode == 0:
            os.replace(tmp, out)
            return None
        os.unlink(tmp)
        if done is not None:
            error = (done.stderr or done.stdout).strip()[-500:]
    return error or "the compiler failed"


def library():
    """The compiled kernel (ctypes), built on first use; None, said once on stderr with the
    fix, where it cannot be built or loaded."""
    if "lib" in _state:
        return _state["lib"]
    _state["lib"] = None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return _unavailable("no C compiler found (cc, gcc, clang)", "install gcc or set CC")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, cc.encode(), " ".join(FLAGS).encode(), _cpu_identity().encode()])
    ).hexdigest()[:16]
    out = cache_dir() / f"cpu_attention-{key}.so"
    if not out.is_file():
        try:
            error = _compile(cc, out)
        except OSError as exc:
            error = str(exc)
        if error:
            why = f"{cc} could not build {SOURCE.name}: {error}"
            return _unavailable(why, "check the compiler")
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as exc:
        return _unavailable(f"{out} did not load: {exc}", f"delete {out} to rebuild it")
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.decode_attention.argtypes = [p, p, p, p, p, p, i, p, i, i, i, i, i, ctypes.c_float, i]
    lib.decode_attention.restype = i
    _state["lib"] = lib
    return lib


def _unavailable(why: str, fix: str):
    print(
        f"NOTE: judging decodes with MLX's attention on the CPU (slower, same judgements): {why}. "
        f"Fix: {fix}.",
        file=sys.stderr,
    )
    return None


def _host(a) -> np.ndarray:
    """An evaluated MLX array as C-ordered float32 NumPy (no copy where it already is)."""
    return np.ascontiguousarray(np.asarray(a), dtype=np.float32)


class HostKV:
    """One layer's keys and values for decoding, in NumPy buffers of ``(rows, kv heads,
    capacity, head dim)``; row ``i`` holds its tokens at positions ``left[i]`` .. ``pos - 1``.
    ``pos`` and ``offset`` (each row's RoPE position) are the decoder's, shared by the layers."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, left: np.ndarray, pos: int, offset):
        self.keys, self.values, self.left, self.pos, self.offset = keys, values, left, pos, offset

    def update_and_fetch(self, keys, values):
        return keys, values  # written by ``attend``, which gets them next

    def make_mask(self, *args, **kwargs):
        return None  # ``attend`` reads each row's positions from ``left`` and ``pos``

    def attend(self, queries, keys, values, scale: float):
        """The attention output for one new position per row, ``(rows, heads, 1, dim)``, having
        written ``keys`` and ``values`` (``(rows, kv heads, 1, dim)``) at ``pos``."""
        import mlx.core as mx

        rows, heads, length, dim = queries.shape
        if length != 1 or self.pos >= self.keys.shape[2]:
            raise ValueError(f"HostKV decodes one position within capacity (got {length})")
        mx.eval(queries, keys, values)
        q, k, v = _host(queries), _host(keys), _host(values)
        out = np.empty((rows, heads, dim), np.float32)
        err = library().decode_attention(
            q.ctypes.data,
            k.ctypes.data,
            v.ctypes.data,
            self.keys.ctypes.data,
            self.values.ctypes.data,
            self.left.ctypes.data,
            self.pos,
            out.ctypes.data,
            rows,
            heads,
            self.keys.shape[1],
            self.keys.shape[2],
            dim,
            scale,
            threads(),
        )
        if err:
            raise MemoryError("cpu_attention.c: no memory for its scores")
        return mx.array(out)[:, :, None, :]
