"""Pieces the train stage hands to mlx-lm's ``trainer.train`` where mlx-lm's own are wrong or
missing. Each says why.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np


@mx.custom_function
def token_cross_entropy(logits, targets):
    """Per-position cross-entropy, as ``nn.losses.cross_entropy``, but with one ``exp`` pass
    over the logits instead of two.

    MLX differentiates ``logsumexp`` by recomputing the softmax, i.e. a second ``exp`` over every
    logit. On MLX's CPU backend ``exp`` is a scalar single-threaded kernel (~17 ns/element, 4-6x
    numpy's), so over a 16k-32k vocabulary that second pass is ~10% of a LoRA step. Here the
    forward keeps the softmax it already computed and the backward reuses it (same memory: the
    logits, which the stock backward keeps, are no longer needed by it). Used on the CPU only: on
    Metal and CUDA ``exp`` is cheap and the stock fused ``logsumexp`` needs less memory.
    Returns ``(float32 loss per position, softmax)``; callers use the first.
    """
    x = logits.astype(mx.float32)
    peak = mx.stop_gradient(x.max(axis=-1, keepdims=True))
    e = mx.exp(x - peak)
    total = e.sum(axis=-1, keepdims=True)
    picked = mx.take_along_axis(x, targets[..., None], axis=-1)
    ce = (peak + mx.log(total) - picked).squeeze(-1)
    return ce, (e / total).astype(logits.dtype)


@token_cross_entropy.vjp
def _token_cross_entropy_vjp(primals, cotangents, outputs):
    logits, targets = primals
    probs = outputs[1]
    onehot = mx.arange(logits.shape[-1]) == targets[..., None]
    grad = (probs - onehot) * cotangents[0][..., None]
    return grad.astype(logits.dtype), mx.zeros_like(targets)


def checked_head(model):
    """Let ``masked_loss`` compute logits only where a token is trained, if this model allows it.

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


def enable_trained_positions_head(model) -> bool:
    """``checked_head``, kept on the model for ``masked_loss``; returns whether it is enabled."""
    head = checked_head(model)
    object.__setattr__(model, "_trained_positions_head", head)  # not a parameter
    return head is not None


