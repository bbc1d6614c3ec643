"""The judge inside a program that imported MLX first (an RL trainer's CLI does): how much the
fast BLAS is worth there, and that both fixes the judge's warning names restore it.

    uv run python benchmarks/bench_host_blas.py [--model checkpoints/sft_merged_model] [--pairs 8]

Three fresh processes judge the same pairs (greedy, as ``GenRM`` does; model loading excluded):
``mlx first`` (the reference BLAS: the preload comes too late), ``mlx first + LD_PRELOAD`` (MKL
preloaded by the loader) and ``src first`` (``import src`` before ``mlx``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HOST = """
import json, sys, time
first = sys.argv[1]
sys.path.insert(0, sys.argv[2])
if first == "src":
    import src  # noqa: F401
import mlx.core as mx  # noqa: F401
from src.judging.genrm import GenRM
from src.modeling.blas import blas_report

judge = GenRM(sys.argv[3], batch_size=int(sys.argv[4]))
n = int(sys.argv[4])
prompts = ["Compute 12 + 30.", "Convert 2 km to m."] * (n // 2)
responses = ["42", "3000 m"] * (n // 2)
refs = ["42", "2000 m"] * (n // 2)
judge(prompts=prompts[:2], completions=responses[:2], answer=refs[:2])  # warm-up
t = time.perf_counter()
judge(prompts=prompts, completions=responses, answer=refs)
print(json.dumps({"seconds": time.perf_counter() - t, "blas": blas_report()}))
"""


def run(first: str, preload: str | None, model: str, pairs: int) -> dict:
    env = dict(os.environ)
    if preload:
        env["LD_PRELOAD"] = preload
    done = subprocess.run(
        [sys.executable, "-c", HOST, first, str(ROOT), model, str(pairs)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["warned"] = "reference BLAS" in done.stderr
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="checkpoints/sft_merged_model")
    p.add_argument("--pairs", type=int, default=8)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from src.modeling.blas import fast_blas

    mkl = fast_blas()
    rows = [
        ("mlx first", run("mlx", None, args.model, args.pairs)),
        ("mlx first + LD_PRELOAD", run("mlx", mkl, args.model, args.pairs)),
        ("src first", run("src", None, args.model, args.pairs)),
    ]
    print(f"| {args.pairs} pairs, greedy | seconds | s / pair | warning | BLAS |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        s = r["seconds"]
        print(f"| {name} | {s:.1f} | {s / args.pairs:.2f} | {r['warned']} | {r['blas']} |")


if __name__ == "__main__":
    main()
