"""Fast float32 attention softmax and SwiGLU for MLX's CPU backend.

MLX's CPU backend runs transcendental element-wise ops (``exp``, ``sigmoid``, ``tanh``) one
scalar at a time on one core: on SmolLM2-135M (batch 4 x 170 tokens) a layer's SiLU takes 25 ms
and its attention 25 ms, against 17 ms for all of the layer's matmuls (MKL). Arithmetic ops
fused by ``mx.compile`` are vectorized, so this module computes the same functions from
arithmetic only:

- ``sigmoid`` through Eigen's float32 rational approximation of ``tanh`` (max error a few ulp);
- ``exp`` (x <= 0, after the softmax max-subtraction) as ``2**n * p(f)``: ``p`` a degree-7
  polynomial for ``2**f`` on [0, 1) (relative error < 1e-6), ``2**n`` built from its exponent bits.

``use_fast_kernels(model, "fast")`` binds them into one model's layers where mlx-lm's code calls
``swiglu`` and ``scaled_dot_product_attention`` (nothing process-wide). Only float32 inputs on the
CPU take the fast path; quantized KV caches, attention sinks, other dtypes and devices go to
mlx-lm's own functions. Gradients are explicit (``custom_function`` VJPs of the exact formulas,
evaluated at the approximations). The choice is the ``model.cpu_kernels`` param (``fast`` |
``exact``); ``exact`` also gives the loss MLX's own ``exp`` (``src/modeling/losses.py``). With
``fast``, a judge's decode steps on the CPU take their attention from C
(``src/modeling/cpu_decode.py``).
"""

from __future__ import annotations

import types

import mlx.core as mx

from .cpu_decode import HostKV

KERNELS = ("fast", "exact")  # the ``model.cpu_kernels`` param


def kernels_arg():
    """The ``--cpu-kernels`` field of every stage that computes with a model."""
    from ..runtime import arg

    return arg(
        "fast",
        "float32 CPU kernels: fast (src/modeling/kernels.py) or exact (MLX's)",
        choices=KERNELS,
    )


# Eigen's generic_fast_tanh_float: tanh(x) ~ x P(x^2) / Q(x^2) on [-7.9, 7.9], +-1 beyond.
_TANH_CLAMP = 7.90531110763549805
_TANH_P = (
    4.89352455891786e-03,
    6.37261928875436e-04,
    1.48572235717979e-05,
    5.12229709037114e-08,
    -8.60467152213735e-11,
    2.00018790482477e-13,
    -2.76076847742355e-16,
)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
# 2**f on [0, 1): Taylor coefficients of exp(f ln 2), degree 7 (relative error < 1e-6).
_EXP2 = (
    1.0,
    0.6931471805599453,
    0.2402265069591007,
    0.05550410866482158,
    0.009618129107628477,
    0.0013333558146428443,
    0.00015403530393381606,
    1.525273380405984e-05,
)
_LOG2E = 1.4426950408889634


def _poly(x, coeffs):
    out = coeffs[-1]
    for c in coeffs[-2::-1]:
        out = out * x + c
    return out


@mx.compile
def _sigmoid(x):
    t = mx.clip(0.5 * x, -_TANH_CLAMP, _TANH_CLAMP)
    t2 = t * t
    return 0.5 + 0.5 * (t * _poly(t2, _TANH_P) / _poly(t2, _TANH_Q))


@mx.compile
def exp_nonpositive(x):
    """exp(x) for x <= 0; exactly 0 below 2**-126 (and for -inf)."""
    t = mx.maximum(x * _LOG2E, -127.0)
    n = mx.floor(t)
    scale = mx.view(mx.left_shift(n.astype(mx.int32) + 127, 23), mx.float32)
    return _poly(t - n, _EXP2) * scale


@mx.compile
def _swiglu(gate, x):
    return gate * _sigmoid(gate) * x


@mx.custom_function
def swiglu(gate, x):
    """silu(gate) * x, as mlx_lm.models.activations.swiglu."""
    return _swiglu(gate, x)


@mx.compile
def _swiglu_grads(gate, x, cotangent):
    s = _sigmoid(gate)
    silu = gate * s
    return cotangent * x * (s + silu * (1 - s)), cotangent * silu


@swiglu.vjp
def _swiglu_vjp(primals, cotangent, output):
    return _swiglu_grads(*primals, cotangent)


