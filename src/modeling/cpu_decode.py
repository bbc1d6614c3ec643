"""Decoding on the CPU in C: what MLX's CPU backend runs far slower than PyTorch in a judge's
decode step.

A decode step multiplies a few rows by every weight (what MKL does well, for MLX and PyTorch
alike) and, between those matmuls, runs small element-wise passes and attention. MLX's CPU backend
runs the element-wise passes on one core and the attention as hundreds of tiny single-threaded
products over the whole fixed-capacity buffer; PyTorch runs both on every core. MLX lets a
custom kernel in only on Metal and CUDA, so ``cpu_decode.c`` (compiled once per machine with the
system C compiler, loaded with ctypes) does it at two levels:

- ``HostLlama``: a Llama-family model's whole decode step in one call (``decode_step``): the
  matmuls through the process's CBLAS ``sgemm`` (the one MLX calls), the norms, RoPE and SwiGLU
  in loops the compiler vectorizes, attention as below. Built only where the model is laid out
  as mlx-lm's Llama and a short decode here matches MLX's forward pass (``HostLlama.check``);
  on SmolLM2 at batch 32, 116 ms a step against 178 ms with only attention in C.
- ``HostKV``: any model's decode attention (``decode_attention``). The cache object mlx-lm's
  attention layers see (``offset``, ``update_and_fetch``, ``make_mask``);
  ``src/modeling/kernels.py``'s attention hands a call with a ``HostKV`` to ``HostKV.attend``,
  which writes the step's keys and values into the row's NumPy buffer and attends over each
  row's own positions only, its (row, kv head) pairs split across the cores.

Only models bound with the fast kernels (``cpu_kernels: fast``), on the CPU, in float32, and only
``src/judging/generate.py``'s decoders use them: nothing else in the process changes. Where no C
compiler is found (or it fails) ``library()`` returns None, says so once, and generation keeps
MLX (the same judgements, slower).
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
import weakref
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("cpu_decode.c")
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
    out = cache_dir() / f"cpu_decode-{key}.so"
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
    f = ctypes.c_float
    lib.decode_step.argtypes = [p, p, p, p, *[i] * 7, f, f, f, p, p, i, p, p, i, p, i, p, i]
    lib.decode_step.restype = i
    _state["lib"] = lib
    return lib


def _unavailable(why: str, fix: str):
    print(
        f"NOTE: judging decodes in MLX on the CPU (slower, same judgements): {why}. Fix: {fix}.",
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
            raise MemoryError("cpu_decode.c: no memory for its scores")
        return mx.array(out)[:, :, None, :]


def _sgemm() -> int | None:
    """The address of the CBLAS ``cblas_sgemm`` this process has loaded (MKL where
    ``src/modeling/blas.py`` preloaded it; Accelerate on macOS), or None."""
    if "sgemm" not in _state:
        _state["sgemm"] = None
        libs = [None] + (
            ["/System/Library/Frameworks/Accelerate.framework/Accelerate"]
            * (sys.platform == "darwin")
        )
        for name in libs:
            try:
                _state["sgemm"] = ctypes.cast(ctypes.CDLL(name).cblas_sgemm, ctypes.c_void_p).value
                break
            except (OSError, AttributeError):
                continue
    return _state["sgemm"]


def _exactly(module, kind) -> bool:
    return type(module) is kind and "bias" not in module


def _llama_layout(model):
    """The float32 arrays ``decode_step`` reads, if ``model`` is laid out as mlx-lm's Llama
    (plain ``nn.Linear`` without biases, RMSNorm, half-split RoPE without scaling, tied or own
    head); else None. That a model computes what ``decode_step`` does is checked apart."""
    import mlx.core as mx
    import mlx.nn as nn

    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if not layers or not _exactly(getattr(body, "embed_tokens", None), nn.Embedding):
        return None
    head = model.lm_head if "lm_head" in model else body.embed_tokens
    if not (_exactly(head, nn.Linear) or head is body.embed_tokens):
        return None
    if type(getattr(body, "norm", None)) is not nn.RMSNorm:
        return None
    weights, eps = [], body.norm.eps
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        try:
            linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
            linears += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
            norms = [layer.input_layernorm, layer.post_attention_layernorm]
            rope, heads, kv_heads = attn.rope, attn.n_heads, attn.n_kv_heads
        except AttributeError:
            return None
        dim = attn.q_proj.weight.shape[0] // heads
        if not (
            all(_exactly(x, nn.Linear) for x in linears)
            and all(type(x) is nn.RMSNorm and x.eps == eps for x in norms)
            and type(rope) is nn.RoPE
            and not rope.traditional
            and rope.scale == 1.0
            and rope.dims == dim
            and attn.scale == dim**-0.5
        ):
            return None
        q, k, v, o, gate, up, down = (x.weight for x in linears)
        weights += [norms[0].weight, q, k, v, o, norms[1].weight, gate, up, down]
    shape = dict(
        layers=len(layers),
        hidden=q.shape[1],
        inter=gate.shape[0],
        heads=heads,
        kv_heads=kv_heads,
        dim=dim,
        vocab=head.weight.shape[0],
        eps=eps,
        theta=rope.base,
    )
    arrays = [*weights, body.norm.weight, body.embed_tokens.weight, head.weight]
    if any(a.dtype != mx.float32 for a in arrays):
        return None
    return arrays, shape


def _forget(key) -> None:
    if _state.get("llama", (None,))[0] == key:
        del _state["llama"]


class HostLlama:
    """A Llama-family model's whole decode step in C (``cpu_decode.c``'s ``decode_step``): its
    matmuls through the process's CBLAS sgemm (the one MLX calls), the rest in loops the
    compiler vectorizes, attention as ``HostKV``'s. MLX runs a decode step's element-wise ops on
    one core, and handing each layer's attention to C and back cost ~0.6 ms a layer; one call
    per step leaves only the matmuls (benchmarks/README.md, "Judging speed").

    ``build`` returns one only where the model is laid out as mlx-lm's Llama (SmolLM2, Llama,
    Mistral-style configs), in float32, and where a check passes: a short batch decoded here,
    step by step from an empty cache, must give the logits MLX's forward pass gives. The model's
    arrays are read in place (no copy); the caches are the decoder's NumPy buffers."""

    def __init__(self, arrays, shape, lib, sgemm):
        import mlx.core as mx

        mx.eval(arrays)
        self.arrays = [np.asarray(a) for a in arrays]  # views of MLX's memory
        self._mx = arrays  # kept alive as long as the views
        n = len(self.arrays) - 3
        self.weights = (ctypes.c_void_p * n)(*[a.ctypes.data for a in self.arrays[:n]])
        self.shape, self.lib, self.sgemm = shape, lib, sgemm

    @classmethod
    def build(cls, model):
        """The model's C decode step, or None. Built once per model and weights (the check
        decodes 12 tokens: ~0.4 s on SmolLM2); the last one is kept until its model is freed."""
        lib, sgemm = library(), _sgemm()
        layout = _llama_layout(model) if lib is not None and sgemm is not None else None
        if layout is None:
            return None
        key = (id(model), *map(id, layout[0]))
        kept = _state.get("llama")
        if kept is not None and kept[0] == key:
            return kept[1]
        host = cls(*layout, lib, sgemm)
        host = host if host.check(model) else None
        _state["llama"] = (key, host)  # holds the weights' arrays: id()s stay unique
        weakref.finalize(model, _forget, key)
        return host

    def step(self, tokens, keys: list, values: list, left: np.ndarray, pos: int) -> np.ndarray:
        """The logits ``(rows, vocab)`` after feeding ``tokens`` at ``pos``, having written
        their keys and values into ``keys``/``values`` (one ``(rows, kv heads, capacity, dim)``
        buffer per layer; row ``i`` holds its tokens from ``left[i]``)."""
        s = self.shape
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        rows, cap = len(tokens), keys[0].shape[2]
        if pos >= cap:
            raise ValueError(f"decode_step: position {pos} is past the cache's {cap}")
        logits = np.empty((rows, s["vocab"]), np.float32)
        k = (ctypes.c_void_p * len(keys))(*[a.ctypes.data for a in keys])
        v = (ctypes.c_void_p * len(values))(*[a.ctypes.data for a in values])
        norm, embed, head = (a.ctypes.data for a in self.arrays[-3:])
        err = self.lib.decode_step(
            self.weights, norm, embed, head,
            s["layers"], s["hidden"], s["inter"], s["heads"], s["kv_heads"], s["dim"], s["vocab"],
            s["eps"], s["theta"], s["dim"] ** -0.5, self.sgemm,
            tokens.ctypes.data, rows, k, v, cap, left.ctypes.data, pos, logits.ctypes.data,
            threads(),
        )  # fmt: skip
        if err:
            raise MemoryError("cpu_decode.c: no memory for a decode step")
        return logits

    def caches(self, rows: int, capacity: int):
        s = self.shape
        size = (rows, s["kv_heads"], capacity, s["dim"])
        return [np.zeros(size, np.float32) for _ in range(s["layers"])], [
            np.zeros(size, np.float32) for _ in range(s["layers"])
        ]

    def check(self, model, tokens: int = 6) -> bool:
        """Two rows decoded here from an empty cache (the second starting two positions late,
        as left padding does) against MLX's forward pass over the same tokens."""
        import mlx.core as mx

        vocab = self.shape["vocab"]
        ids = np.random.default_rng(0).integers(0, min(vocab, 1000), (2, tokens)).astype(np.int32)
        left = np.array([0, 2], np.int32)
        keys, values = self.caches(2, tokens)
        got = np.stack([self.step(ids[:, t], keys, values, left, t) for t in range(tokens)], 1)
        want = [np.array(model(mx.array(ids[i : i + 1, left[i] :]))[0]) for i in range(2)]
        scale = max(1.0, float(np.abs(want[0]).max()))
        return all(
            np.allclose(got[i, left[i] :], want[i], rtol=1e-3, atol=1e-3 * scale) for i in range(2)
        )
