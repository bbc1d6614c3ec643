"""evaluate stage: measure the fused judge on held-out rows, not just its perplexity.

Reads the merged model and the validation split (held out from every gradient update; the fused
model is the final adapter, so validation rows never selected it). For each row the judge writes
its verdict with greedy decoding (``src/judging/generate.py``: the tokens mlx-lm's
``batch_generate`` writes, without the work a judge does not need) and the verdict is read in the
data's own format (``eval.verdict``, ``src/judging/verdicts.py``): ``auto`` detects it from the
reference judgements; a format that parses too few of them stops the stage with what each format
parsed, rather than report metrics against nothing. The format is recorded as
``verdict_format_<name>: 1`` in the metrics and in every judgement record.

Pointwise data (one response per row; ``metadata.label`` 1 if it is correct):

- ``parse_rate``: judgements with a verdict (an unparsable one is counted, never a crash, and
  counts as wrong below);
- ``verdict_accuracy``: positive verdict (e.g. score >= 6/10, Yes) vs ``metadata.label``;
- ``mean_abs_score_error`` (in the format's own units), ``reference_verdict_agreement``,
  ``score_pearson`` / ``score_spearman``: against the reference judgement's verdict;
- ``pairwise_accuracy``: for tasks with a correct and an incorrect response, how often the
  correct one scores higher (chance: 0.5);
- ``best_of_n_accuracy`` (``_direct_``: by direct score): on tasks with several candidates, is
  the top-scored one correct; ``best_of_n_random`` and ``best_of_n_oracle`` beside it;
- ``soft_auc`` (and ``best_of_n_soft_accuracy``): of the soft score, the verdict's probability
  where the judge wrote it after its own critique (P(Yes): Zhang et al.'s CoT verifier score),
  from one forward pass over each prompt and its greedy judgement; formats whose values are one
  token each (Yes/No, 1-5, A/B);
- ``direct_auc``, ``direct_pearson``, ``direct_spearman``: of a generation-free score, P(Yes) at
  the very start of the reply (one forward pass, ``src/judging/scores.py``): a position a
  critique-trained judge never writes its verdict at;
- ``exact_match_accuracy``: the rule the judge must beat, ``response == reference`` (normalized:
  case, surrounding whitespace and punctuation), on the same rows, where ``metadata`` names the
  ``response`` and the ``reference``;
- with ``--votes K`` (``eval.votes``): K critiques per row sampled at ``eval.temperature``
  (GenRM-CoT voting, Zhang et al. 2024): ``soft_auc_votes`` and ``best_of_n_soft_votes_accuracy``
  of the mean soft score, ``verdict_accuracy_votes`` of the majority verdict;
- ``<metric>_lo`` / ``<metric>_hi``: a 95% bootstrap interval of ``verdict_accuracy``,
  ``pairwise_accuracy``, ``best_of_n_accuracy``, ``soft_auc`` and ``exact_match_accuracy``
  (whole tasks resampled, 1000 times, seeded: the same judgements give the same interval).

Evaluation-only sets are judged beside the validation rows, each with the same metrics under a
prefix: ``--ood-data`` (``ood_*``: task families never trained on) and ``--ff-data`` (``ff_*``:
the trained families with free-form responses, where the exact-match rule fails); the
``*_free_form`` metrics are the judge and the rule on a set's free-form rows alone.

Pairwise data (``[[A]]``/``[[B]]`` references): each row is judged in its own order and, where
``metadata.response_a``/``response_b`` give the two responses, with them swapped;
``pairwise_accuracy`` averages both orders, a parse failure or a tie counting 0.5 (RewardBench's
rule); ``position_consistency`` is how often the judge prefers the same response in both orders;
``direct_auc`` is of P(A).

With ``--base-model`` a second model judges the same rows in the same run (metrics prefixed
``base_``); the pipeline evaluates the untrained base as a stage of its own instead
(``evaluate_base``, ``metrics/eval_base.json``), so an experiment on the adapter does not pay
for it again.

Writes ``metrics/eval.json`` and every judgement to ``metrics/eval_judgements.jsonl``.

Params: ``eval.*``.

    uv run python -m src.evaluate_genrm --model checkpoints/sft_merged_model \\
        --data data/processed/sft/sft_valid.jsonl
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .data.sft import CHAT, read_jsonl, validate_rows
from .judging import generate as gen
from .judging.metrics import (
    auc,
    best_of_n,
    bootstrap_interval,
    mean_of,
    normalize_answer,
    pairwise_accuracy,
    pearson,
    spearman,
)
from .judging.prompts import MAX_JUDGEMENT_TOKENS, swap_pair
from .judging.scores import (
    chat_prompt_ids,
    direct_scores,
    soft_scores,
    value_paths,
    value_token_ids,
)
from .judging.verdicts import NAMES, VerdictFormat, get_format, resolve
from .modeling.head import checked_head
from .modeling.kernels import KERNELS, kernels_arg
from .runtime import (
    DataError,
    arg,
    check_choice,
    check_range,
    config_parser,
    stage_main,
    write_jsonl,
)


@dataclass
class EvalConfig:
    model: str = arg(str(paths.MERGED), "the judge: the fused model")
    data: Path = arg(paths.VALID_SPLIT, "held-out chat rows ending with the reference judgement")
    judgements_out: Path = arg(
        Path("metrics/eval_judgements.jsonl"), "every judgement, with its score and reference"
    )
    max_tokens: int = arg(MAX_JUDGEMENT_TOKENS, "greedy judgement length")
    batch_size: int = arg(100, "rows generated together (speed only: the same greedy tokens)")
    limit: int = arg(0, "judge only the first N rows (0: every row)")
    base_model: str = arg("", "also judge with this (untrained) model: metrics prefixed base_")
    verdict: str = arg(
        "auto",
        "verdict format of the data (auto: detected from the reference judgements)",
        choices=("auto", *NAMES),
    )
    verdict_pattern: str = arg("", "with --verdict regex: a regex whose one group is the number")
    verdict_min: float = arg(0.0, "with --verdict regex: lowest score")
    verdict_max: float = arg(10.0, "with --verdict regex: highest score")
    votes: int = arg(
        0,
        "sampled critiques per row (GenRM-CoT voting): their soft scores averaged and their "
        "verdicts' majority, as *_votes metrics beside the greedy ones; 0: none",
    )
    temperature: float = arg(0.7, "sampling temperature of the votes")
    ood_data: Path | None = arg(
        None,
        "held-out rows from task families never trained on: judged too, metrics ood_* "
        "(an empty file: none)",
    )
    ff_data: Path | None = arg(
        None,
        "free-form rows from the trained families: judged too, metrics ff_* (an empty file: none)",
    )
    cpu_kernels: str = kernels_arg()

    def __post_init__(self) -> None:
        for name in ("max_tokens", "batch_size"):
            check_range(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        check_range("--votes", self.votes, 0)
        check_range("--temperature", self.temperature, 0.0)
        check_range("--limit", self.limit, 0, hint="0 evaluates every row.")
        check_choice("--cpu-kernels", self.cpu_kernels, KERNELS)
        if self.verdict != "auto":
            get_format(self.verdict, self.verdict_pattern, self.verdict_min, self.verdict_max)


def _rate(hits: float, n: int) -> float | None:
    return round(hits / n, 4) if n else None


def _round(x: float | None) -> float | None:
    return round(x, 4) if x is not None else None


def _of_pairs(f, pairs: list[tuple]) -> float | None:
    """``f(xs, ys)`` over (x, y) pairs, rounded; None without pairs."""
    return _round(f([x for x, _ in pairs], [y for _, y in pairs])) if pairs else None


def _chat_rows(path: Path) -> list[tuple[int, dict]]:
    numbered = read_jsonl(path)
    if validate_rows(numbered, path) != CHAT:
        raise DataError(
            path,
            None,
            "the judge is evaluated on chat rows",
            'use {"messages": [...]} rows ending with the reference judgement',
        )
    return numbered


def run(cfg: EvalConfig) -> dict:
    from .modeling.load import load_base

    numbered = _chat_rows(cfg.data)[: cfg.limit or None]
    # evaluation-only sets beside the validation rows, each judged on its own (metrics prefixed)
    # (an empty file is no set: what sample_data writes at data.ood_rows / data.ff_rows 0)
    extra = {}
    for name, path in (("ood", cfg.ood_data), ("ff", cfg.ff_data)):
        if path and path.is_file() and path.stat().st_size == 0:
            print(f"{path}: no rows, so no {name}_* metrics", file=sys.stderr)
        elif path:
            extra[name] = [r for _, r in _chat_rows(path)]
    fmt = resolve(
        cfg.verdict,
        [(line, r["messages"][-1]["content"]) for line, r in numbered],
        cfg.data,
        cfg.verdict_pattern,
        cfg.verdict_min,
        cfg.verdict_max,
    )
    swapped = swapped_prompts(numbered, cfg.data) if fmt.name == "pairwise" else None
    rows = [r for _, r in numbered]
    # load_base: quantized models are dequantized on the CPU, and the CPU computes in float32
    model, tokenizer, _, _ = load_base(cfg.model, 0, 64, kernels=cfg.cpu_kernels)
    metrics, records = judge(model, tokenizer, rows, fmt, cfg, swapped)
    if cfg.base_model:
        base, base_tok, _, _ = load_base(cfg.base_model, 0, 64, kernels=cfg.cpu_kernels)
        base_metrics, base_records = judge(base, base_tok, rows, fmt, cfg, swapped)
        metrics.update({f"base_{k}": v for k, v in base_metrics.items()})
        for rec, base_rec in zip(records, base_records, strict=True):
            rec["base_judgement"], rec["base_score"] = base_rec["judgement"], base_rec["score"]
    # ood: task families the judge never saw (does it generalize?); ff: free-form answers to
    # the tasks it was trained on (does it read the answer, where `response == reference` fails?)
    for name, extra_rows in extra.items():
        extra_metrics, extra_records = judge(model, tokenizer, extra_rows, fmt, cfg)
        metrics.update({f"{name}_{k}": v for k, v in extra_metrics.items()})
        records += [{**rec, "set": name} for rec in extra_records]
    metrics[f"verdict_format_{fmt.name}"] = 1
    write_jsonl(cfg.judgements_out, records)
    return metrics


def swapped_prompts(numbered: list[tuple[int, dict]], path: Path) -> list[list[dict]] | None:
    """Each pairwise row's prompt with Response A and B exchanged, from ``metadata.response_a``
    / ``response_b``; None when no row names its responses (only the given order is judged)."""
    named = [
        isinstance(r.get("metadata"), dict) and "response_a" in r["metadata"] for _, r in numbered
    ]
    if not any(named):
        return None
    out = []
    for (line, row), has in zip(numbered, named, strict=True):
        meta = row["metadata"] if has else {}
        user = row["messages"][-2]["content"] if len(row["messages"]) > 1 else ""
        text = swap_pair(user, str(meta.get("response_a")), str(meta.get("response_b")))
        if not has or text is None:
            raise DataError(
                path,
                line,
                "cannot swap this pairwise row's responses: metadata.response_a / response_b "
                "must be given and appear in the last user turn, A before B",
                "give every row both responses exactly as the prompt shows them, or none "
                "(then only the given order is judged)",
            )
        out.append([*row["messages"][:-2], {"role": "user", "content": text}])
    return out


def _generate(model, tokenizer, conversations: list[list[dict]], fmt, cfg) -> tuple:
    """Greedy judgements, direct scores and soft scores (None where the format has no direct or
    soft score) of each conversation (without the judgement), and the seconds generating."""
    head = checked_head(model)
    prompt_ids = chat_prompt_ids(tokenizer, conversations)
    values = value_token_ids(tokenizer, fmt)
    then = value_paths(tokenizer, fmt)[0] if values is not None else None
    t0 = time.perf_counter()
    texts, soft, direct = gen.judge_texts(
        model, tokenizer, prompt_ids, cfg.max_tokens, cfg.batch_size, head, None, fmt, values, then
    )
    seconds = time.perf_counter() - t0
    if direct is None and fmt.template:  # not read off the generation: a second prefill
        direct = direct_scores(model, tokenizer, prompt_ids, fmt, head=head)
    if soft is None and values is not None:  # not read off the generation: a second pass
        soft = soft_scores(model, tokenizer, prompt_ids, texts, fmt, head=head)
    return texts, direct, soft, seconds


def _votes(model, tokenizer, conversations: list[list[dict]], fmt, cfg) -> tuple:
    """``cfg.votes`` judgements per conversation sampled at ``cfg.temperature`` (seeded): per
    row the mean soft score and the mean verdict on [0, 1] (a verdict share: 0.5 or more is a
    positive majority), None where no vote gave one; and the seconds spent."""
    import mlx.core as mx
    from mlx_lm.sample_utils import make_sampler

    head = checked_head(model)
    prompt_ids = chat_prompt_ids(tokenizer, conversations)
    repeated = [p for p in prompt_ids for _ in range(cfg.votes)]
    mx.random.seed(0)
    values = value_token_ids(tokenizer, fmt)
    t0 = time.perf_counter()
    texts, soft, _ = gen.judge_texts(
        model,
        tokenizer,
        repeated,
        cfg.max_tokens,
        cfg.batch_size,
        head,
        make_sampler(cfg.temperature),
        fmt,
        values,
    )
    seconds = time.perf_counter() - t0
    if soft is None and values is not None:
        soft = soft_scores(model, tokenizer, repeated, texts, fmt, head=head)
    soft = soft or [None] * len(texts)
    verdicts = [None if (v := fmt.parse(t)) is None else fmt.unit(v) for t in texts]
    return average_votes(soft, cfg.votes), average_votes(verdicts, cfg.votes), seconds


def average_votes(values: list, k: int) -> list[float | None]:
    """Consecutive groups of ``k`` votes -> the mean of each group's values that are not None."""
    return [mean_of(values[i : i + k]) for i in range(0, len(values), k)]