@mx.custom_function
def softmax(x):
    """Softmax over the last axis."""
    e = exp_nonpositive(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@mx.compile
def _softmax_grad(output, cotangent):
    return output * (cotangent - (cotangent * output).sum(-1, keepdims=True))


@softmax.vjp
def _softmax_vjp(primals, cotangent, output):
    return _softmax_grad(output, cotangent)


def attention(queries, keys, values, scale: float, mask):
    """Scaled dot-product attention, as mx.fast.scaled_dot_product_attention: queries
    (B, Hq, L, D), keys/values (B, Hkv, S, D) with Hq a multiple of Hkv (grouped queries); mask
    None, "causal" (queries are the last L of the S positions), boolean (True = attend) or
    additive."""
    b, hq, length, d = queries.shape
    hkv, s = keys.shape[1], keys.shape[2]
    q = (queries * scale).reshape(b, hkv, hq // hkv, length, d)
    scores = q @ keys[:, :, None].swapaxes(-1, -2)  # (B, Hkv, rep, L, S)
    # Masked scores become the lowest finite float, not -inf: a row with every key masked
    # (a left-padding position in batched generation) then averages the values, as MLX's own
    # kernel does, instead of turning into NaN (and 0 * NaN into every later row's output).
    lowest = mx.finfo(scores.dtype).min
    if isinstance(mask, str):
        rows = mx.arange(s - length, s)[:, None]
        scores = mx.where(rows >= mx.arange(s)[None], scores, lowest)
    elif mask is not None:
        if mask.ndim == 4:  # (B or 1, Hq or 1, L, S) -> split the head axis like the queries
            rep = hq // hkv if mask.shape[1] == hq else 1
            mask = mask.reshape(mask.shape[0], -1, rep, *mask.shape[2:])
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, lowest)
        else:
            scores = mx.maximum(scores + mask, lowest)
    out = softmax(scores) @ values[:, :, None]
    return out.reshape(b, hq, length, d)


def use_fast_kernels(model, kernels: str) -> bool:
    """Make ``model`` compute its float32 SwiGLU and attention on the CPU with the functions
    above (``kernels="fast"``); ``"exact"`` or another device leaves it as mlx-lm built it.
    Returns whether the model now uses them (also when an earlier call bound them).

    Per model, never per process: each layer whose ``__call__`` (mlx-lm's code, e.g. llama's
    ``MLP`` and ``Attention``) names ``swiglu`` or ``scaled_dot_product_attention`` gets its own
    subclass whose ``__call__`` is that same code bound to a copy of its module's globals with
    ours in their place. mlx-lm's modules, and every other model in the process, are untouched.
    """
    from mlx_lm.models import activations, base

    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels == "exact" or mx.default_device() != mx.cpu:
        return False
    theirs = {
        "swiglu": (activations.swiglu, _swiglu_cpu),
        "scaled_dot_product_attention": (base.scaled_dot_product_attention, _attention_cpu),
    }
    bound = False
    for _, layer in model.named_modules():
        cls = type(layer)
        if getattr(cls, "_fast_kernels", False):
            bound = True
            continue
        call = cls.__call__
        names = getattr(getattr(call, "__code__", None), "co_names", ())
        swap = {
            name: ours
            for name, (original, ours) in theirs.items()
            if name in names and call.__globals__.get(name) is original
        }
        if swap:
            layer.__class__ = _fast_subclass(cls, call, swap)
            bound = True
    return bound


_SUBCLASSES: dict = {}


def _fast_subclass(cls, call, swap: dict):
    """``cls`` with ``__call__`` rebound to ``swap``'s functions (one subclass per class)."""
    if cls not in _SUBCLASSES:
        rebound = types.FunctionType(
            call.__code__,
            {**call.__globals__, **swap},
            call.__name__,
            call.__defaults__,
            call.__closure__,
        )
        rebound.__kwdefaults__, rebound.__qualname__ = call.__kwdefaults__, call.__qualname__
        body = {"__call__": rebound, "_fast_kernels": True, "__module__": cls.__module__}
        _SUBCLASSES[cls] = type(cls.__name__, (cls,), body)
    return _SUBCLASSES[cls]


def _swiglu_cpu(gate, x):
    from mlx_lm.models import activations

    if gate.dtype == mx.float32 and x.dtype == mx.float32:
        return swiglu(gate, x)
    return activations.swiglu(gate, x)


def attention_bound(model) -> bool:
    """Whether every attention layer of ``model`` computes through ``_attention_cpu`` (bound by
    ``use_fast_kernels``), so a decoder may hand it ``HostKV`` caches."""
    found = False
    for _, layer in model.named_modules():
        call = type(layer).__call__
        names = getattr(getattr(call, "__code__", None), "co_names", ())
        if "scaled_dot_product_attention" in names:
            if call.__globals__.get("scaled_dot_product_attention") is not _attention_cpu:
                return False
            found = True
    return found


def _attention_cpu(queries, keys, values, cache, scale, mask, sinks=None):
    from mlx_lm.models import base

    if isinstance(cache, HostKV):  # decoding's C attention (src/modeling/cpu_decode.py)
        return cache.attend(queries, keys, values, scale)
    if sinks is None and not hasattr(cache, "bits") and queries.dtype == mx.float32:
        return attention(queries, keys, values, scale, mask)
    return base.scaled_dot_product_attention(
        queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks
    )
