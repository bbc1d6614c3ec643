"""The direct score (P(verdict) before any critique) two ways, on the validation rows.

    uv run python benchmarks/bench_direct.py [--model checkpoints/sft_merged_model]
        [--data data/processed/sft/sft_valid.jsonl] [--verdict yes_no] [--batch-size 32]

- ``second prefill``: the greedy judgements (``judge_texts``), then ``scores.direct_scores``:
  every prompt and the verdict's opening prefilled again (what evaluate did before);
- ``from the cache``: ``judge_texts(..., then=opening)``: the opening fed to a copy of each
  prompt's generation cache (what evaluate does).

Prints each way's seconds, whether the judgements are the same, and the largest difference
between the two ways' direct scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/...` runs
import src  # noqa: E402, F401  (the fast BLAS, before mlx is imported)
from src.judging import generate as gen
from src.judging.scores import chat_prompt_ids, direct_scores, value_paths, value_token_ids
from src.judging.verdicts import FORMATS
from src.modeling.head import checked_head
from src.modeling.load import load_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/sft_merged_model")
    parser.add_argument("--data", default="data/processed/sft/sft_valid.jsonl")
    parser.add_argument("--verdict", default="yes_no", choices=list(FORMATS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    model, tok, _, _ = load_base(args.model, 0, 64, kernels="fast")
    head = checked_head(model)
    with open(args.data, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    prompts = chat_prompt_ids(tok, [r["messages"][:-1] for r in rows])
    fmt = FORMATS[args.verdict]
    values, opening = value_token_ids(tok, fmt), value_paths(tok, fmt)[0]
    common = (model, tok, prompts, args.max_tokens, args.batch_size, head, None, fmt, values)

    t0 = time.perf_counter()
    texts, _, _ = gen.judge_texts(*common)
    t1 = time.perf_counter()
    second = direct_scores(model, tok, prompts, fmt, head=head)
    t2 = time.perf_counter()
    texts_cached, _, cached = gen.judge_texts(*common, opening)
    t3 = time.perf_counter()

    print(f"{len(rows)} rows, batch {args.batch_size}, {args.model}")
    print(f"second prefill: judgements {t1 - t0:.1f} s + direct scores {t2 - t1:.1f} s")
    print(f"from the cache: judgements and direct scores {t3 - t2:.1f} s")
    print(f"same judgements: {texts == texts_cached}")
    worst = max(abs(a - b) for a, b in zip(second, cached, strict=True))
    print(f"max |direct difference|: {worst:.2e}")


if __name__ == "__main__":
    main()
