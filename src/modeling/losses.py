"""The training loss, replacing mlx-lm's ``default_loss`` (each piece says why)."""

from __future__ import annotations

import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from ..data.batches import BatchIterator
from .kernels import exp_nonpositive


def _one_pass_cross_entropy(exp):
    """Per-position cross-entropy, as ``nn.losses.cross_entropy``, but with one ``exp`` pass
    over the logits instead of two.

    MLX differentiates ``logsumexp`` by recomputing the softmax, i.e. a second ``exp`` over every
    logit. On MLX's CPU backend ``exp`` is a scalar single-threaded kernel (~17 ns/element, 4-6x
    numpy's), so over a 16k-32k vocabulary that second pass is ~10% of a LoRA step. Here the
    forward keeps the softmax it already computed and the backward reuses it (same memory: the
    logits, which the stock backward keeps, are no longer needed by it). Used on the CPU only: on
    Metal and CUDA ``exp`` is cheap and the stock fused ``logsumexp`` needs less memory.
    The function returns ``(float32 loss per position, softmax)``; callers use the first.
    """

    @mx.custom_function
    def cross_entropy(logits, targets):
        x = logits.astype(mx.float32)
        peak = mx.stop_gradient(x.max(axis=-1, keepdims=True))
        e = exp(x - peak)
        total = e.sum(axis=-1, keepdims=True)
        picked = mx.take_along_axis(x, targets[..., None], axis=-1)
        ce = (peak + mx.log(total) - picked).squeeze(-1)
        return ce, (e / total).astype(logits.dtype)

    @cross_entropy.vjp
    def _vjp(primals, cotangents, outputs):
        logits, targets = primals
        onehot = mx.arange(logits.shape[-1]) == targets[..., None]
        grad = (outputs[1] - onehot) * cotangents[0][..., None]
        return grad.astype(logits.dtype), mx.zeros_like(targets)

    return cross_entropy


# cpu_kernels "fast": src/modeling/kernels.py's arithmetic exp (MLX's is scalar on the CPU)
_CPU_CROSS_ENTROPY = {
    "fast": _one_pass_cross_entropy(exp_nonpositive),
    "exact": _one_pass_cross_entropy(mx.exp),
}


def token_cross_entropy(logits, targets, kernels: str = "fast"):
    """Cross-entropy per position (float32 on the CPU), by the ``kernels`` the model uses."""
    if mx.default_device() == mx.cpu:
        return _CPU_CROSS_ENTROPY[kernels](logits, targets)[0]
    return nn.losses.cross_entropy(logits, targets)


def masked_loss(model, batch, lengths, positions=None, head=None, kernels="fast"):
    """Mean cross-entropy over the trained tokens of each row.

    ``lengths[:, 0]`` is where the trained part starts (the prompt length with mask_prompt) and
    ``lengths[:, 1]`` the row's length. Target position ``s`` (predicting token ``s``) is trained
    when ``offset <= s < length``. mlx-lm 0.32.2's ``default_loss`` uses ``s <= length``, which
    also trains every row to predict padding token 0 after its last token (its PR 1697 was
    closed unmerged), so this replaces it. With ``head`` (``checked_head(model)``) and
    ``positions`` (from ``BatchIterator(positions=True)``) it computes logits at the trained
    positions only.
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    steps = mx.arange(1, targets.shape[1] + 1)
    mask = mx.logical_and(steps >= lengths[:, 0:1], steps < lengths[:, 1:])
    ntoks = mask.sum()
    if positions is not None and head is not None:
        # Only the trained positions (see checked_head); ``positions`` comes
        # from the batch iterator, padded, and the padding carries no loss.
        hidden = model.model(inputs)
        logits = head(hidden.reshape(-1, hidden.shape[-1])[positions])
        targets = targets.reshape(-1)[positions]
        mask = mx.arange(positions.shape[0]) < ntoks
    else:
        logits = model(inputs)
    ce = token_cross_entropy(logits, targets, kernels) * mask
    return ce.astype(mx.float32).sum() / mx.maximum(ntoks, 1), ntoks


def global_masked_loss(model, batch, lengths, positions=None, head=None, kernels="fast"):
    """``masked_loss`` whose gradient, once mlx-lm averages it over ranks, is the token-weighted
    mean over the *global* batch, as in a single process.

    Under ``mlx.launch`` each rank sees part of the batch, and mlx-lm averages the ranks' mean
    losses: ranks with fewer trained tokens would weigh more than in a single process. Scaling
    each rank's loss by ``world * local_tokens / global_tokens`` makes the averaged gradient (and
    the reported loss) exactly the single-process one. Without distribution it is ``masked_loss``.
    """
    loss, ntoks = masked_loss(model, batch, lengths, positions, head, kernels)
    group = mx.distributed.init()
    if group.size() == 1:
        return loss, ntoks
    total = mx.stop_gradient(mx.distributed.all_sum(ntoks, group=group))
    return loss * (ntoks * group.size() / mx.maximum(total, 1)), ntoks


def mean_loss(
    model, dataset, batch_size: int, max_seq_length: int, head=None, kernels: str = "fast"
) -> float:
    """Token-weighted mean loss over the whole dataset (mlx-lm's ``evaluate``, every batch)."""
    from mlx_lm.tuner.trainer import evaluate

    return evaluate(
        model,
        dataset,
        batch_size=batch_size,
        num_batches=-1,
        max_seq_length=max_seq_length,
        loss=partial(masked_loss, head=head, kernels=kernels),
        iterate_batches=BatchIterator(seed=0, positions=head is not None),
    )


def perplexity(loss: float) -> float:
    """exp(loss), capped at exp(50) so an untrained model's loss still gives a finite metric."""
    return math.exp(min(loss, 50.0))