def judge(
    model,
    tokenizer,
    rows: list[dict],
    fmt: VerdictFormat,
    cfg: EvalConfig,
    swapped: list[list[dict]] | None = None,
) -> tuple[dict, list[dict]]:
    """Metrics of one model on ``rows`` and its judgement of each row."""
    texts, direct, soft, seconds = _generate(
        model, tokenizer, [r["messages"][:-1] for r in rows], fmt, cfg
    )
    texts_sw = direct_sw = scores_sw = None
    if swapped is not None:
        texts_sw, direct_sw, _, more = _generate(model, tokenizer, swapped, fmt, cfg)
        scores_sw = [fmt.parse(t) for t in texts_sw]
        seconds += more
    votes = None
    if cfg.votes and fmt.name != "pairwise":
        *votes, more = _votes(model, tokenizer, [r["messages"][:-1] for r in rows], fmt, cfg)
        seconds += more
    scores = [fmt.parse(t) for t in texts]
    refs = [fmt.parse(r["messages"][-1]["content"]) for r in rows]
    meta = [r.get("metadata") if isinstance(r.get("metadata"), dict) else {} for r in rows]
    records = [
        {
            "judgement": t,
            "score": s,
            "reference": r,
            "label": m.get("label"),
            "verdict_format": fmt.name,
        }
        for t, s, r, m in zip(texts, scores, refs, meta, strict=True)
    ]
    for i, rec in enumerate(records):
        if direct is not None:
            rec["direct_score"] = round(direct[i], 4)
        if soft is not None:
            rec["soft_score"] = None if soft[i] is None else round(soft[i], 6)
        if votes is not None:
            rec["soft_score_votes"], rec["verdict_votes"] = (_round(v[i]) for v in votes)
        if swapped is not None:
            rec["judgement_swapped"], rec["score_swapped"] = texts_sw[i], scores_sw[i]
            if direct is not None:
                rec["direct_score_swapped"] = round(direct_sw[i], 4)
    if fmt.name == "pairwise":
        metrics = _pairwise_metrics(scores, refs, direct, scores_sw, direct_sw)
    else:
        metrics = _pointwise_metrics(fmt, scores, refs, direct, soft, meta)
        if votes is not None:
            metrics |= _vote_metrics(*votes, meta)
    metrics["generation_seconds"] = round(seconds, 2)
    # Metrics that have no data (e.g. no labels) are left out, not written as NaN.
    return {k: v for k, v in metrics.items() if v is not None}, records


