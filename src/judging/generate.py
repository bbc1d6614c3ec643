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
The tokens every prompt of a batch starts with (``shared_prefix``: on SmolLM2 the chat template's
system turn and the judge prompt's opening, 26 of ~98 tokens) are prefilled once, each row's own
tokens after them (``_AfterPrefix``: batch 32 prefilled in 4.8-5.1 s instead of 8.3-8.6, the same
tokens). Prompts are left-padded into mlx-lm's ``BatchKVCache``; then one of three decoders
(``_decoder``) takes the keys and values:
- on the CPU, for a Llama-family model bound with the fast kernels (float32), ``_StepDecoder``:
  NumPy buffers, each decode step whole in C (``src/modeling/cpu_decode.py``'s ``HostLlama``:
  the matmuls through MKL's sgemm, the element-wise parts vectorized, attention on every core);
- for other such models (e.g. Gemma), ``_HostDecoder``: the same buffers, each layer's decode
  attention in C, the rest in MLX;
- elsewhere (GPU, ``cpu_kernels: exact``, no C compiler), ``_CompiledDecoder``: buffers of fixed
  capacity (``_Slots``), so that every step has the same shapes and one compiled step
  (``mx.compile``) serves them all (on SmolLM2 at batch 32, 9.0 s of decoding instead of 12.0
  uncompiled).
Greedy judgements from each are the same tokens ``batch_generate`` writes (tested on the tiny
model; checked on SmolLM2 in the benchmark). Models whose cache is
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
    direct: list[list[float]] | None = None  # per row: logits at ``watch`` after prompt + ``then``
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


def shared_prefix(prompts: list[list[int]]) -> int:
    """How many first tokens every prompt shares, each keeping at least one of its own (the
    chat template's system turn and the judge prompt's opening, on SmolLM2 26 of ~98)."""
    n = min(map(len, prompts)) - 1
    first = prompts[0]
    shared = 0
    while shared < n and all(p[shared] == first[shared] for p in prompts):
        shared += 1
    return shared


def _prefix_cache(model, tokens: list[int]):
    """Each layer's keys and values for ``tokens``, one row, computed once for all rows."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    cache = [KVCache() for _ in model.layers]
    for start in range(0, len(tokens), PREFILL_TOKENS):
        model.model(mx.array([tokens[start : start + PREFILL_TOKENS]]), cache=cache)
        mx.eval([c.state for c in cache])
    return [(c.keys[..., : c.offset, :], c.values[..., : c.offset, :]) for c in cache]


class _AfterPrefix:
    """One layer's cache, as mlx-lm's attention layers call it, for prefilling rows after a
    prefix they share (``_prefix_cache``): columns ``[0, P)`` hold the prefix's keys and values,
    then each row's own tokens, left-padded; the padding's columns are masked. RoPE positions
    continue from the prefix (``offset``: row i's first column, a pad where ``pad[i]``, is at
    ``P - pad[i]``), so the keys are those of the whole prompt prefilled as one row.
    ``batch_cache`` then moves each row's padding before the prefix: mlx-lm's ``BatchKVCache``
    layout, which the decoders read."""

    def __init__(self, keys, values, pad: list[int]):
        import mlx.core as mx

        rows = (len(pad), *keys.shape[1:])
        self.keys, self.values = mx.broadcast_to(keys, rows), mx.broadcast_to(values, rows)
        self.prefix, self.pad = keys.shape[2], pad
        self.offset = self.prefix - mx.array(pad)

    @property
    def state(self):
        return self.keys, self.values

    def update_and_fetch(self, keys, values):
        import mlx.core as mx

        self.keys = mx.concatenate([self.keys, keys], axis=2)
        self.values = mx.concatenate([self.values, values], axis=2)
        self.offset = self.offset + keys.shape[2]
        return self.keys, self.values

    def make_mask(self, n: int, **kwargs):
        """(rows, 1, n, columns): causal, without each row's padding columns."""
        import mlx.core as mx

        done = self.keys.shape[2]  # asked before this chunk's keys are added
        cols = mx.arange(done + n)
        causal = cols[None] <= mx.arange(done, done + n)[:, None]
        pad = mx.array(self.pad)[:, None]
        hole = (cols[None] >= self.prefix) & (cols[None] < self.prefix + pad)
        return (causal[None] & ~hole[:, None])[:, None]

    def batch_cache(self):
        """A ``BatchKVCache`` holding the same rows left-padded: [padding][prefix][own tokens]."""
        import mlx.core as mx
        from mlx_lm.models.cache import BatchKVCache

        width = self.keys.shape[2]
        t, pad = mx.arange(width)[None], mx.array(self.pad)[:, None]
        src = mx.where(t < pad, self.prefix + t, mx.where(t < pad + self.prefix, t - pad, t))
        src = src[:, None, :, None]
        cache = BatchKVCache(self.pad)
        cache.state = (
            mx.take_along_axis(self.keys, src, axis=2),
            mx.take_along_axis(self.values, src, axis=2),
            width - mx.array(self.pad),
            mx.array(self.pad),
            width,
        )
        return cache


def _fork(cache):
    """A copy of a ``BatchKVCache`` that takes more tokens without changing the original (its
    buffers are sliced, so the copy's first update allocates its own)."""
    from mlx_lm.models.cache import BatchKVCache

    keys, values = cache.keys_and_values()
    fork = BatchKVCache([0])
    fork.state = (keys, values, cache.offset, cache.left_padding, cache._idx)
    return fork


def _logits_after(model, head, cache, last, then: list[int]):
    """Each row's next-token logits after its prompt (whose ``cache`` and ``last`` logits the
    prefill gave) followed by the tokens ``then``; ``cache`` itself is left as it was."""
    import mlx.core as mx

    if not then:
        return last
    x = mx.array([then] * last.shape[0])
    return _last_logits(model, head, x, [_fork(c) for c in cache])


def _prefill(model, head, prompts: list[list[int]], prefix=None):
    """The rows' caches (``BatchKVCache``, left-padded) and the logits of their last positions.
    ``prefix``: ``_prefix_cache`` of the tokens every prompt starts with; then only the rest of
    each prompt is computed here. Long prompts go in chunks of at most ``PREFILL_TOKENS`` tokens
    per call (as mlx-lm's ``prefill_step_size`` bounds them), so attention scores stay small."""
    import mlx.core as mx
    from mlx_lm.models.cache import BatchKVCache

    if prefix is not None:
        prompts = [p[prefix[0][0].shape[2] :] for p in prompts]
    width = max(map(len, prompts))
    pad = [width - len(p) for p in prompts]
    x = mx.array([[0] * n + list(p) for n, p in zip(pad, prompts, strict=True)])
    if prefix is None:
        cache = [BatchKVCache(pad) for _ in model.layers]
    else:
        cache = [_AfterPrefix(k, v, pad) for k, v in prefix]
    chunk = max(1, PREFILL_TOKENS // len(prompts))
    while x.shape[1] > chunk:
        model.model(x[:, :chunk], cache=cache)
        mx.eval([c.state for c in cache])
        x = x[:, chunk:]
    last = _last_logits(model, head, x, cache)
    if prefix is not None:
        cache = [c.batch_cache() for c in cache]
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


class _CompiledDecoder:
    """Decode steps as one compiled MLX graph each (``_decode_step`` over ``_Slots``): any
    model with plain key/value caches, on any device."""

    def __init__(self, model, head, cache, room: int):
        import mlx.core as mx

        self.keys, self.values = [], []
        for c in cache:
            k, v = c.keys_and_values()
            self.keys.append(mx.pad(k, [(0, 0), (0, 0), (0, room), (0, 0)]))
            self.values.append(mx.pad(v, [(0, 0), (0, 0), (0, room), (0, 0)]))
        self.left, self.pos = cache[0].left_padding, self.keys[0].shape[2] - room
        self.step = _decode_step(model, head)

    def state(self):
        return self.keys, self.values

    def __call__(self, tokens):
        import mlx.core as mx

        pos = mx.array([self.pos])
        logits, self.keys, self.values = self.step(tokens, pos, self.left, *self.state())
        self.pos += 1
        return logits

    def keep(self, rows: list[int]):
        import mlx.core as mx

        idx = mx.array(rows)
        self.keys, self.values = [k[idx] for k in self.keys], [v[idx] for v in self.values]
        self.left = self.left[idx]


class _HostDecoder:
    """Decode steps with each layer's attention in C (``src/modeling/cpu_decode.py``) over
    NumPy caches, the rest in MLX: a model bound with the fast kernels, float32, on the CPU.
    Not compiled: every layer hands its queries, keys and values to C, so the step is evaluated
    layer by layer (on SmolLM2 at batch 32 and 100, 1.05-1.4x the compiled step's decode
    tokens/s over six runs; as fast or a little slower at batch 1 and 8: benchmarks/README.md)."""

    def __init__(self, model, head, cache, room: int):
        import numpy as np

        self.model, self.head, self.keys, self.values = model, head, [], []
        for c in cache:
            for arrays, part in zip((self.keys, self.values), c.keys_and_values(), strict=True):
                part = np.asarray(part)
                buf = np.zeros(part.shape[:2] + (part.shape[2] + room, part.shape[3]), np.float32)
                buf[:, :, : part.shape[2]] = part
                arrays.append(buf)
        self.left = np.array(cache[0].left_padding, np.int32)
        self.pos = self.keys[0].shape[2] - room

    def state(self):
        return ()

    def __call__(self, tokens):
        import mlx.core as mx

        from ..modeling.cpu_decode import HostKV

        offset = mx.array(self.pos - self.left)
        caches = [
            HostKV(k, v, self.left, self.pos, offset)
            for k, v in zip(self.keys, self.values, strict=True)
        ]
        logits = _last_logits(self.model, self.head, tokens[:, None], caches)
        self.pos += 1
        return logits

    def keep(self, rows: list[int]):
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.left = self.left[rows]


class _StepDecoder(_HostDecoder):
    """Whole decode steps in C (``cpu_decode.HostLlama``: every layer in one call, the matmuls
    through the sgemm MLX calls) over the same NumPy caches: a Llama-family model in float32
    on the CPU. At batch 32 on SmolLM2 a step took 116 ms against 178 ms for ``_HostDecoder``
    (benchmarks/README.md, "Judging speed")."""

    def __init__(self, host, cache, room: int):
        super().__init__(None, None, cache, room)
        self.host = host

    def __call__(self, tokens):
        import mlx.core as mx
        import numpy as np

        logits = self.host.step(np.asarray(tokens), self.keys, self.values, self.left, self.pos)
        self.pos += 1
        return mx.array(logits)


def _decoder(model, head, cache, room: int):
    """The fastest decoder the model and machine allow: whole steps in C (a Llama-family model),
    attention in C (any model bound with the fast kernels), else one compiled MLX graph."""
    import mlx.core as mx

    from ..modeling import cpu_decode
    from ..modeling.kernels import attention_bound

    host = (
        mx.default_device() == mx.cpu
        and cache[0].keys is not None
        and cache[0].keys.dtype == mx.float32
        and attention_bound(model)
        and cpu_decode.library() is not None
    )
    if not host:
        return _CompiledDecoder(model, head, cache, room)
    llama = cpu_decode.HostLlama.build(model)
    if llama is not None:
        return _StepDecoder(llama, cache, room)
    return _HostDecoder(model, head, cache, room)


def _prefill_all(model, head, prompts: list[list[int]]):
    """All rows' caches, merged into one batch for decoding, and their last logits: the shared
    prefix once (``_prefix_cache``), then ``PREFILL_ROWS`` prompts at a time (``_prefill``)."""
    import mlx.core as mx

    cache, logits = None, []
    shared = shared_prefix(prompts) if len(prompts) > 1 else 0
    prefix = _prefix_cache(model, prompts[0][:shared]) if shared else None
    for start in range(0, len(prompts), PREFILL_ROWS):
        part, last = _prefill(model, head, prompts[start : start + PREFILL_ROWS], prefix)
        logits.append(last)
        if cache is None:
            cache = part
        else:  # one batch for decoding: mlx-lm's merge (more left padding where widths differ)
            for c, more in zip(cache, part, strict=True):
                c.extend(more)
    return cache, mx.concatenate(logits)


def generate_batch(
    model,
    prompts: list[list[int]],
    max_tokens: int,
    stop: set[int],
    head=None,
    sampler=None,
    top: int = 0,
    watch: list[int] | None = None,
    then: list[int] | None = None,
) -> Generation:
    """Generate up to ``max_tokens`` tokens after each prompt, all rows in one batch; a row ends
    at a ``stop`` token (left out) or at ``max_tokens``. ``head``: the model's ``checked_head``
    (None: the whole model, logits at every position). ``sampler``: mlx-lm's (on
    log-probabilities); None is greedy. ``top``: keep each step's ``top`` log-probabilities.
    ``watch``: keep each step's logits at these token ids (e.g. the verdict's values).
    ``then`` (with ``watch``): also the logits at ``watch`` after each prompt followed by these
    tokens (the verdict's opening: the direct score), from a copy of the prompt's cache, so the
    prompt is not computed a second time.

    Finished rows stay in the batch (their tokens unread) until a quarter of it has finished;
    then the batch is compacted, and the step compiled again for the smaller shape."""
    import time

    import mlx.core as mx

    watch = None if not watch else mx.array(watch)

    t0 = time.perf_counter()
    cache, logits = _prefill_all(model, head, prompts)
    direct = None
    if then is not None and watch is not None:
        direct = _logits_after(model, head, cache, logits, then)[:, watch].astype(mx.float32)
        mx.eval(direct)
    step = _pick(logits, sampler, top, watch)
    decode = _decoder(model, head, cache, max_tokens)
    del cache
    mx.eval(step, decode.state())
    seconds = {"prefill": time.perf_counter() - t0}
    rows = list(range(len(prompts)))  # per batch row: its prompt, None once it has finished
    tokens = [[] for _ in prompts]
    tops = [[] for _ in prompts] if top else None
    watched = [[] for _ in prompts] if watch is not None else None
    for n in range(1, max_tokens + 1):
        if n < max_tokens:  # the next step is computed while this one is read (as mlx-lm does)
            nxt = _pick(decode(step[0]), sampler, top, watch)
            mx.async_eval(nxt, decode.state())
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
            decode.keep(live)
            step = tuple(None if a is None else a[idx] for a in step)
            rows = [rows[i] for i in live]
    seconds["decode"] = time.perf_counter() - t0 - seconds["prefill"]
    direct = None if direct is None else direct.tolist()
    return Generation(tokens, tops, watched, direct, sum(map(len, prompts)), n, seconds)


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
    then: list[int] | None = None,
) -> Generation:
    """``generate_batch`` over ``prompts`` in batches of ``batch_size``, shortest prompts
    first (mlx-lm's ``BatchGenerator`` where the model's cache is not plain keys and values:
    then nothing is ``watched`` and there is no ``direct``)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    stop = set(tokenizer.eos_token_ids)
    run = generate_batch if plain_kv_cache(model) else _mlx_lm_batch
    # Prompts of similar length are batched together (less padding); results in input order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    tokens, tops, watched, direct = ([None] * len(prompts) for _ in range(4))
    out = Generation(
        tokens,
        tops if top else None,
        watched if watch else None,
        direct if watch and then is not None else None,
    )
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        part = run(
            model, [prompts[i] for i in rows], max_tokens, stop, head, sampler, top, watch, then
        )
        if part.watched is None:
            out.watched = None
        if part.direct is None:
            out.direct = None
        for j, i in enumerate(rows):
            tokens[i] = part.tokens[j]
            tops[i] = part.tops[j] if top else None
            watched[i] = part.watched[j] if part.watched else None
            direct[i] = part.direct[j] if part.direct else None
        out.prompt_tokens += part.prompt_tokens
        out.steps += part.steps
        for k, v in part.seconds.items():
            out.seconds[k] = out.seconds.get(k, 0.0) + v
    return out


def _mlx_lm_batch(
    model, prompts, max_tokens, stop, head=None, sampler=None, top=0, watch=None, then=None
) -> Generation:
    """mlx-lm's ``BatchGenerator`` as ``batch_generate`` drives it, keeping each generated token
    and, with ``top``, that step's best log-probabilities (what mlx-lm's server reports);
    ``watch`` and ``then`` are not read from it."""
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
    then: list[int] | None = None,
) -> tuple[list[str], list[float | None] | None, list[float] | None]:
    """Each prompt's judgement, and with ``fmt`` and ``values`` (its verdict's token ids ->
    raw values, ``scores.value_token_ids``) its soft score read off the generation itself: the
    values' probabilities where the verdict was written, renormalized over the values (the
    vocabulary's normalizer cancels, so their logits are all it needs). That is the quantity
    ``scores.soft_scores`` computes with a second forward pass over prompt and judgement, which
    this saves. With ``then`` (the verdict's opening, ``scores.value_paths``) also the direct
    score, ``scores.direct_scores``'s quantity, from the prompt's own cache instead of a second
    prefill (on the default's 100 validation rows 56 s of evaluate). Soft and direct scores are
    None where the generation cannot give them (mlx-lm's loop)."""
    from .scores import verdict_token_index

    watch = list(values) if fmt is not None and values else None
    out = generate(
        model, tokenizer, prompts, max_tokens, batch_size, head, sampler, watch=watch, then=then
    )
    texts = [tokenizer.decode(t) for t in out.tokens]
    if out.watched is None:
        return texts, None, None
    raw = [values[t] for t in watch]
    soft = []
    for tokens, logits in zip(out.tokens, out.watched, strict=True):
        k = verdict_token_index(fmt, tokenizer, values, tokens)
        soft.append(None if k is None else _expected(logits[k], raw))
    direct = None if out.direct is None else [_expected(d, raw) for d in out.direct]
    return texts, soft, direct


def _expected(logits: list[float], raw: list[float]) -> float:
    """The values' mean under the softmax of their logits (renormalized over the values)."""
    import math

    top = max(logits)
    weights = [math.exp(v - top) for v in logits]
    return sum(w * r for w, r in zip(weights, raw, strict=True)) / sum(weights)
