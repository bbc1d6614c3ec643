"""Where an MLX CPU training step goes: per-op timings and ablations inside the compiled step.

    uv run python benchmarks/profile_ops.py [--size 20m]

1. Per-op: each op of one Gemma block at the benchmark shapes (batch 4 x 256), timed alone.
   Beside MLX's ``exp`` it times numpy's on the same data (both single-threaded), and beside
   ``gelu`` an erf built from arithmetic ops only (a rational approximation, error < 1e-6),
   fused by ``mx.compile``: the cost of MLX's scalar transcendental kernels, shown two ways.
2. In the step: the compiled LoRA training step (value_and_grad + Adam), then the same step
   with GELU computed through that arithmetic erf, and with GELU replaced by ReLU (same shapes,
   no transcendental), to see what the element-wise transcendental ops cost inside a real step
   rather than in isolation.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import src  # noqa: E402,F401  (MKL preload before mlx.core)


def _time(fn, n: int = 10) -> float:
    import mlx.core as mx

    mx.eval(fn())
    t = time.perf_counter()
    for _ in range(n):
        mx.eval(fn())
    return (time.perf_counter() - t) / n * 1e3


# erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (+-1 outside in float32): the rational approximation
# Eigen and XLA use for float32. Arithmetic ops only, so MLX's CPU backend runs it fast.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)  # fmt: skip
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)  # fmt: skip


def arithmetic_gelu(x):
    import mlx.core as mx

    z = mx.clip(x * 0.7071067811865476, -4.0, 4.0)
    z2 = z * z
    p, q = _ERF_P[0], _ERF_Q[0]
    for c in _ERF_P[1:]:
        p = p * z2 + c
    for c in _ERF_Q[1:]:
        q = q * z2 + c
    return 0.5 * x * (1.0 + z * p / q)


def per_op(shape: dict, batch: int, seq: int) -> None:
    import mlx.core as mx
    import mlx.nn as nn

    d, f = shape["hidden_size"], shape["intermediate_size"]
    h, hd, v = shape["num_attention_heads"], shape["head_dim"], shape["vocab_size"]
    t = batch * seq
    x = mx.random.normal((t, d))
    w_up = mx.random.normal((d, f))
    hmid = mx.random.normal((t, f))
    q = mx.random.normal((batch, h, seq, hd))
    k = mx.random.normal((batch, 1, seq, hd))
    scores = mx.random.normal((batch, h, seq, seq))
    logits = mx.random.normal((t, v))
    targets = mx.random.randint(0, v, (t,))
    w_norm = mx.ones((d,))
    w_head = mx.random.normal((d, v))
    import numpy as np

    fused_gelu = mx.compile(arithmetic_gelu)
    gap = float(mx.abs(fused_gelu(hmid * 3) - nn.gelu(hmid * 3)).max())
    hmid_np = np.array(hmid)
    t0 = time.perf_counter()
    for _ in range(10):
        np.exp(hmid_np)
    numpy_exp_ms = (time.perf_counter() - t0) / 10 * 1e3
    ops = {
        f"matmul {t}x{d} @ {d}x{f}": lambda: x @ w_up,
        f"exp on {t}x{f}": lambda: mx.exp(hmid),
        f"gelu (erf) on {t}x{f}": lambda: nn.gelu(hmid),
        f"gelu, arithmetic erf, compiled, on {t}x{f} (max diff {gap:.1e})": lambda: fused_gelu(
            hmid
        ),
        f"gelu_approx on {t}x{f}": lambda: nn.gelu_approx(hmid),
        f"relu on {t}x{f}": lambda: nn.relu(hmid),
        f"multiply on {t}x{f}": lambda: hmid * hmid,
        f"softmax on {batch}x{h}x{seq}x{seq}": lambda: mx.softmax(scores, axis=-1),
        f"causal sdpa {batch}x{h}x{seq}x{hd}": lambda: mx.fast.scaled_dot_product_attention(
            q, k, k, scale=hd**-0.5, mask="causal"
        ),
        f"rms_norm on {t}x{d}": lambda: mx.fast.rms_norm(x, w_norm, 1e-6),
        f"cross_entropy on {t}x{v}": lambda: nn.losses.cross_entropy(logits, targets),
        f"lm head matmul {t}x{d} @ {d}x{v}": lambda: x @ w_head,
    }
    n_layers = shape["num_hidden_layers"]
    print(f"| op (one call; a step runs the per-layer ops {n_layers}x forward + backward) | ms |")
    print("|---|---|")
    for name, fn in ops.items():
        print(f"| {name} | {_time(fn):.2f} |")
    print(f"| numpy exp on {t}x{f} (for comparison) | {numpy_exp_ms:.2f} |")


def _step_ms(model_dir: Path, act, batch: int, seq: int, layers: int) -> float:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.models import gemma
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from src.modeling.losses import masked_loss

    original = gemma.MLP.__call__
    gemma.MLP.__call__ = lambda self, x: self.down_proj(act(self.gate_proj(x)) * self.up_proj(x))
    try:
        model, _ = load(str(model_dir))
        model.freeze()
        linear_to_lora_layers(model, layers, {"rank": 16, "scale": 20.0, "dropout": 0.0})
        opt = optim.Adam(learning_rate=1e-4)
        vg = nn.value_and_grad(model, masked_loss)
        state = [model.state, opt.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def step(b, lens):
            (loss, _), g = vg(model, b, lens)
            opt.update(model, g)
            return loss

        b = mx.random.randint(0, 2000, (batch, seq + 1))
        lens = mx.array([[0, seq + 1]] * batch)
        return _time(lambda: step(b, lens), n=5)
    finally:
        gemma.MLP.__call__ = original


def step_ablation(model_dir: Path, batch: int, seq: int, layers: int) -> None:
    import mlx.nn as nn

    print("\n| compiled LoRA step (fwd + bwd + Adam), batch 4 x 256 | ms |\n|---|---|")
    for label, act in (
        ("GELU, as mlx-lm's Gemma computes it (erf)", nn.gelu),
        ("GELU tanh approximation", nn.gelu_approx),
        ("GELU through the arithmetic erf (same function to < 1e-6)", arithmetic_gelu),
        ("GELU -> ReLU", nn.relu),
    ):
        print(f"| {label} | {_step_ms(model_dir, act, batch, seq, layers):.0f} |")


def main() -> None:
    import tempfile

    from benchmarks.bench_train import BATCH, SEQ, SIZES, build_model

    p = argparse.ArgumentParser()
    p.add_argument("--size", default="20m")
    args = p.parse_args()
    shape = SIZES[args.size]
    per_op(shape, BATCH, SEQ)
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp) / "m", shape)
        step_ablation(Path(tmp) / "m", BATCH, SEQ, shape["num_hidden_layers"])


if __name__ == "__main__":
    main()