def _pointwise_metrics(fmt, scores, refs, direct, soft, meta) -> dict:
    labels = [m.get("label") for m in meta]
    tasks = [m.get("task_id") for m in meta]
    # per row: the judge's verdict right (None: no label), and the exact-match rule's
    judged = [
        None if y is None else s is not None and fmt.positive(s) == bool(y)
        for s, y in zip(scores, labels, strict=True)
    ]
    rule = [_exact_match_right(m) for m in meta]
    parsed_labelled = [
        (s, y) for s, y in zip(scores, labels, strict=True) if s is not None and y is not None
    ]
    with_ref = [
        (s, r) for s, r in zip(scores, refs, strict=True) if s is not None and r is not None
    ]
    pair_acc, n_pairs = pairwise_accuracy(tasks, scores, labels)
    n = len(scores)
    metrics = {
        "n_eval": n,
        "n_parsed": sum(s is not None for s in scores),
        "parse_rate": _rate(sum(s is not None for s in scores), n),
        "verdict_accuracy": _round(mean_of(judged)),
        "verdict_accuracy_parsed": _rate(
            sum(fmt.positive(s) == bool(y) for s, y in parsed_labelled), len(parsed_labelled)
        ),
        "exact_match_accuracy": _round(mean_of(rule)),
        "n_exact_match": sum(r is not None for r in rule),
        "mean_abs_score_error": (
            round(sum(abs(s - r) for s, r in with_ref) / len(with_ref), 4) if with_ref else None
        ),
        "reference_verdict_agreement": _rate(
            sum(fmt.positive(s) == fmt.positive(r) for s, r in with_ref), len(with_ref)
        ),
        "score_pearson": _of_pairs(pearson, with_ref),
        "score_spearman": _of_pairs(spearman, with_ref),
        "pairwise_accuracy": _round(pair_acc),
        "n_pairs": n_pairs,
    }
    rankings = {"": scores}
    if direct is not None:
        lab = [(d, int(y)) for d, y in zip(direct, labels, strict=True) if y is not None]
        d_ref = [(d, r) for d, r in zip(direct, refs, strict=True) if r is not None]
        metrics["direct_auc"] = _of_pairs(auc, lab)
        metrics["direct_pearson"] = _of_pairs(pearson, d_ref)
        metrics["direct_spearman"] = _of_pairs(spearman, d_ref)
        rankings["direct_"] = direct
    if soft is not None:  # P(verdict) where the judge wrote it, after its critique
        metrics["soft_auc"] = _round(_auc_stat(soft, labels)(range(len(soft)), tasks))
        metrics["n_soft"] = sum(v is not None for v in soft)
        rankings["soft_"] = soft
    for name, ranking in rankings.items():
        bon = best_of_n(tasks, ranking, labels)
        if bon:
            metrics[f"best_of_n_{name}accuracy"] = round(bon["accuracy"], 4)
            metrics.update(
                best_of_n_random=round(bon["random"], 4),
                best_of_n_oracle=round(bon["oracle"], 4),
                n_best_of_n_tasks=bon["tasks"],
                best_of_n_mean_n=round(bon["mean_n"], 4),
            )
    metrics |= _free_form_metrics(meta, tasks, judged, rule)
    return metrics | _intervals(metrics, tasks, scores, soft, labels, judged, rule)


