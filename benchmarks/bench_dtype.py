"""Training-step speed by compute dtype on MLX's CPU: why ``load_base`` computes in float32 on
the CPU whatever the base's dtype (``src/base_model.py``, ``cpu_float32``).

    uv run python benchmarks/bench_dtype.py [--model checkpoints/base_model] [--tokens 128]

SmolLM2-135M-Instruct (``prepare_model --model smollm2-135m-instruct``) dequantized, LoRA rank 16
on 16 layers, one row of ``--tokens`` tokens; tokens/s over ``--steps`` forward+backward steps
after one warm-up, with the weights cast to each dtype.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import src  # noqa: E402, F401  (MKL preload before mlx.core)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="checkpoints/base_model")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()

    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from src.modeling.load import load_base

    ids = mx.random.randint(0, 1000, (1, args.tokens + 1))
    for dtype in (mx.bfloat16, mx.float16, mx.float32):
        model, *_ = load_base(args.model, 0, 64, "dequantized")
        model.set_dtype(dtype, lambda d: mx.issubdtype(d, mx.floating))
        model.freeze()
        linear_to_lora_layers(model, 16, {"rank": 16, "scale": 20.0, "dropout": 0.0})

        def loss(m):
            logits = m(ids[:, :-1]).astype(mx.float32)
            return nn.losses.cross_entropy(logits, ids[:, 1:]).mean()

        step = nn.value_and_grad(model, loss)
        mx.eval(step(model))
        t = time.perf_counter()
        for _ in range(args.steps):
            mx.eval(step(model))
        rate = args.tokens * args.steps / (time.perf_counter() - t)
        print(f"{str(dtype).removeprefix('mlx.core.'):>9}: {rate:7.1f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
