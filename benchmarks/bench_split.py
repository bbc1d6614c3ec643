"""Split stage throughput vs the raw tokenizer on 100k sample rows (issue: split speed).

    uv run python benchmarks/bench_split.py [--rows 100000]

Prints rows/s of (a) raw ``encode_batch`` on the already rendered texts (the issue's bound),
(b) raw ``encode_batch_fast`` (same ids, no character offsets: the call the stage makes, so its
true bound), (c) render + tokenize alone, serially, and (d) the whole split stage (read, parse,
validate, dedup, render, tokenize, group, write), with ratios to (a) and (b).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import src  # noqa: E402,F401  (fast BLAS preload, quiet transformers)
from src.data.sample import generate_rows
from src.data.sft import (  # noqa: E402
    CHAT,
    dumps,  # noqa: E402
    fast_renderer,
    token_lengths,
)
from src.modeling.source import load_tokenizer  # noqa: E402
from src.prepare_model import PrepareModelConfig  # noqa: E402
from src.prepare_model import run as prepare_model  # noqa: E402
from src.split_data import SplitConfig  # noqa: E402
from src.split_data import run as split  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--model", default=None, help="model dir (default: build the embedded one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or str(
            prepare_model(PrepareModelConfig(out=tmp / "model")) and tmp / "model"
        )
        rows = list(generate_rows(args.rows, seed=123, long_fraction=0.0))
        src_file = tmp / "in.jsonl"
        src_file.write_text("".join(dumps(r) + "\n" for r in rows))
        tok = load_tokenizer(model)

        t = time.perf_counter()
        render_row = fast_renderer(CHAT, tok, rows[:64])
        texts = [render_row(r) for r in rows]
        lengths = token_lengths(texts, CHAT, tok, 1024)
        t_render_tok = time.perf_counter() - t

        backend = tok._tokenizer._tokenizer
        t_raw = {}
        for name in ("encode_batch", "encode_batch_fast"):
            encode = getattr(backend, name)
            t = time.perf_counter()
            for i in range(0, len(texts), 1024):
                encode(texts[i : i + 1024], add_special_tokens=False)
            t_raw[name] = time.perf_counter() - t

        cfg = SplitConfig(
            input=src_file,
            train_out=tmp / "t.jsonl",
            valid_out=tmp / "v.jsonl",
            rejects_out=tmp / "r.jsonl",
            model=model,
            valid_size=500,
        )
        t = time.perf_counter()
        split(cfg)
        t_stage = time.perf_counter() - t

    n = len(rows)
    raw, fast = t_raw["encode_batch"], t_raw["encode_batch_fast"]
    print(f"rows: {n}, mean tokens/row: {sum(lengths) / n:.0f}")
    print(f"(a) raw encode_batch:           {n / raw:8,.0f} rows/s")
    print(f"(b) raw encode_batch_fast:      {n / fast:8,.0f} rows/s")
    for name, t in (
        ("(c) render + tokenize, serial", t_render_tok),
        ("(d) whole split stage", t_stage),
    ):
        print(
            f"{name + ':':31s} {n / t:8,.0f} rows/s  {raw / t:4.0%} of (a), {fast / t:4.0%} of (b)"
        )


if __name__ == "__main__":
    main()