def _free_form_metrics(meta: list, tasks: list, judged: list, rule: list) -> dict:
    """The judge and the exact-match rule on the free-form rows alone (``metadata.free_form``):
    where a judge is worth more than the rule. Empty without such rows."""
    free = [bool(m.get("free_form")) for m in meta]
    if not any(free):
        return {}
    judged_ff = [j if f else None for j, f in zip(judged, free, strict=True)]
    rule_ff = [r if f else None for r, f in zip(rule, free, strict=True)]
    metrics = {
        "n_free_form": sum(free),
        "verdict_accuracy_free_form": _round(mean_of(judged_ff)),
        "exact_match_accuracy_free_form": _round(mean_of(rule_ff)),
    }
    stats = {
        "verdict_accuracy_free_form": lambda rows, ids: mean_of([judged_ff[i] for i in rows]),
        "exact_match_accuracy_free_form": lambda rows, ids: mean_of([rule_ff[i] for i in rows]),
    }
    return metrics | _with_intervals(metrics, tasks, stats)


def _vote_metrics(soft: list, verdicts: list, meta: list) -> dict:
    """The voted judge's metrics, suffixed ``_votes``: ``verdict_accuracy`` of the majority
    verdict (a tie is positive; no parsed vote counts as wrong), ``soft_auc`` and best-of-N of
    the mean soft score, with intervals."""
    labels = [m.get("label") for m in meta]
    tasks = [m.get("task_id") for m in meta]
    judged = [
        None if y is None else v is not None and (v >= 0.5) == bool(y)
        for v, y in zip(verdicts, labels, strict=True)
    ]
    metrics = {
        "verdict_accuracy_votes": _round(mean_of(judged)),
        "soft_auc_votes": _round(_auc_stat(soft, labels)(range(len(soft)), tasks)),
    }
    bon = best_of_n(tasks, soft, labels)
    if bon:
        metrics["best_of_n_soft_votes_accuracy"] = round(bon["accuracy"], 4)

    stats = {
        "verdict_accuracy_votes": lambda rows, ids: mean_of([judged[i] for i in rows]),
        "soft_auc_votes": _auc_stat(soft, labels),
    }
    return metrics | _with_intervals(metrics, tasks, stats)


