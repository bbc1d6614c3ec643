"""Split stage throughput vs the raw tokenizer on 100k sample rows (issue: split speed).

    uv run python benchmarks/bench_split.py [--rows 100000]

Prints rows/s of (a) the whole split stage (read, validate, dedup, render, tokenize, group,
write), (b) its render + tokenize part alone, (c) raw ``encode_batch`` on the already rendered
texts, which bounds (b), and the ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import src  # noqa: E402,F401  (fast BLAS preload, quiet transformers)
from src.genrm_sample import dumps, generate_rows  # noqa: E402
from src.model_source import load_tokenizer  # noqa: E402
from src.prepare_model import PrepareModelConfig  # noqa: E402
from src.prepare_model import run as prepare_model  # noqa: E402
from src.sft_data import CHAT, render  # noqa: E402
from src.split_data import SplitConfig, _measure  # noqa: E402
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
        lengths = _measure(list(enumerate(rows, 1)), CHAT, tok, src_file)
        t_render_tok = time.perf_counter() - t
        texts = [render(r, CHAT, tok) for r in rows]

        backend = tok._tokenizer._tokenizer
        t = time.perf_counter()
        for i in range(0, len(texts), 1024):
            backend.encode_batch(texts[i : i + 1024], add_special_tokens=False)
        t_raw = time.perf_counter() - t

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
    print(f"rows: {n}, mean tokens/row: {sum(lengths) / n:.0f}")
    print(f"raw encode_batch (bound):     {n / t_raw:10,.0f} rows/s")
    print(
        f"render + batched tokenize:    {n / t_render_tok:10,.0f} rows/s "
        f"({t_raw / t_render_tok:.0%} of raw)"
    )
    print(
        f"whole split stage:            {n / t_stage:10,.0f} rows/s ({t_raw / t_stage:.0%} of raw)"
    )


if __name__ == "__main__":
    main()
