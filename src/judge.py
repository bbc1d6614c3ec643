"""Reading a GenRM judge: parse its verdict, score without generation, and the metrics."""

from __future__ import annotations

import re
from collections import defaultdict

SCORE = re.compile(r"Score:\s*(\d+(?:\.\d+)?)\s*/\s*10\b")
CORRECT_AT = 6.0  # a score of 6/10 or more is a "correct" verdict (training data: 8-10 vs 1-3)


def parse_score(text: str) -> float | None:
    """The last ``Score: N/10`` in a judgement, or None when there is none in range 0-10."""
    found = SCORE.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 0 <= value <= 10 else None


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


def score_tokens(tokenizer) -> tuple[list[int], dict[int, list[int]], int]:
    """How verdicts tokenize: the tokens every ``Score: N/10`` starts with, each score's own
    tokens after them (``[" 8"]`` in a BPE vocabulary, ``["1", "0"]`` where digits are split, as in
    Gemma's), and the token that ends the number (``/``)."""
    encoded = {s: tokenizer.encode(f"Score: {s}/10", add_special_tokens=False) for s in range(11)}
    n = min(len(e) for e in encoded.values())
    common = next((i for i in range(n) if len({e[i] for e in encoded.values()}) > 1), n)
    slash = tokenizer.encode("/10", add_special_tokens=False)[0]
    numbers = {}
    for s, e in encoded.items():
        rest = e[common:]
        numbers[s] = rest[: rest.index(slash)] if slash in rest else rest[:1]
    return encoded[0][:common], numbers, slash


def _next_token_probs(model, seqs: list[list[int]]):
    import mlx.core as mx
    import numpy as np

    arr = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    for i, e in enumerate(seqs):  # right-pad; read each row at its own last token
        arr[i, : len(e)] = e
    rows, ends = mx.arange(len(seqs)), mx.array([len(e) - 1 for e in seqs])
    head = getattr(model, "_trained_positions_head", None)
    if head is not None:  # the LM head at each row's last position only (vocab x width each)
        last = head(model.model(mx.array(arr))[rows, ends])
    else:
        last = model(mx.array(arr))[rows, ends]
    return np.array(mx.softmax(last.astype(mx.float32), axis=-1))


def direct_scores(
    model, tokenizer, prompt_ids: list[list[int]], batch_size: int = 16
) -> list[float]:
    """Expected score without generating a critique, in the spirit of direct GenRM (Zhang et al.
    2024): the model's probability of each ``N`` right after ``<start_of_turn>model\nScore: ``,
    renormalized over N = 0..10. One forward pass per prompt when every score is one distinct
    token; a second one per shared first token (``1`` vs ``10`` with split digits), where the
    next token (``/`` or ``0``) tells them apart. Also the hook for best-of-N reranking."""
    import mlx.nn as nn
    import numpy as np

    from .sft_loop import enable_trained_positions_head

    if isinstance(model, nn.Module):  # a checked body/head split, else the whole model
        enable_trained_positions_head(model)
    prefix, numbers, slash = score_tokens(tokenizer)
    if any(len(t) > 2 or not t for t in numbers.values()):
        raise ValueError("scores tokenize into more than two tokens; direct scoring unsupported")
    firsts: dict[int, list[int]] = {}
    for s, toks in numbers.items():
        firsts.setdefault(toks[0], []).append(s)
    shared = [t for t, ss in firsts.items() if len(ss) > 1 or len(numbers[ss[0]]) > 1]
    values = np.arange(11, dtype=np.float64)
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        seqs = [list(p) + prefix for p in prompt_ids[start : start + batch_size]]
        p1 = _next_token_probs(model, seqs)
        prob = np.zeros((len(seqs), 11))
        for s, toks in numbers.items():
            if toks[0] not in shared:
                prob[:, s] = p1[:, toks[0]]
        for t in shared:
            p2 = _next_token_probs(model, [q + [t] for q in seqs])
            for s in firsts[t]:
                follow = numbers[s][1] if len(numbers[s]) > 1 else slash
                prob[:, s] = p1[:, t] * p2[:, follow]
        prob /= np.maximum(prob.sum(axis=1, keepdims=True), 1e-30)
        out += (prob @ values).tolist()
    return out