def _exact_match_right(meta: dict) -> bool | None:
    """Whether ``response == reference`` (normalized) gets the row's label right; None where
    the row does not name its response, reference and label (``metadata``)."""
    if not {"response", "reference", "label"} <= meta.keys() or meta["label"] is None:
        return None
    match = normalize_answer(meta["response"]) == normalize_answer(meta["reference"])
    return match == bool(meta["label"])


def _intervals(metrics: dict, tasks, scores, soft, labels, judged, rule) -> dict:
    """95% bootstrap intervals (whole tasks resampled, seeded) of the headline metrics, as
    ``<metric>_lo`` / ``<metric>_hi``: a difference between two experiments inside them is noise."""

    def pick(values, rows):
        return [values[i] for i in rows]

    def best(rows, ids):
        found = best_of_n(ids, pick(scores, rows), pick(labels, rows))
        return found["accuracy"] if found else None

    stats = {
        "verdict_accuracy": lambda rows, ids: mean_of(pick(judged, rows)),
        "exact_match_accuracy": lambda rows, ids: mean_of(pick(rule, rows)),
        "pairwise_accuracy": lambda rows, ids: pairwise_accuracy(
            ids, pick(scores, rows), pick(labels, rows)
        )[0],
        "best_of_n_accuracy": best,
        "soft_auc": _auc_stat(soft, labels),
    }
    return _with_intervals(metrics, tasks, stats)


