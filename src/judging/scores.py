"""Reading a judge's verdict from its probabilities: the direct score (no critique, one forward
pass) and the soft score (at the position where the judge wrote its verdict after its critique)."""

from __future__ import annotations

import math

from ..modeling.head import checked_head
from .verdicts import FORMATS, VerdictFormat

SCORE10 = FORMATS["score10"]
# mlx-lm's server returns at most this many alternatives per generated token (top_logprobs).
TOP_LOGPROBS = 11


def value_paths(tokenizer, fmt: VerdictFormat) -> tuple[list[int], dict[str, list[int]]]:
    """How ``fmt``'s verdicts tokenize: the tokens every verdict starts with, and for each value
    the shortest token path after them that tells it from every other value (``[" 8"]`` in a BPE
    vocabulary; ``["1", "/"]`` vs ``["1", "0"]`` for 1 and 10 where digits are split, as in
    Gemma's and SmolLM2's)."""
    if fmt.template is None:
        raise ValueError(f"the {fmt.name} format has no template; direct scoring needs one")
    enc = {
        v: tokenizer.encode(fmt.template.format(v), add_special_tokens=False)
        for v in fmt.direct_values()
    }
    shortest = min(len(e) for e in enc.values())
    common = next((i for i in range(shortest) if len({e[i] for e in enc.values()}) > 1), shortest)
    paths = {}
    for v, e in enc.items():
        rest = e[common:]
        k = next(
            (
                k
                for k in range(1, len(rest) + 1)
                if all(w == v or o[common : common + k] != rest[:k] for w, o in enc.items())
            ),
            None,
        )
        if k is None:
            raise ValueError(f"{fmt.name}: {v!r} cannot be told apart from another value")
        paths[v] = rest[:k]
    return next(iter(enc.values()))[:common], paths


