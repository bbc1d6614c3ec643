"""Judging speed on the CPU: the judge's greedy critiques three ways, on the same prompts.

    uv run python benchmarks/bench_generate.py --torch-python /tmp/torchenv/bin/python
        [--model checkpoints/sft_merged_model] [--batches 1,8,32,100] [--max-tokens 64]
    uv run python benchmarks/bench_generate.py --profile [--torch-python PY]  # where a decode
                                                          # step's time goes, ours and PyTorch's

The prompts are the validation rows' judge prompts (chat template applied, ~106 tokens), the
same token ids for every setup; greedy, up to ``--max-tokens`` new tokens, stopping at the
tokenizer's end of turn:

- ``ours``: ``src/judging/generate.py`` (what evaluate, ``src.score`` and ``GenRM`` call), on the
  model as the stages load it (``load_base``, ``cpu_kernels: fast``): on a Llama-family model
  each decode step whole in C (``src/modeling/cpu_decode.py``'s ``HostLlama``);
- ``ours-c-attention`` (asked for in ``--setups``): ours with only each layer's attention in C,
  the rest in MLX (what other models, e.g. Gemma, get on the CPU);
- ``ours-mlx-attention`` (asked for in ``--setups``): ours with each decode step one compiled MLX
  graph, attention included (where no C compiler is found);
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


def _with_decoder(decoder):
    """Ours with ``decoder`` (a class of ``src/judging/generate.py``) for every decode step."""

    def run(model, tok, prompts, max_tokens):
        from src.judging import generate as gen

        chosen = gen._decoder
        gen._decoder = getattr(gen, decoder)  # this benchmark's process only
        try:
            return _ours(model, tok, prompts, max_tokens)
        finally:
            gen._decoder = chosen

    return run


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
    todo = [("ours", _ours)]
    if "ours-c-attention" in setups:
        todo.append(("ours, attention in C", _with_decoder("_HostDecoder")))
    if "ours-mlx-attention" in setups:
        todo.append(("ours, MLX attention", _with_decoder("_CompiledDecoder")))
    if "mlx-lm" in setups:
        todo.append(("mlx-lm batch_generate", _mlx_lm))
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
    """Where a decode step's time goes, ours beside PyTorch's: each part of a step at batch
    ``--profile-batch`` with a cache of 140 positions, chained through the model's 30 layers
    and evaluated once (so no per-call overhead is counted), median of 10, in ms. PyTorch's
    parts come from ``benchmarks/torch_decode_parts.py`` (``--torch-python``). Attention is
    timed both ways: MLX's (the compiled step's) and the C kernel's (``HostKV.attend``, the
    step's new keys written at the last position). Then our whole step, as ``generate_batch``
    runs it with each decoder (the whole step in C, attention in C, the compiled MLX step), on
    the validation prompts."""
    import mlx.core as mx
    import numpy as np

    from src.judging import generate as gen
    from src.modeling import cpu_decode, kernels
    from src.modeling.head import checked_head

    b, s = args.profile_batch, 140
    model, tok, prompts = _prompts(args.model, args.data, b)
    head, layers = checked_head(model), model.model.layers
    attn = layers[0].self_attn
    hq, hkv = attn.n_heads, attn.n_kv_heads
    dim = model.model.embed_tokens.weight.shape[1]
    d = dim // hq
    mx.random.seed(0)
    h0 = 0.1 * mx.random.normal((b, 1, dim))
    keys = [mx.random.normal((b, hkv, s, d)) for _ in layers]
    values = [mx.random.normal((b, hkv, s, d)) for _ in layers]
    mask = mx.ones((b, 1, 1, s), dtype=mx.bool_)
    offset = mx.arange(b) + 100
    h1 = 0.1 * mx.random.normal((b, 1, layers[0].mlp.gate_proj.weight.shape[0]))  # MLP width
    mx.eval(h0, h1, keys, values)

    host_k, host_v = [np.array(k) for k in keys], [np.array(v) for v in values]
    left = np.zeros(b, np.int32)
    if cpu_decode.library() is None:
        sys.exit("the C kernel could not be built (see the note above)")

    def chain(part):
        def run():
            h = h0
            for i, layer in enumerate(layers):
                h = h + part(i, layer, h)
            return h

        return run

    def heads(h):
        return h.reshape(b, 1, hq, d).transpose(0, 2, 1, 3)

    def back(o):
        return o.transpose(0, 2, 1, 3).reshape(b, 1, dim)

    def proj(i, layer, h):
        a = layer.self_attn
        kv = a.k_proj(h) + a.v_proj(h)
        return a.o_proj(a.q_proj(h) + mx.tile(kv, (1, 1, hq // hkv)))

    parts = {
        "MLP (3 matmuls + SwiGLU)": chain(lambda i, layer, h: layer.mlp(h)),
        "  of which SwiGLU": chain(lambda i, layer, h: kernels.swiglu(h1, h1)[..., :dim]),
        "q/k/v/o projections": chain(proj),
        "attention over the cache": chain(
            lambda i, layer, h: back(kernels.attention(heads(h), keys[i], values[i], 0.125, mask))
        ),
        "attention over the cache, in C": chain(
            lambda i, layer, h: back(
                cpu_decode.HostKV(host_k[i], host_v[i], left, s - 1, None).attend(
                    heads(h), heads(h)[:, :hkv], heads(h)[:, :hkv], 0.125
                )
            )
        ),
        "RoPE (queries and keys)": chain(
            lambda i, layer, h: back(layer.self_attn.rope(heads(h), offset=offset))
        ),
        "RMSNorm x 2": chain(
            lambda i, layer, h: layer.post_attention_layernorm(layer.input_layernorm(h))
        ),
        "LM head + argmax": lambda: mx.argmax(head(h0[:, -1]), -1),
    }

    def timed(fn, n=10):
        fn()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            mx.eval(fn())
            times.append(time.perf_counter() - t0)
        return sorted(times)[n // 2] * 1e3

    ours = {name: timed(fn) for name, fn in parts.items()}
    theirs = {}
    if args.torch_python:
        job = json.dumps({"model": args.model, "batch": b, "cache": s})
        done = subprocess.run(
            [args.torch_python, str(ROOT / "benchmarks/torch_decode_parts.py"), job],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())},
        )
        if done.returncode:
            sys.exit(f"torch_decode_parts.py failed:\n{done.stderr[-3000:]}")
        theirs = json.loads(done.stdout.splitlines()[-1])
    print(f"decode step parts at batch {b}, cache {s}, x {len(layers)} layers (ms):")
    print(f"  {'part':32s} {'ours':>8s} {'PyTorch':>8s}")
    for name, ms in ours.items():
        print(f"  {name:32s} {ms:8.2f} {theirs.get(name, float('nan')):8.2f}")
    chosen = gen._decoder
    decoders = (
        ("whole step in C", chosen),
        ("attention in C", gen._HostDecoder),
        ("compiled MLX step", gen._CompiledDecoder),
    )
    for name, decoder in decoders:
        gen._decoder = decoder  # this benchmark's process only
        out = gen.generate_batch(model, prompts, args.max_tokens, set(tok.eos_token_ids), head)
        print(
            f"our whole step (generate_batch, {name}): {out.steps} steps, "
            f"{out.seconds['decode'] / out.steps * 1e3:.1f} ms per step"
        )
    gen._decoder = chosen


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