def _auc_stat(values: list, labels: list):
    """A resample's AUC of ``values`` against ``labels`` (rows with both), for the bootstrap."""

    def stat(rows, ids):
        kept = [
            (values[i], labels[i]) for i in rows if values[i] is not None and labels[i] is not None
        ]
        return auc([v for v, _ in kept], [int(y) for _, y in kept]) if kept else None

    return stat


def _with_intervals(metrics: dict, tasks: list, stats: dict) -> dict:
    """``<name>_lo`` / ``<name>_hi`` for each metric in ``stats`` that has a value."""
    out = {}
    for name, stat in stats.items():
        if metrics.get(name) is not None:
            interval = bootstrap_interval(tasks, stat)
            if interval is not None:
                out[f"{name}_lo"], out[f"{name}_hi"] = (round(v, 4) for v in interval)
    return out


def _credit(judged: float | None, truth: float) -> float:
    """A pairwise verdict against the truth (1: A better, 0: B): a tie or no verdict is 0.5."""
    if judged is None or judged == 0.5:
        return 0.5
    return float((judged > 0.5) == (truth > 0.5))


def _pairwise_metrics(scores, refs, direct, scores_sw, direct_sw) -> dict:
    keep = [i for i, r in enumerate(refs) if r is not None and r != 0.5]  # tie references: no truth
    given = [_credit(scores[i], refs[i]) for i in keep]
    judged = scores + (scores_sw or [])
    metrics = {
        "n_eval": len(scores),
        "n_parsed": sum(s is not None for s in scores),
        "parse_rate": _rate(sum(s is not None for s in judged), len(judged)),
        "n_pairs": len(keep),
        "pairwise_accuracy_given_order": _rate(sum(given), len(keep)),
    }
    truth = [int(refs[i] > 0.5) for i in keep]
    auc_scores, auc_truth = ([direct[i] for i in keep], truth) if direct is not None else ([], [])
    if scores_sw is not None:
        sw = [scores_sw[i] for i in keep]
        swapped = [_credit(s, 1 - refs[i]) for s, i in zip(sw, keep, strict=True)]
        metrics["pairwise_accuracy_swapped"] = _rate(sum(swapped), len(keep))
        metrics["pairwise_accuracy"] = _rate(sum(given) + sum(swapped), 2 * len(keep))
        metrics["position_consistency"] = _rate(
            sum(
                scores[i] is not None and s is not None and scores[i] != 0.5 and scores[i] == 1 - s
                for s, i in zip(sw, keep, strict=True)
            ),
            len(keep),
        )
        if direct_sw is not None:
            auc_scores += [direct_sw[i] for i in keep]
            auc_truth += [1 - t for t in truth]
    else:
        metrics["pairwise_accuracy"] = metrics["pairwise_accuracy_given_order"]
    if auc_scores:
        metrics["direct_auc"] = _round(auc(auc_scores, auc_truth))
    return metrics


def build_parser() -> argparse.ArgumentParser:
    return config_parser(EvalConfig, "src.evaluate_genrm", __doc__, "metrics/eval.json")


def main(argv: list[str] | None = None) -> int:
    return stage_main(build_parser(), EvalConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
