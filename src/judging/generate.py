"""Batched generation for judging: the model's own layers and mlx-lm's ``BatchKVCache``, minus
the work a judge does not need.

mlx-lm's ``batch_generate`` (0.32) is a general server loop. For a judge on the CPU it pays for
what we can leave out, each measured in ``benchmarks/bench_generate.py``:
- it decodes at most 32 rows at once (``completion_batch_size``), whatever batch the caller
  asks for;
- the LM head runs at every prompt position, though only the last one is read (SmolLM2's head is
  49k x 576: a fifth of a prefill's work);
- every step normalizes the whole vocabulary (``logsumexp``: a scalar ``exp`` per logit on the
  CPU) to pick the same argmax, and splits it into one array per row.
Here the whole batch decodes together, prompts are prefilled ``PREFILL_ROWS`` at a time with the
head at each row's last position only, greedy decoding takes the argmax of the logits,
log-probabilities are computed only where the caller asks for them (``top``: the soft score) or
samples (``sampler``), and finished rows leave the batch once a quarter of it has finished.
Prompts are left-padded and prefilled into mlx-lm's ``BatchKVCache``; decoding then moves the
keys and values into buffers of fixed capacity (``_Slots``), so that every step has the same
shapes and one compiled step (``mx.compile``) serves them all (on SmolLM2 at batch 32, 9.0 s of
decoding instead of 12.0 uncompiled). Greedy judgements are the same tokens ``batch_generate``
writes (tested on the tiny model; checked on SmolLM2 in the benchmark). Models whose cache is
not a plain ``KVCache`` (sliding windows, SSMs) go to mlx-lm's ``BatchGenerator`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Prefill goes PREFILL_ROWS prompts at a time (as mlx-lm's prefill_batch_size), at most
# PREFILL_TOKENS tokens per call: on 2 CPU cores 100 rows at once prefill at half the speed
# of 8 (benchmarks/README.md).
PREFILL_ROWS = 8
PREFILL_TOKENS = 2048


@dataclass
class Generation:
    """Generated token ids per prompt (the stop token left out, as ``batch_generate`` does),
    with the ``top`` log-probabilities of each step where asked, and token counts for speed."""

    tokens: list[list[int]]
    tops: list[list[dict[int, float]]] | None = None
    watched: list[list[list[float]]] | None = None  # per row, per step: logits at ``watch`` ids
    prompt_tokens: int = 0
    steps: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def plain_kv_cache(model) -> bool:
    """Whether every layer of ``model`` caches plain keys and values (what ``BatchKVCache``
    batches); sliding-window and recurrent layers do not."""
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    if not hasattr(model, "layers"):  # not an mlx-lm model (a test's function of the tokens)
        return False
    return all(type(c) is KVCache for c in make_prompt_cache(model))


def _last_logits(model, head, tokens, cache):
    """Logits at the last position of each row, the head (``checked_head``) applied there only."""
    if head is None:
        return model(tokens, cache=cache)[:, -1, :]
    return head(model.model(tokens, cache=cache)[:, -1, :])


def _prefill(model, head, prompts: list[list[int]]):
    """The rows' caches (``BatchKVCache``, left-padded) and the logits of their last positions.
    Long prompts go in chunks of at most ``PREFILL_TOKENS`` tokens per call (as mlx-lm's
    ``prefill_step_size`` bounds them), so attention scores stay small."""
    import mlx.core as mx
    from mlx_lm.models.cache import BatchKVCache

    width = max(map(len, prompts))
    pad = [width - len(p) for p in prompts]
    x = mx.array([[0] * n + list(p) for n, p in zip(pad, prompts, strict=True)])
    cache = [BatchKVCache(pad) for _ in model.layers]
    chunk = max(1, PREFILL_TOKENS // len(prompts))
    while x.shape[1] > chunk:
        model.model(x[:, :chunk], cache=cache)
        mx.eval([c.state for c in cache])
        x = x[:, chunk:]
    last = _last_logits(model, head, x, cache)
    mx.eval(last, [c.state for c in cache])
    return cache, last


def _pick(logits, sampler, top: int, watch):
    """The next token of each row, where asked its log-probabilities' ``top`` best, and the
    logits at the ``watch`` ids (an array of token ids, or None)."""
    import mlx.core as mx

    watched = None if watch is None else logits[:, watch]
    if sampler is None and not top:
        return mx.argmax(logits, axis=-1), None, None, watched
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    token = mx.argmax(logits, axis=-1) if sampler is None else sampler(logprobs)
    if not top:
        return token, None, None, watched
    best = mx.argpartition(-logprobs, kth=top - 1, axis=-1)[:, :top]
    return token, best, mx.take_along_axis(logprobs, best, axis=-1), watched


class _Slots:
    """One layer's cache as the compiled decode step sees it: keys and values in a buffer of
    fixed capacity (so the step's shapes, hence its compiled graph, stay the same from step to
    step), the new position written at ``pos``, and the rows' mask over the buffer (left padding
    and the positions not written yet are masked). The model's attention layers call it as they
    call mlx-lm's ``BatchKVCache``: ``offset`` (RoPE positions), ``update_and_fetch``,
    ``make_mask``."""

    def __init__(self, keys, values, pos, offset, mask):
        self.keys, self.values, self.pos, self.offset, self.mask = keys, values, pos, offset, mask

    def update_and_fetch(self, keys, values):
        import mlx.core as mx

        self.keys = mx.slice_update(self.keys, keys, self.pos, axes=(2,))
        self.values = mx.slice_update(self.values, values, self.pos, axes=(2,))
        return self.keys, self.values

    def make_mask(self, n: int, **kwargs):
        return self.mask


def _decode_step(model, head):
    """One decode step over fixed-capacity caches, compiled (``mx.compile``): traced once per
    batch shape, then replayed with its element-wise chains (norms, RoPE, SwiGLU, the softmax)
    fused. On SmolLM2 at batch 32 this took decoding from 12.0 s to 9.0 s for the same tokens
    (benchmarks/README.md, "Judging speed"). Compiled per call, not cached per model: a trace
    holds the weights it saw, and a model's weights may change between calls."""
    import mlx.core as mx

    def step(tokens, pos, left, keys, values):
        cols = mx.arange(keys[0].shape[2])
        mask = ((cols[None] >= left[:, None]) & (cols[None] <= pos))[:, None, None, :]
        caches = [_Slots(k, v, pos, pos - left, mask) for k, v in zip(keys, values, strict=True)]
        logits = _last_logits(model, head, tokens[:, None], caches)
        return logits, [c.keys for c in caches], [c.values for c in caches]

    return mx.compile(step)