def trained_positions(offsets_lengths: np.ndarray, width: int, bucket: int = 32) -> np.ndarray:
    """Flat indices into the ``(rows, width)`` targets that ``masked_loss`` trains, padded with
    0 to a multiple of ``bucket`` (few distinct shapes, so few recompiles of the step)."""
    steps = np.arange(1, width + 1)  # the same mask as masked_loss's
    trained = (steps >= offsets_lengths[:, 0:1]) & (steps < offsets_lengths[:, 1:])
    idx = np.flatnonzero(trained)
    padded = np.zeros(max(bucket, bucket * -(-len(idx) // bucket)), np.int32)
    padded[: len(idx)] = idx
    return padded


def masked_loss(model, batch, lengths, positions=None):
    """Mean cross-entropy over the trained tokens of each row.

    ``lengths[:, 0]`` is where the trained part starts (the prompt length with mask_prompt) and
    ``lengths[:, 1]`` the row's length. Target position ``s`` (predicting token ``s``) is trained
    when ``offset <= s < length``. mlx-lm 0.32.2's ``default_loss`` uses ``s <= length``, which
    also trains every row to predict padding token 0 after its last token (its PR 1697 was
    closed unmerged), so this replaces it. ``positions`` (from ``BatchIterator(positions=True)``)
    lets it compute logits at the trained positions only, once the model allows it.
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    steps = mx.arange(1, targets.shape[1] + 1)
    mask = mx.logical_and(steps >= lengths[:, 0:1], steps < lengths[:, 1:])
    ntoks = mask.sum()
    head = getattr(model, "_trained_positions_head", None)
    if positions is not None and head is not None:
        # Only the trained positions (see enable_trained_positions_head); ``positions`` comes
        # from the batch iterator, padded, and the padding carries no loss.
        hidden = model.model(inputs)
        logits = head(hidden.reshape(-1, hidden.shape[-1])[positions])
        targets = targets.reshape(-1)[positions]
        mask = mx.arange(positions.shape[0]) < ntoks
    else:
        logits = model(inputs)
    if mx.default_device() == mx.cpu:
        ce = token_cross_entropy(logits, targets)[0] * mask
    else:
        ce = nn.losses.cross_entropy(logits, targets) * mask
    return ce.astype(mx.float32).sum() / mx.maximum(ntoks, 1), ntoks


def global_masked_loss(model, batch, lengths, positions=None):
    """``masked_loss`` whose gradient, once mlx-lm averages it over ranks, is the token-weighted
    mean over the *global* batch, as in a single process.

    Under ``mlx.launch`` each rank sees part of the batch, and mlx-lm averages the ranks' mean
    losses: ranks with fewer trained tokens would weigh more than in a single process. Scaling
    each rank's loss by ``world * local_tokens / global_tokens`` makes the averaged gradient (and
    the reported loss) exactly the single-process one. Without distribution it is ``masked_loss``.
    """
    loss, ntoks = masked_loss(model, batch, lengths, positions)
    group = mx.distributed.init()
    if group.size() == 1:
        return loss, ntoks
    total = mx.stop_gradient(mx.distributed.all_sum(ntoks, group=group))
    return loss * (ntoks * group.size() / mx.maximum(total, 1)), ntoks


class BatchIterator:
    """A drop-in for mlx-lm's ``iterate_batches`` that can start mid-run and covers every row.

    mlx-lm's version draws its epoch order from numpy's global RNG and cannot skip ahead, so a
    resumed run would see different data; and its evaluation drops the last partial batch. Here
    the order of epoch ``e`` is a pure function of ``(seed, e)``, ``start_batch`` skips batches
    already trained on, and evaluation pads the last batch with empty rows that carry no loss.
    Batching is otherwise mlx-lm's: rows sorted by length, padded to 32k + 1, one batch per step.
    With ``positions`` each batch also carries its ``trained_positions`` for ``masked_loss``.
    """

    def __init__(self, seed: int, start_batch: int = 0, positions: bool = False):
        self.seed = seed
        self.start_batch = start_batch
        self.positions = positions

    def epoch_order(self, n_batches: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(n_batches)

    def __call__(self, dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        rank, world = (comm_group.rank(), comm_group.size()) if comm_group else (0, 1)
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} must be divisible by the {world} workers")
        if len(dataset) < batch_size and loop:
            raise ValueError(f"dataset has {len(dataset)} rows, fewer than batch size {batch_size}")
        # Sort by token length. (mlx-lm sorts a CacheDataset by ``itemlen``, which is the number
        # of keys in the raw row, not its token count, so its batches are not length-sorted.)
        order = sorted(range(len(dataset)), key=lambda i: len(_tokens(dataset[i])))
        if loop:
            batches = [
                order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)
            ]
        else:
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        local = batch_size // world
        if not loop:
            yield from (
                self._collate(dataset, b[rank::world], local, max_seq_length) for b in batches
            )
            return
        n = len(batches)
        epoch, skip = divmod(self.start_batch, n)
        while True:
            for i in self.epoch_order(n, epoch)[skip:]:
                yield self._collate(dataset, batches[i][rank::world], local, max_seq_length)
            epoch, skip = epoch + 1, 0

    def _collate(self, dataset, idx, rows, max_seq_length):
        items = [dataset[j] for j in idx]
        seqs = [_tokens(it) for it in items]
        offsets = [it[1] if isinstance(it, tuple) else 0 for it in items]
        longest = max((len(s) for s in seqs), default=1)
        width = min(1 + 32 * math.ceil(longest / 32), max_seq_length)
        arr = np.zeros((rows, width), np.int32)
        info = np.zeros((rows, 2), np.int32)  # missing rows: offset 0, length 0 -> no loss
        for j, (seq, off) in enumerate(zip(seqs, offsets, strict=True)):
            n = min(len(seq), max_seq_length)
            arr[j, :n] = seq[:n]
            info[j] = (off, n)
        if self.positions:
            return mx.array(arr), mx.array(info), mx.array(trained_positions(info, width - 1))
        return mx.array(arr), mx.array(info)


def _tokens(item):
    return item[0] if isinstance(item, tuple) else item


def evaluate_full(model, dataset, batch_size: int, max_seq_length: int) -> float:
    """Token-weighted mean loss over the whole dataset (mlx-lm's ``evaluate``, every batch)."""
    from mlx_lm.tuner.trainer import evaluate

    it = BatchIterator(
        seed=0, positions=getattr(model, "_trained_positions_head", None) is not None
    )
    return evaluate(
        model,
        dataset,
        batch_size=batch_size,
        num_batches=-1,
        max_seq_length=max_seq_length,
        loss=masked_loss,
        iterate_batches=it,
    )
