"""MLX's own CPU kernels against src/cpu_kernels.py (arithmetic-only SwiGLU and attention):
forward, LoRA training step (with and without gradient checkpointing) and batched generation.

    uv run python benchmarks/bench_kernels.py [--model checkpoints/base_model] [--tokens 160]

The model as the stages load it (``load_base``: dequantized, float32 on the CPU). The training
step is the train stage's: LoRA rank 16 on 16 layers, loss at the trained positions (the last
quarter of each row, as in a GenRM row), Adam, compiled; batch 4 x ``--tokens``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import src  # noqa: E402, F401  (MKL preload before mlx.core)


def _seconds(fn, n: int) -> float:
    import mlx.core as mx

    mx.eval(fn())
    t = time.perf_counter()
    for _ in range(n):
        mx.eval(fn())
    return (time.perf_counter() - t) / n


def measure(model_path: str, tokens: int, steps: int, fast: bool) -> dict:
    import importlib

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.generate import batch_generate
    from mlx_lm.models import activations, base
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from src.base_model import load_base
    from src.sft_loop import checked_head, checkpoint_layers, masked_loss, trained_positions

    os.environ["GENRM_EXACT_KERNELS"] = "0" if fast else "1"
    model, tokenizer, _, info = load_base(model_path, 0, 64)
    module = importlib.import_module(type(model).__module__)
    if not fast:  # a previous measure() may have installed them in this process
        module.swiglu = activations.swiglu
        module.scaled_dot_product_attention = base.scaled_dot_product_attention
    rows = 4
    batch = mx.random.randint(0, 1000, (rows, tokens + 1))
    lengths = np.array([[tokens * 3 // 4, tokens + 1]] * rows)
    out = {"kernels": "src/cpu_kernels.py" if info["cpu_kernels"] else "MLX"}
    out["forward tok/s"] = rows * tokens / _seconds(lambda: model(batch[:, :-1]), steps)

    prompts = [list(range(10 + i, 10 + i + tokens)) for i in range(8)]
    t = time.perf_counter()
    batch_generate(model, tokenizer, prompts, max_tokens=32)
    out["generate 8 x 32 s"] = time.perf_counter() - t

    model.freeze()
    linear_to_lora_layers(model, 16, {"rank": 16, "scale": 20.0, "dropout": 0.0})
    head = checked_head(model)
    args = (batch, mx.array(lengths), mx.array(trained_positions(lengths, tokens)))
    for checkpointing in (False, True):
        if checkpointing:
            checkpoint_layers(model)
        opt = optim.Adam(learning_rate=1e-5)
        grad = nn.value_and_grad(model, partial(masked_loss, head=head))
        state = [model.state, opt.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def step(*a, grad=grad, opt=opt):
            (loss, _), g = grad(model, *a)
            opt.update(model, g)
            return loss

        name = "train step tok/s" + (" (grad checkpoint)" if checkpointing else "")
        out[name] = rows * tokens / _seconds(lambda: step(*args), steps)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="checkpoints/base_model")
    p.add_argument("--tokens", type=int, default=160)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    results = [measure(args.model, args.tokens, args.steps, fast) for fast in (False, True)]
    print("| | " + " | ".join(r["kernels"] for r in results) + " | speed-up |")
    print("|---|---|---|---|")
    for key in list(results[0])[1:]:
        a, b = results[0][key], results[1][key]
        gain = a / b if key.endswith(" s") else b / a
        print(f"| {key} | {a:.1f} | {b:.1f} | {gain:.2f}x |")


if __name__ == "__main__":
    main()
