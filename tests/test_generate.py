"""The judge's generation (src/judging/generate.py) writes the tokens mlx-lm's batch_generate
writes, stops where it stops, and keeps the same log-probabilities."""

from __future__ import annotations

import pytest

from src.data.sample import generate_rows


@pytest.fixture(scope="module")
def loaded(tiny_model):
    import mlx.core as mx
    from mlx.utils import tree_map

    from src.judging.scores import chat_prompt_ids
    from src.modeling.head import checked_head
    from src.modeling.load import load_base

    model, tok, _, _ = load_base(str(tiny_model), 0, 64)
    # The tiny model's small random weights repeat one token; larger ones write varied text,
    # so that equal outputs mean something.
    mx.random.seed(0)
    model.update(
        tree_map(
            lambda w: (
                1 + mx.random.normal(w.shape) if w.ndim == 1 else 0.3 * mx.random.normal(w.shape)
            ),
            model.parameters(),
        )
    )
    rows = generate_rows(10, seed=5, long_fraction=0.0, reference=True, verdict="yes_no")
    prompts = chat_prompt_ids(tok, [r["messages"][:-1] for r in rows])
    assert len({len(p) for p in prompts}) > 3  # rows of different lengths: left padding is used
    return model, tok, prompts, checked_head(model)


@pytest.fixture(scope="module")
def loaded_llama(loaded):
    """A tiny Llama (whole decode steps in C) with the same tokenizer and prompts."""
    from conftest import tiny_llama

    from src.modeling.head import checked_head

    _, tok, prompts, _ = loaded
    model = tiny_llama(len(tok.get_vocab()), seed=1)
    return model, tok, prompts, checked_head(model)


DECODERS = {"step": "_StepDecoder", "host": "_HostDecoder", "compiled": "_CompiledDecoder"}


@pytest.fixture(params=list(DECODERS))
def decoder(request, monkeypatch):
    """Each test runs with every decoder, on the model each is chosen for: whole steps in C (a
    Llama, where a compiler is found), attention in C (the tiny Gemma: what other models get
    on the CPU), and the compiled MLX step (everywhere else). Gives the model, tokenizer,
    prompts and head."""
    from src.judging import generate as gen

    chosen = []
    make = gen._CompiledDecoder if request.param == "compiled" else gen._decoder

    def spy(*args):
        chosen.append(make(*args))
        return chosen[-1]

    monkeypatch.setattr(gen, "_decoder", spy)
    yield request.getfixturevalue("loaded_llama" if request.param == "step" else "loaded")
    assert chosen and {type(d).__name__ for d in chosen} == {DECODERS[request.param]}


def test_greedy_tokens_are_batch_generates(decoder, monkeypatch):
    from mlx_lm.generate import batch_generate

    from src.judging import generate as gen

    model, tok, prompts, head = decoder
    theirs = batch_generate(model, tok, prompts, max_tokens=12, return_token_ids=True)
    for batch in (1, 4, 10):
        assert gen.generate(model, tok, prompts, 12, batch, head).tokens == theirs.token_ids
    assert gen.generate(model, tok, prompts, 12, 10).tokens == theirs.token_ids  # no head split
    assert gen.judge_texts(model, tok, prompts, 12, 4, head) == (theirs.texts, None, None)
    monkeypatch.setattr(gen, "PREFILL_TOKENS", 100)  # prompts prefilled 25 tokens at a time
    assert gen.generate(model, tok, prompts, 12, 4, head).tokens == theirs.token_ids
    monkeypatch.setattr(gen, "PREFILL_ROWS", 3)  # 4 groups prefilled apart, decoded as one batch
    assert gen.generate(model, tok, prompts, 12, 10, head).tokens == theirs.token_ids


def test_rows_stop_where_mlx_lm_stops_them(decoder):
    """A stop token ends a row (left out of its tokens); the others go on, and the batch ends
    when the last row does."""
    from src.judging.generate import _mlx_lm_batch, generate_batch

    model, tok, prompts, head = decoder
    free = generate_batch(model, prompts, 12, set(), head).tokens
    assert len({tuple(f) for f in free}) > 3
    # the token most rows write, but not every row
    token = max(
        {t for f in free for t in f} - set.intersection(*map(set, free)),
        key=lambda t: sum(t in f for f in free),
    )
    ours = generate_batch(model, prompts, 12, {token}, head)
    theirs = _mlx_lm_batch(model, prompts, 12, {token})
    assert ours.tokens == theirs.tokens
    for got, f in zip(ours.tokens, free, strict=True):
        assert got == (f[: f.index(token)] if token in f else f)
    stopped = [t for t, f in zip(ours.tokens, free, strict=True) if len(t) < len(f)]
    assert stopped and len(stopped) < len(prompts)  # some rows stopped, some ran to the limit
    whole = generate_batch(model, prompts, 12, set(free[0]) | set(sum(free, [])), head)
    assert whole.tokens == [[]] * len(prompts) and whole.steps == 1  # all stop at once


