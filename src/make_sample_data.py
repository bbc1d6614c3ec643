"""sample_data stage: write the embedded sample GenRM SFT dataset (the recipe's Faz 0 output).

Deterministic: the same ``--seed`` and ``--rows`` give the same bytes. To train on a real Faz 0
file instead, see the README ("Your own data"): the file takes this stage's place and is tracked
with ``dvc add``.

Params: ``data.rows``, ``data.seed``, ``data.reference`` (reference-guided prompts: the correct
answer is in the prompt and the judge compares; see ``src/genrm_sample.py``), ``data.verdict``
(the verdict format the critiques end with: ``score10``, ``yes_no``, ``result5``, ``rating10`` or
``pairwise``; see ``src/verdicts.py``).

    uv run python -m src.make_sample_data --rows 3000 --seed 0 \
        --out data/processed/sft/sft_genrm_train.jsonl
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from .genrm_sample import VERDICTS, dumps, generate_rows
from .runtime import add_bool_flag, check_range, run_main, write_jsonl


def run(rows: int, seed: int, out: Path, reference: bool = False, verdict: str = "score10") -> dict:
    check_range("--rows", rows, 1)
    generated = list(generate_rows(rows, seed, reference=reference, verdict=verdict))
    write_jsonl(out, generated, dumps=dumps)
    labels = Counter(r["metadata"]["label"] for r in generated)
    return {"n_rows": len(generated), "n_correct": labels[1], "n_incorrect": labels[0]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.make_sample_data", description=__doc__.split("\n")[0]
    )
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    add_bool_flag(p, "--reference", False, "reference answer in each prompt")
    p.add_argument(
        "--verdict",
        choices=[*VERDICTS, "pairwise"],
        default="score10",
        help="verdict format the critiques end with",
    )
    p.add_argument("--out", type=Path, default=Path("data/processed/sft/sft_genrm_train.jsonl"))
    p.add_argument("--metrics", type=Path, default=Path("metrics/sample_data.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return run_main(lambda: run(a.rows, a.seed, a.out, a.reference, a.verdict), a.metrics)


if __name__ == "__main__":
    raise SystemExit(main())
