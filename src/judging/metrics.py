"""Statistics of a judge's scores: AUC, pairwise accuracy, best-of-N, correlations (pure Python)."""

from __future__ import annotations

import math
import random
import string
from collections import defaultdict
from collections.abc import Callable


def auc(scores: list[float], labels: list[int]) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def pairwise_accuracy(task_ids: list, scores: list[float | None], labels: list[int]) -> tuple:
    """Over every (correct, incorrect) pair of responses to the same task: how often the correct
    one scores higher (a tie counts half, an unparsed score loses). Returns (accuracy, n_pairs)."""
    by_task = defaultdict(lambda: ([], []))
    for task, score, label in zip(task_ids, scores, labels, strict=True):
        if task is not None and label is not None:
            by_task[task][0 if label else 1].append(score)
    total, n = 0.0, 0
    for good, bad in by_task.values():
        for g in good:
            for b in bad:
                n += 1
                if g is not None and (b is None or g > b):
                    total += 1
                elif g is not None and g == b:
                    total += 0.5
    return (total / n if n else None), n


def best_of_n(task_ids: list, scores: list[float | None], labels: list[int]) -> dict | None:
    """Best-of-N reranking on tasks with several candidates: the share of tasks where the
    top-scored candidate is correct (tied top scores share the pick, an unparsed score ranks
    last), next to picking at random and to an oracle. None without such tasks."""
    by_task = defaultdict(list)
    for task, score, label in zip(task_ids, scores, labels, strict=True):
        if task is not None and label is not None:
            by_task[task].append((-math.inf if score is None else score, int(label)))
    groups = [g for g in by_task.values() if len(g) > 1]
    if not groups:
        return None
    judge = random = oracle = 0.0
    for group in groups:
        top = max(s for s, _ in group)
        picked = [y for s, y in group if s == top]
        judge += sum(picked) / len(picked)
        random += sum(y for _, y in group) / len(group)
        oracle += max(y for _, y in group)
    n = len(groups)
    return {
        "accuracy": judge / n,
        "random": random / n,
        "oracle": oracle / n,
        "tasks": n,
        "mean_n": sum(map(len, groups)) / n,
    }


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson correlation; None with fewer than two points or a constant side."""
    n = len(x)
    if n < 2:
        return None
    mx_, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx_) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx_) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def _ranks(v: list[float]) -> list[float]:
    order = sorted(range(len(v)), key=v.__getitem__)
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in order[i : j + 1]:  # ties share their average rank
            ranks[k] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman rank correlation (Pearson on average ranks)."""
    return pearson(_ranks(x), _ranks(y))


def normalize_answer(text) -> str:
    """An answer as the exact-match rule compares it: lower case, without surrounding whitespace
    and punctuation (``" Elppa."`` -> ``"elppa"``)."""
    return str(text).strip().strip(string.punctuation + string.whitespace).lower()


def mean_of(values: list) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def bootstrap_interval(
    tasks: list,
    stat: Callable[[list[int], list], float | None],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of a metric, resampling whole tasks: a task's rows stay
    together (rows without a task id are tasks of their own), drawn with replacement as many
    times as there are tasks. ``stat(rows, task_ids)`` computes the metric on the row indices of
    one resample, where a task drawn twice counts as two tasks. Seeded: the same judgements give
    the same interval. None when fewer than half the resamples give a value."""
    groups = defaultdict(list)
    for i, task in enumerate(tasks):
        groups[("row", i) if task is None else ("task", task)].append(i)
    members = list(groups.values())
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        rows, ids = [], []
        for draw in range(len(members)):
            picked = members[rng.randrange(len(members))]
            rows += picked
            ids += [draw] * len(picked)
        value = stat(rows, ids)
        if value is not None:
            values.append(value)
    if len(values) < resamples / 2:
        return None
    values.sort()
    tail = (1 - level) / 2
    low, high = int(tail * len(values)), min(len(values) - 1, int((1 - tail) * len(values)))
    return values[low], values[high]