def test_top_log_probabilities_are_mlx_lms(decoder):
    from src.judging.generate import _mlx_lm_batch, generate_batch

    model, tok, prompts, head = decoder
    ours = generate_batch(model, prompts, 8, set(), head, top=5)
    theirs = _mlx_lm_batch(model, prompts, 8, set(), top=5)
    assert ours.tokens == theirs.tokens
    for mine, want in zip(sum(ours.tops, []), sum(theirs.tops, []), strict=True):
        assert set(mine) == set(want)
        assert [mine[t] for t in want] == pytest.approx(list(want.values()), abs=1e-4)


def test_a_model_that_is_not_plain_kv_goes_to_mlx_lm(loaded, monkeypatch):
    from src.judging import generate as gen

    model, tok, prompts, head = loaded
    assert gen.plain_kv_cache(model)
    calls = []
    monkeypatch.setattr(gen, "plain_kv_cache", lambda m: False)
    monkeypatch.setattr(
        gen, "_mlx_lm_batch", lambda *a, **k: calls.append(a) or gen.Generation([[1]] * len(a[1]))
    )
    assert gen.generate(model, tok, prompts, 4, 4).tokens == [[1]] * len(prompts)
    assert len(calls) == 3
    with pytest.raises(ValueError, match="max_tokens"):
        gen.generate(model, tok, prompts, 0, 4)


def test_a_shared_prefix_is_prefilled_once_with_the_same_caches(loaded):
    """The tokens every prompt starts with are prefilled once; the rows' caches and last logits
    are those of prefilling every prompt whole (left padding moved before the prefix)."""
    import numpy as np

    from src.judging import generate as gen

    model, tok, prompts, head = loaded
    shared = gen.shared_prefix(prompts)
    assert shared > 3 and all(p[:shared] == prompts[0][:shared] for p in prompts)
    assert len({tuple(p[: shared + 1]) for p in prompts}) > 1
    assert gen.shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # each row keeps a token of its own
    assert gen.shared_prefix([[1, 2], [3, 2]]) == 0
    prefix = gen._prefix_cache(model, prompts[0][:shared])
    rows = prompts[:6]
    ours, last = gen._prefill(model, head, rows, prefix)
    whole, want = gen._prefill(model, head, rows)
    np.testing.assert_allclose(np.array(last), np.array(want), rtol=1e-4, atol=1e-4)
    for a, b in zip(ours, whole, strict=True):
        assert a.left_padding.tolist() == b.left_padding.tolist()
        assert a.offset.tolist() == b.offset.tolist() == [len(p) for p in rows]
        for x, y in zip(a.keys_and_values(), b.keys_and_values(), strict=True):
            assert x.shape == y.shape
            for i, pad in enumerate(a.left_padding.tolist()):  # the padding columns are unread
                np.testing.assert_allclose(
                    np.array(x[i, :, pad:]), np.array(y[i, :, pad:]), rtol=1e-4, atol=1e-4
                )


@pytest.mark.parametrize("opening", ["format's", "none"])
def test_direct_scores_read_from_the_prompts_cache_are_direct_scores(decoder, opening):
    """judge_texts' direct scores (the verdict's opening fed to a copy of each prompt's cache)
    are scores.direct_scores' (a second prefill of prompt and opening); with no opening, the
    prompt's own last logits. Feeding the copy leaves the generation unchanged."""
    from dataclasses import replace

    from src.judging import generate as gen
    from src.judging.scores import direct_scores, value_paths, value_token_ids
    from src.judging.verdicts import FORMATS

    model, tok, prompts, head = decoder
    fmt = FORMATS["yes_no"] if opening == "format's" else replace(FORMATS["yes_no"], template="{}")
    values, then = value_token_ids(tok, fmt), value_paths(tok, fmt)[0]
    assert values and bool(then) == (opening == "format's")
    texts, soft, direct = gen.judge_texts(model, tok, prompts, 12, 4, head, None, fmt, values, then)
    assert direct == pytest.approx(direct_scores(model, tok, prompts, fmt, head=head), abs=1e-4)
    assert len({round(d, 3) for d in direct}) > 1  # the rows' scores differ
    assert gen.judge_texts(model, tok, prompts, 12, 4, head, None, fmt, values) == (
        texts,
        soft,
        None,
    )
