"""evaluate stage: measure the fused judge on held-out rows, not just its perplexity.

Reads the merged model and the validation split (held out from every gradient update; the fused
model is the final adapter, so validation rows never selected it). For each row the judge writes
its verdict with greedy decoding (mlx-lm's ``batch_generate``); the score is parsed and compared
with the truth:

- ``parse_rate``: judgements with a ``Score: N/10`` line (an unparsable one is counted, never a
  crash, and counts as wrong below);
- ``verdict_accuracy``: score >= 6 vs the row's ``metadata.label`` (chance: 0.5);
- ``mean_abs_score_error`` and ``reference_verdict_agreement``: against the reference assistant's
  own score (usable when rows carry no label);
- ``pairwise_accuracy``: for tasks with a correct and an incorrect response, how often the
  correct one scores higher (chance: 0.5);
- ``direct_auc``: AUC of a generation-free score (one forward pass, ``src/judge.py``).

With ``--base-model`` the untrained base judges the same rows too: its metrics carry a
``base_`` prefix, so the gain from training is one ``dvc metrics show`` away.

Writes ``metrics/eval.json`` and every judgement to ``metrics/eval_judgements.jsonl``.

Params: ``eval.*``.

    uv run python -m src.evaluate_genrm --model checkpoints/sft_merged_model \\
        --data data/processed/sft/sft_valid.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .judge import CORRECT_AT, auc, direct_scores, pairwise_accuracy, parse_score
from .runtime import DataError, StageError, atomic_path, stage_main
from .sft_data import CHAT, read_jsonl, validate_rows


@dataclass
class EvalConfig:
    model: str = "checkpoints/sft_merged_model"
    data: Path = Path("data/processed/sft/sft_valid.jsonl")
    judgements_out: Path = Path("metrics/eval_judgements.jsonl")
    max_tokens: int = 64
    batch_size: int = 32
    limit: int = 0  # 0: every row
    base_model: str = ""  # also judge with this (untrained) model: metrics prefixed base_

    def __post_init__(self) -> None:
        for name in ("max_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise StageError(f"--{name.replace('_', '-')} must be >= 1.")
        if self.limit < 0:
            raise StageError("--limit must be >= 0 (0 evaluates every row).")


def _rate(hits: int, n: int) -> float | None:
    return round(hits / n, 4) if n else None


def run(cfg: EvalConfig) -> dict:
    from .base_model import load_base

    numbered = read_jsonl(cfg.data)
    if validate_rows(numbered, cfg.data) != CHAT:
        raise DataError(
            cfg.data,
            None,
            "the judge is evaluated on chat rows",
            'use {"messages": [...]} rows ending with the reference judgement',
        )
    numbered = numbered[: cfg.limit or None]
    check_reference_verdicts(numbered, cfg.data)
    rows = [r for _, r in numbered]
    # load_base: quantized models are dequantized on the CPU, and the CPU computes in float32
    model, tokenizer, _, _ = load_base(cfg.model, 0, 64)
    metrics, records = judge(model, tokenizer, rows, cfg)
    if cfg.base_model:
        base, base_tok, _, _ = load_base(cfg.base_model, 0, 64)
        base_metrics, base_records = judge(base, base_tok, rows, cfg)
        metrics.update({f"base_{k}": v for k, v in base_metrics.items()})
        for rec, base_rec in zip(records, base_records, strict=True):
            rec["base_judgement"], rec["base_score"] = base_rec["judgement"], base_rec["score"]
    with atomic_path(cfg.judgements_out) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    return metrics


# At most this share of reference judgements may lack a parsable verdict ("nearly all" parse).
UNPARSED_REFERENCES_ALLOWED = 0.05


def check_reference_verdicts(numbered: list[tuple[int, dict]], path: Path) -> None:
    """The reference judgements must be in the verdict format this stage reads (``Score:
    N/10``); otherwise every metric below would compare the judge with nothing, so refuse."""
    bad = [(line, r) for line, r in numbered if parse_score(r["messages"][-1]["content"]) is None]
    if len(bad) > UNPARSED_REFERENCES_ALLOWED * len(numbered):
        line, row = bad[0]
        tail = row["messages"][-1]["content"][-60:]
        raise DataError(
            path,
            line,
            f"{len(bad)} of {len(numbered)} reference judgements have no `Score: N/10` verdict "
            f"(this one ends {tail!r}); the metrics would compare the judge with nothing",
            "evaluate data whose reference judgements end with `Score: N/10` (0-10), the one "
            "verdict format this stage reads",
        )


def judge(model, tokenizer, rows: list[dict], cfg: EvalConfig) -> tuple[dict, list[dict]]:
    """Metrics of one model on ``rows`` and its judgement of each row."""
    from mlx_lm.generate import batch_generate

    prompts = [
        tokenizer.apply_chat_template(
            r["messages"][:-1], add_generation_prompt=True, tokenize=False
        )
        for r in rows
    ]
    prompt_ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    t0 = time.perf_counter()
    texts = []
    for start in range(0, len(rows), cfg.batch_size):
        out = batch_generate(
            model, tokenizer, prompt_ids[start : start + cfg.batch_size], max_tokens=cfg.max_tokens
        )
        texts += out.texts
    gen_seconds = time.perf_counter() - t0
    direct = direct_scores(model, tokenizer, prompt_ids)

    meta = [r.get("metadata") if isinstance(r.get("metadata"), dict) else {} for r in rows]
    labels = [m.get("label") for m in meta]
    refs = [
        m["score"] if "score" in m else parse_score(r["messages"][-1]["content"])
        for r, m in zip(rows, meta, strict=True)
    ]
    scores = [parse_score(t) for t in texts]

    labelled = [(s, y) for s, y in zip(scores, labels, strict=True) if y is not None]
    right = sum(s is not None and (s >= CORRECT_AT) == bool(y) for s, y in labelled)
    parsed_labelled = [(s, y) for s, y in labelled if s is not None]
    with_ref = [
        (s, r) for s, r in zip(scores, refs, strict=True) if s is not None and r is not None
    ]
    pair_acc, n_pairs = pairwise_accuracy([m.get("task_id") for m in meta], scores, labels)
    direct_auc = auc(
        [d for d, y in zip(direct, labels, strict=True) if y is not None],
        [int(y) for y in labels if y is not None],
    )

    records = [
        {"judgement": t, "score": s, "direct_score": round(d, 4), "label": y, "reference": r}
        for t, s, d, y, r in zip(texts, scores, direct, labels, refs, strict=True)
    ]
    n = len(rows)
    metrics = {
        "n_eval": n,
        "n_parsed": sum(s is not None for s in scores),
        "parse_rate": _rate(sum(s is not None for s in scores), n),
        "verdict_accuracy": _rate(right, len(labelled)),
        "verdict_accuracy_parsed": _rate(
            sum((s >= CORRECT_AT) == bool(y) for s, y in parsed_labelled), len(parsed_labelled)
        ),
        "mean_abs_score_error": (
            round(sum(abs(s - r) for s, r in with_ref) / len(with_ref), 4) if with_ref else None
        ),
        "reference_verdict_agreement": _rate(
            sum((s >= CORRECT_AT) == (r >= CORRECT_AT) for s, r in with_ref), len(with_ref)
        ),
        "pairwise_accuracy": round(pair_acc, 4) if pair_acc is not None else None,
        "n_pairs": n_pairs,
        "direct_auc": round(direct_auc, 4) if direct_auc is not None else None,
        "generation_seconds": round(gen_seconds, 2),
    }
    # Metrics that have no data (e.g. no labels) are left out, not written as NaN.
    return {k: v for k, v in metrics.items() if v is not None}, records


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig()
    p = argparse.ArgumentParser(
        prog="python -m src.evaluate_genrm", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", default=d.model)
    p.add_argument("--data", type=Path, default=d.data)
    p.add_argument("--judgements-out", type=Path, default=d.judgements_out)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--limit", type=int, default=d.limit)
    p.add_argument(
        "--base-model", default=d.base_model, help="also judge with this untrained model"
    )
    p.add_argument("--metrics", type=Path, default=Path("metrics/eval.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    return stage_main(build_parser(), EvalConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
