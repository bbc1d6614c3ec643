"""The LM head on trained positions only: split a model into body and head where that is exact."""

from __future__ import annotations

import mlx.core as mx
import numpy as np


def checked_head(model):
    """The LM head, for ``masked_loss`` to compute logits only where a token is trained, if this
    model allows it.

    mlx-lm computes the LM head and the softmax at every position. With ``mask_prompt`` most
    positions are prompt (about 70% of a GenRM row), and with Gemma's 256k vocabulary the head
    and its softmax are a large share of a step's time and memory. Splitting the model into its
    body (``model.model``) and head (``lm_head`` or the tied embedding) is architecture
    specific, so the split is checked: on a short batch, ``head(body(x))`` must reproduce
    ``model(x)``; otherwise (e.g. logit soft-capping in the head) every position is computed as
    before. Returns the head, or None where the split does not hold.
    """
    body = getattr(model, "model", None)
    if "lm_head" in model:
        head = model.lm_head
    elif body is not None and hasattr(getattr(body, "embed_tokens", None), "as_linear"):
        head = body.embed_tokens.as_linear
    else:
        head = None
    if head is not None:
        x = mx.array(np.random.default_rng(0).integers(0, 100, (2, 12)), dtype=mx.int32)
        training = model.training
        model.eval()  # no dropout while comparing
        try:
            want, got = model(x), head(body(x))
            ok = got.shape == want.shape and mx.allclose(got, want, rtol=1e-4, atol=1e-4).item()
        except Exception:
            ok = False
        model.train(training)
        head = head if ok else None
    return head


def trained_mask(offsets_lengths: np.ndarray, width: int) -> np.ndarray:
    """``(rows, width)``: which targets ``masked_loss`` trains (the same rule as its mask)."""
    steps = np.arange(1, width + 1)
    return (steps >= offsets_lengths[:, 0:1]) & (steps < offsets_lengths[:, 1:])


def trained_positions(offsets_lengths: np.ndarray, width: int, bucket: int = 32) -> np.ndarray:
    """Flat indices into the ``(rows, width)`` targets that ``masked_loss`` trains, padded with
    0 to a multiple of ``bucket`` (few distinct shapes, so few recompiles of the step)."""
    idx = np.flatnonzero(trained_mask(offsets_lengths, width))
    padded = np.zeros(max(bucket, bucket * -(-len(idx) // bucket)), np.int32)
    padded[: len(idx)] = idx
    return padded