def _fixed_capacity(cache, room: int):
    """The prefilled ``BatchKVCache`` layers' keys and values in buffers with ``room`` free
    positions after the prompt, the rows' left padding, and the next position to write."""
    import mlx.core as mx

    keys, values = [], []
    for c in cache:
        k, v = c.keys_and_values()
        keys.append(mx.pad(k, [(0, 0), (0, 0), (0, room), (0, 0)]))
        values.append(mx.pad(v, [(0, 0), (0, 0), (0, room), (0, 0)]))
    return keys, values, cache[0].left_padding, keys[0].shape[2] - room


def generate_batch(
    model,
    prompts: list[list[int]],
    max_tokens: int,
    stop: set[int],
    head=None,
    sampler=None,
    top: int = 0,
    watch: list[int] | None = None,
) -> Generation:
    """Generate up to ``max_tokens`` tokens after each prompt, all rows in one batch; a row ends
    at a ``stop`` token (left out) or at ``max_tokens``. ``head``: the model's ``checked_head``
    (None: the whole model, logits at every position). ``sampler``: mlx-lm's (on
    log-probabilities); None is greedy. ``top``: keep each step's ``top`` log-probabilities.
    ``watch``: keep each step's logits at these token ids (e.g. the verdict's values).

    Finished rows stay in the batch (their tokens unread) until a quarter of it has finished;
    then the batch is compacted, and the step compiled again for the smaller shape."""
    import time

    import mlx.core as mx

    watch = None if not watch else mx.array(watch)

    t0 = time.perf_counter()
    cache, logits = None, []
    for start in range(0, len(prompts), PREFILL_ROWS):
        part, last = _prefill(model, head, prompts[start : start + PREFILL_ROWS])
        logits.append(last)
        if cache is None:
            cache = part
        else:  # one batch for decoding: mlx-lm's merge (more left padding where widths differ)
            for c, more in zip(cache, part, strict=True):
                c.extend(more)
    step = _pick(mx.concatenate(logits), sampler, top, watch)
    keys, values, left, pos = _fixed_capacity(cache, max_tokens)
    del cache
    mx.eval(step, keys, values)
    seconds = {"prefill": time.perf_counter() - t0}
    decode = _decode_step(model, head)
    rows = list(range(len(prompts)))  # per batch row: its prompt, None once it has finished
    tokens = [[] for _ in prompts]
    tops = [[] for _ in prompts] if top else None
    watched = [[] for _ in prompts] if watch is not None else None
    for n in range(1, max_tokens + 1):
        if n < max_tokens:  # the next step is computed while this one is read (as mlx-lm does)
            out, keys, values = decode(step[0], mx.array([pos]), left, keys, values)
            nxt = _pick(out, sampler, top, watch)
            mx.async_eval(nxt, keys, values)
            pos += 1
        best = step[1].tolist() if top else None
        scores = step[2].tolist() if top else None
        seen = step[3].tolist() if watch is not None else None
        for i, (row, token) in enumerate(zip(rows, step[0].tolist(), strict=True)):
            if row is None:
                continue
            if token in stop or n == max_tokens:
                rows[i] = None
                if token in stop:
                    continue
            tokens[row].append(token)
            if top:
                tops[row].append(dict(zip(best[i], scores[i], strict=True)))
            if seen is not None:
                watched[row].append(seen[i])
        live = [i for i, row in enumerate(rows) if row is not None]
        if not live:
            break
        step = nxt
        if len(live) <= 3 * len(rows) // 4:  # compact: finished rows stop costing
            idx = mx.array(live)
            keys, values = [k[idx] for k in keys], [v[idx] for v in values]
            left, step = left[idx], tuple(None if a is None else a[idx] for a in step)
            rows = [rows[i] for i in live]
    seconds["decode"] = time.perf_counter() - t0 - seconds["prefill"]
    return Generation(tokens, tops, watched, sum(map(len, prompts)), n, seconds)


