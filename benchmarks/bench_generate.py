"""Judging speed on the CPU: the judge's greedy critiques three ways, on the same prompts.

    uv run python benchmarks/bench_generate.py --torch-python /tmp/torchenv/bin/python
        [--model checkpoints/sft_merged_model] [--batches 1,8,32,100] [--max-tokens 64]
    uv run python benchmarks/bench_generate.py --profile     # where a decode step's time goes

The prompts are the validation rows' judge prompts (chat template applied, ~106 tokens), the
same token ids for every setup; greedy, up to ``--max-tokens`` new tokens, stopping at the
tokenizer's end of turn:

- ``ours``: ``src/judging/generate.py`` (what evaluate, ``src.score`` and ``GenRM`` call), on the
  model as the stages load it (``load_base``, ``cpu_kernels: fast``);
- ``mlx-lm``: ``mlx_lm.generate.batch_generate`` as installed, on the same loaded model;
- ``transformers``: ``generate`` in PyTorch (``benchmarks/torch_generate.py``, run by
  ``--torch-python``: a Python with torch and transformers; never a project dependency), fp32,
  left-padded, on the same model folder.

Batch ``b`` judges ``max(b, 8)`` rows (one batch, or 8 batches of 1). Reported per setup and
batch: prefill tokens/s (prompt tokens over the time to the first new token), decode tokens/s
(new tokens over the rest), seconds per judged row, and whether each row's tokens equal ours.
One warm-up batch per setup first (MLX compiles, PyTorch allocates).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _prompts(model_dir: str, data: str, n: int):
    from src.judging.scores import chat_prompt_ids
    from src.modeling.load import load_base

    model, tok, _, _ = load_base(model_dir, 0, 64, kernels="fast")
    rows = [json.loads(line) for line in Path(data).read_text().splitlines()[:n]]
    return model, tok, chat_prompt_ids(tok, [r["messages"][:-1] for r in rows])


def _ours(model, tok, prompts, max_tokens):
    from src.judging.generate import generate
    from src.modeling.head import checked_head

    t0 = time.perf_counter()
    out = generate(model, tok, prompts, max_tokens, len(prompts), head=checked_head(model))
    total = time.perf_counter() - t0
    return out.tokens, out.seconds["prefill"], total


def _mlx_lm(model, tok, prompts, max_tokens):
    from mlx_lm.generate import batch_generate

    t0 = time.perf_counter()
    res = batch_generate(model, tok, prompts, max_tokens=max_tokens, return_token_ids=True)
    total = time.perf_counter() - t0
    # prefill is interleaved with decoding (8 prompts at a time): its own counter
    return res.token_ids, res.stats.prompt_time, total


def _row(name, batch, prompts, tokens, prefill, total, ours):
    new = sum(map(len, tokens))
    return {
        "setup": name,
        "batch": batch,
        "rows": len(prompts),
        "prompt_tokens": sum(map(len, prompts)),
        "new_tokens": new,
        "prefill_tok_s": round(sum(map(len, prompts)) / prefill, 1),
        "decode_tok_s": round(new / max(total - prefill, 1e-9), 1),
        "s_per_row": round(total / len(prompts), 4),
        "seconds": round(total, 2),
        "same_as_ours": None if ours is None else sum(map(list.__eq__, tokens, ours)),
    }


def run(args) -> list[dict]:
    batches = [int(b) for b in args.batches.split(",")]
    model, tok, prompts = _prompts(args.model, args.data, max(max(batches), 8))
    results, ours_tokens = [], {}
    setups = args.setups.split(",")
    todo = [("ours", _ours), ("mlx-lm batch_generate", _mlx_lm)][: 1 + ("mlx-lm" in setups)]
    for name, fn in todo:
        fn(model, tok, prompts[:8], 8)  # warm-up
        for b in batches:
            rows = prompts[: max(b, 8)]
            toks, pre, tot = [], 0.0, 0.0
            for s in range(0, len(rows), b):
                t, p, total = fn(model, tok, rows[s : s + b], args.max_tokens)
                toks, pre, tot = toks + list(t), pre + p, tot + total
            ours = ours_tokens.setdefault(b, toks) if name != "ours" else None
            if name == "ours":
                ours_tokens[b] = toks
            results.append(_row(name, b, rows, toks, pre, tot, ours))
            print(json.dumps(results[-1]), flush=True)
    if args.torch_python and "transformers" in setups:
        with tempfile.TemporaryDirectory() as tmp:
            job = Path(tmp) / "job.json"
            job.write_text(
                json.dumps(
                    {
                        "model": args.model,
                        "prompts": prompts,
                        "batches": batches,
                        "max_tokens": args.max_tokens,
                        "eos": sorted(tok.eos_token_ids),
                    }
                )
            )
            env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}
            done = subprocess.run(
                [args.torch_python, str(ROOT / "benchmarks/torch_generate.py"), str(job)],
                capture_output=True,
                text=True,
                env=env,
            )
            if done.returncode:
                sys.exit(f"torch_generate.py failed:\n{done.stderr[-3000:]}")
            for line in done.stdout.splitlines():
                r = json.loads(line)
                rows = prompts[: max(r["batch"], 8)]
                results.append(
                    _row(
                        "transformers generate",
                        r["batch"],
                        rows,
                        r["tokens"],
                        r["prefill"],
                        r["total"],
                        ours_tokens[r["batch"]],
                    )
                )
                print(json.dumps(results[-1]), flush=True)
    return results


def profile(args) -> None:
    """One decode step at batch ``--profile-batch`` after a ~106-token prompt and 32 new tokens,
    split into its parts (each timed alone, median of 20): the body's layers (attention and MLP
    apart), the LM head, what mlx-lm adds per step (the vocabulary's log-softmax), the argmax,
    and the Python read-back of the tokens."""
    import mlx.core as mx

    from src.judging.generate import generate_batch
    from src.modeling.head import checked_head

    model, tok, prompts = _prompts(args.model, args.data, args.profile_batch)
    head = checked_head(model)
    from mlx_lm.models.cache import BatchKVCache

    width = max(map(len, prompts)) + 32
    pad = [width - len(p) - 32 for p in prompts]
    x = mx.array([[0] * n + p + [tok.eos_token_id] * 32 for n, p in zip(pad, prompts, strict=True)])
    cache = [BatchKVCache(pad) for _ in model.layers]
    mx.eval(model.model(x, cache=cache))
    y = mx.zeros((len(prompts), 1), mx.int32)
    body = model.model
    h = body.embed_tokens(y)
    mask = cache[0].make_mask(1)
    layer = body.layers[0]

    def timed(fn, n=20):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            mx.eval(fn())
            times.append(time.perf_counter() - t0)
        return sorted(times)[n // 2] * 1e3

    def attn_only():
        out = layer.self_attn(layer.input_layernorm(h), mask, cache[0])
        cache[0].trim(1)  # each call measures the same cache length
        return out

    def step():
        out = mx.argmax(head(body(y, cache=cache)[:, -1]), -1)
        for c in cache:
            c.trim(1)
        return out

    hidden = body(y, cache=cache)
    for c in cache:
        c.trim(1)
    logits = head(hidden[:, -1])
    parts = {
        "whole step (body + head + argmax)": timed(step),
        f"attention x {len(body.layers)} layers": timed(attn_only) * len(body.layers),
        f"MLP x {len(body.layers)} layers": timed(
            lambda: layer.mlp(layer.post_attention_layernorm(h))
        )
        * len(body.layers),
        "LM head (vocab x hidden)": timed(lambda: head(hidden[:, -1])),
        "log-softmax over the vocabulary (mlx-lm, every step)": timed(
            lambda: logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        ),
        "argmax": timed(lambda: mx.argmax(logits, -1)),
    }
    t = mx.argmax(logits, -1)
    mx.eval(t)
    t0 = time.perf_counter()
    for _ in range(100):
        t.tolist()
    parts["tokens to Python (tolist)"] = (time.perf_counter() - t0) * 10
    print(f"decode step at batch {len(prompts)}, cache ~{width} positions (ms):")
    for k, v in parts.items():
        print(f"  {k:55s} {v:8.2f}")
    gen = generate_batch(model, prompts, args.max_tokens, set(tok.eos_token_ids), head)
    print(
        f"generate_batch: {gen.steps} steps, {gen.seconds['decode'] / gen.steps * 1e3:.1f} ms "
        f"per step, prefill {gen.seconds['prefill']:.2f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="checkpoints/sft_merged_model")
    p.add_argument("--data", default="data/processed/sft/sft_valid.jsonl")
    p.add_argument("--batches", default="1,8,32,100")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--torch-python", default=None)
    p.add_argument("--setups", default="ours,mlx-lm,transformers", help="ours is always run")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-batch", type=int, default=32)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()
    from src.modeling.blas import warn_if_slow_blas

    warn_if_slow_blas()
    if args.profile:
        profile(args)
        return
    results = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