def chat_prompt_ids(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    """Each conversation rendered with the chat template, ready for the judge's reply."""
    return [
        tokenizer.encode(
            tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )
        for c in conversations
    ]


def _next_token_probs(model, head, seqs: list[list[int]]):
    """The next-token distribution after each sequence: a prefill as the judge's generation
    does it (``src/judging/generate.py``: left-padded groups, the head at the last position)."""
    import mlx.core as mx
    import numpy as np

    from .generate import PREFILL_ROWS, _prefill, plain_kv_cache

    if plain_kv_cache(model):
        last = mx.concatenate(
            [
                _prefill(model, head, seqs[i : i + PREFILL_ROWS])[1]
                for i in range(0, len(seqs), PREFILL_ROWS)
            ]
        )
    else:  # right-padded, no cache; each row read at its own last token
        arr = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
        for i, e in enumerate(seqs):
            arr[i, : len(e)] = e
        rows, ends = mx.arange(len(seqs)), mx.array([len(e) - 1 for e in seqs])
        out = model.model(mx.array(arr)) if head is not None else model(mx.array(arr))
        last = head(out[rows, ends]) if head is not None else out[rows, ends]
    return np.array(mx.softmax(last.astype(mx.float32), axis=-1))


def direct_scores(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    fmt: VerdictFormat = SCORE10,
    batch_size: int = 16,
    head="auto",
) -> list[float]:
    """Raw verdict expected without generating a critique, in the spirit of direct GenRM (Zhang
    et al. 2024): the model's probability of each verdict right after the verdict's own opening
    (``Score: ``, ``Is the answer correct (Yes/No)? ``, ``[[``) at the start of its turn,
    renormalized over the format's values: P(Yes) for ``yes_no``, P(A) (ties half) for
    ``pairwise``, the expected score for numeric formats. One forward pass per prompt, plus one
    per shared first token where values share it (``1`` and ``10`` with split digits). Also the
    hook for best-of-N reranking. ``head``: the model's ``checked_head`` where the caller has it
    (``"auto"``: checked here)."""
    import mlx.nn as nn
    import numpy as np

    if isinstance(head, str):
        head = checked_head(model) if isinstance(model, nn.Module) else None
    prefix, paths = value_paths(tokenizer, fmt)
    raw = fmt.direct_values()
    # Every proper prefix of a path needs the next-token distribution after it.
    steps = sorted({tuple(p[:j]) for p in paths.values() for j in range(len(p))}, key=len)
    values = np.array([raw[v] for v in paths])
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        seqs = [list(p) + prefix for p in prompt_ids[start : start + batch_size]]
        probs = {s: _next_token_probs(model, head, [q + list(s) for q in seqs]) for s in steps}
        joint = np.ones((len(seqs), len(paths)))
        for col, path in enumerate(paths.values()):
            for j, token in enumerate(path):
                joint[:, col] *= probs[tuple(path[:j])][:, token]
        joint /= np.maximum(joint.sum(axis=1, keepdims=True), 1e-30)
        out += (joint @ values).tolist()
    return out


def value_token_ids(tokenizer, fmt: VerdictFormat) -> dict[int, float] | None:
    """Token id -> raw value, where every verdict value is one token after its opening (Yes/No,
    A/B/C, 1-5): the formats whose verdict distribution can be read at one generated position.
    None otherwise (e.g. 1 and 10 share the token ``1`` where digits are split)."""
    if fmt.template is None:
        return None
    _, paths = value_paths(tokenizer, fmt)
    if any(len(p) != 1 for p in paths.values()):
        return None
    raw = fmt.direct_values()
    return {p[0]: raw[v] for v, p in paths.items()}


def verdict_token_index(fmt: VerdictFormat, tokenizer, values: dict, tokens: list[int]):
    """Where in a judgement's ``tokens`` its last verdict value was written: the index of a
    token in ``values`` (``value_token_ids``), or None (no verdict, or not written as one of the
    format's value tokens)."""
    text = tokenizer.decode(tokens)
    found = list(fmt.pattern.finditer(text))
    if not found:
        return None
    start = found[-1].start(1)
    ends = [len(tokenizer.decode(tokens[: k + 1])) for k in range(len(tokens))]
    k = next((k for k, end in enumerate(ends) if end > start), None)
    # A small vocabulary may tell the values apart by the space before them (" Yes" as
    # " ", "Y", "es" against " N", "o"): then the value's token is the one before.
    if k and tokens[k] not in values and tokens[k - 1] in values:
        k -= 0 if text[ends[k - 1] - 1 : start].strip() else 1
    return k if k is not None and tokens[k] in values else None


def soft_verdict(
    fmt: VerdictFormat,
    tokenizer,
    values: dict[int, float],
    tokens: list[int],
    top: list[dict[int, float]],
) -> float | None:
    """The verdict's expected raw value at the position where the judge wrote it: the
    generated judgement's last verdict is located, and the ``top`` log-probabilities of that
    position (the ``TOP_LOGPROBS`` most likely tokens, as mlx-lm's server reports them) are
    renormalized over the format's values, so P(Yes) after the critique for ``yes_no`` (Zhang
    et al.'s GenRM-CoT score, greedy critique). None without a verdict, or where the value was
    not written as one of the format's value tokens."""
    k = verdict_token_index(fmt, tokenizer, values, tokens)
    if k is None or k >= len(top):
        return None
    probs = {t: math.exp(lp) for t, lp in top[k].items() if t in values}
    total = sum(probs.values())
    return sum(p * values[t] for t, p in probs.items()) / total if total > 0 else None


def soft_scores(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    judgements: list[str | None],
    fmt: VerdictFormat,
    batch_size: int = 16,
    head="auto",
) -> list[float | None] | None:
    """``soft_verdict`` of judgements already written (the evaluate stage's greedy ones), from
    one forward pass over each prompt and its judgement up to the verdict: the model's full
    distribution there, renormalized over the format's values (P(Yes) after the judge's own
    critique). None for a format whose values are not one token each; a row without a verdict
    token gets None."""
    import mlx.nn as nn
    import numpy as np

    values = value_token_ids(tokenizer, fmt)
    if values is None:
        return None
    if isinstance(head, str):
        head = checked_head(model) if isinstance(model, nn.Module) else None
    jobs = []
    for i, (prompt, text) in enumerate(zip(prompt_ids, judgements, strict=True)):
        tokens = tokenizer.encode(text or "", add_special_tokens=False)
        k = verdict_token_index(fmt, tokenizer, values, tokens)
        if k is not None:
            jobs.append((i, list(prompt) + tokens[:k]))
    ids = list(values)
    raw = np.array([values[t] for t in ids])
    out: list[float | None] = [None] * len(prompt_ids)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        probs = _next_token_probs(model, head, [seq for _, seq in chunk])[:, ids]
        for (i, _), p in zip(chunk, probs, strict=True):
            out[i] = float(p @ raw / p.sum()) if p.sum() > 0 else None
    return out
