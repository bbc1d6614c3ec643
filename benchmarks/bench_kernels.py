"""MLX's own CPU kernels against src/modeling/kernels.py (arithmetic-only SwiGLU, attention and
loss exp), bound per model (``model.cpu_kernels: fast``) and, for comparison, swapped into mlx-lm's
module for the whole process as this project did before: forward, LoRA training step (with and
without gradient checkpointing) and batched generation.

    uv run python benchmarks/bench_kernels.py [--model checkpoints/base_model] [--tokens 160]

The model as the stages load it (``load_base``: dequantized, float32 on the CPU). The training
step is the train stage's: LoRA rank 16 on 16 layers, loss at the trained positions (the last
quarter of each row, as in a GenRM row), Adam, compiled; batch 4 x ``--tokens``.
"""

from __future__ import annotations

import argparse
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


def measure(model_path: str, tokens: int, steps: int, mode: str) -> dict:
    """``mode``: ``exact`` (MLX's kernels), ``fast`` (``cpu_kernels: fast``, bound into this
    model only) or ``patch`` (the same functions swapped into mlx-lm's module for the whole
    process, as this project did before the option existed; undone at the end)."""
    import importlib

    from mlx_lm.models import activations, base

    from src.modeling import kernels
    from src.modeling.load import load_base

    bound = "fast" if mode == "fast" else "exact"
    model, tokenizer, _, _ = load_base(model_path, 0, 64, kernels=bound)
    module = importlib.import_module(type(model).__module__)
    if mode == "patch":
        module.swiglu = kernels._swiglu_cpu
        module.scaled_dot_product_attention = kernels._attention_cpu
    try:
        return _measure(model, tokenizer, tokens, steps, "exact" if mode == "exact" else "fast")
    finally:
        module.swiglu = activations.swiglu
        module.scaled_dot_product_attention = base.scaled_dot_product_attention


def _measure(model, tokenizer, tokens: int, steps: int, loss_kernels: str) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.generate import batch_generate
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from src.modeling.head import checked_head, trained_positions
    from src.modeling.losses import masked_loss
    from src.training.loop import checkpoint_layers

    rows = 4
    batch = mx.random.randint(0, 1000, (rows, tokens + 1))
    lengths = np.array([[tokens * 3 // 4, tokens + 1]] * rows)
    out = {"forward tok/s": rows * tokens / _seconds(lambda: model(batch[:, :-1]), steps)}

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
        loss = partial(masked_loss, head=head, kernels=loss_kernels)
        grad = nn.value_and_grad(model, loss)
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
    modes = ("exact", "patch", "fast")
    results = [measure(args.model, args.tokens, args.steps, mode) for mode in modes]
    print("| | MLX (exact) | process-wide patch (before) | cpu_kernels: fast | fast / patch |")
    print("|---|---|---|---|---|")
    for key in results[0]:
        exact, patch, fast = (r[key] for r in results)
        ratio = patch / fast if key.endswith(" s") else fast / patch
        print(f"| {key} | {exact:.1f} | {patch:.1f} | {fast:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