def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_tokens: int,
    batch_size: int,
    head=None,
    sampler=None,
    top: int = 0,
    watch: list[int] | None = None,
) -> Generation:
    """``generate_batch`` over ``prompts`` in batches of ``batch_size``, shortest prompts
    first (mlx-lm's ``BatchGenerator`` where the model's cache is not plain keys and values:
    then nothing is ``watched``)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    stop = set(tokenizer.eos_token_ids)
    run = generate_batch if plain_kv_cache(model) else _mlx_lm_batch
    # Prompts of similar length are batched together (less padding); results in input order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    tokens, tops, watched = ([None] * len(prompts) for _ in range(3))
    out = Generation(tokens, tops if top else None, watched if watch else None)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        part = run(model, [prompts[i] for i in rows], max_tokens, stop, head, sampler, top, watch)
        if part.watched is None:
            out.watched = None
        for j, i in enumerate(rows):
            tokens[i] = part.tokens[j]
            tops[i] = part.tops[j] if top else None
            watched[i] = part.watched[j] if part.watched else None
        out.prompt_tokens += part.prompt_tokens
        out.steps += part.steps
        for k, v in part.seconds.items():
            out.seconds[k] = out.seconds.get(k, 0.0) + v
    return out


def _mlx_lm_batch(
    model, prompts, max_tokens, stop, head=None, sampler=None, top=0, watch=None
) -> Generation:
    """mlx-lm's ``BatchGenerator`` as ``batch_generate`` drives it, keeping each generated token
    and, with ``top``, that step's best log-probabilities (what mlx-lm's server reports)."""
    import time

    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator

    t0 = time.perf_counter()
    gen = BatchGenerator(model, stop_tokens=[[t] for t in stop], sampler=sampler)
    uids = gen.insert(prompts, [max_tokens] * len(prompts))
    tokens, tops = {u: [] for u in uids}, {u: [] for u in uids}
    steps = 0
    while responses := gen.next_generated():
        steps += 1
        for r in responses:
            if r.finish_reason != "stop":
                tokens[r.uid].append(r.token)
                if top:
                    best = mx.argpartition(-r.logprobs, kth=top - 1)[:top]
                    tops[r.uid].append(
                        dict(zip(best.tolist(), r.logprobs[best].tolist(), strict=True))
                    )
    gen.close()
    return Generation(
        [tokens[u] for u in uids],
        [tops[u] for u in uids] if top else None,
        None,
        sum(map(len, prompts)),
        steps,
        {"generate": time.perf_counter() - t0},
    )


def judge_texts(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_tokens: int,
    batch_size: int,
    head=None,
    sampler=None,
    fmt=None,
    values: dict[int, float] | None = None,
) -> tuple[list[str], list[float | None] | None]:
    """Each prompt's judgement, and with ``fmt`` and ``values`` (its verdict's token ids ->
    raw values, ``scores.value_token_ids``) its soft score read off the generation itself: the
    values' probabilities where the verdict was written, renormalized over the values (the
    vocabulary's normalizer cancels, so their logits are all it needs). That is the quantity
    ``scores.soft_scores`` computes with a second forward pass over prompt and judgement, which
    this saves. The soft scores are None where the generation cannot give them (mlx-lm's loop)."""
    import math

    from .scores import verdict_token_index

    watch = list(values) if fmt is not None and values else None
    out = generate(model, tokenizer, prompts, max_tokens, batch_size, head, sampler, watch=watch)
    texts = [tokenizer.decode(t) for t in out.tokens]
    if out.watched is None:
        return texts, None
    raw = [values[t] for t in watch]
    soft = []
    for tokens, logits in zip(out.tokens, out.watched, strict=True):
        k = verdict_token_index(fmt, tokenizer, values, tokens)
        if k is None:
            soft.append(None)
            continue
        top = max(logits[k])
        weights = [math.exp(v - top) for v in logits[k]]
        soft.append(sum(w * r for w, r in zip(weights, raw, strict=True)) / sum(weights))
    return texts, soft
