"""Statistics of a judge's scores: AUC, pairwise accuracy, best-of-N, correlations (pure Python)."""

from __future__ import annotations

import math
from collections import defaultdict


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
