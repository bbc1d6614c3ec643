"""The train stage's loop: mlx-lm's compiled step with gradient accumulation, and at their own
cadence the report, the validation and the checkpoint.

The loop is ours: it replaced mlx-lm's ``trainer.train`` once its loss, batch iterator,
evaluation, checkpoints and UI had all been replaced, and patching ``train`` to keep calling it
made exact resume depend on its report interval. It keeps mlx-lm's contract: a compiled step with
gradient accumulation over ``loss(model, *batch)`` and ``iterate_batches(dataset, batch_size,
max_seq_length, loop, comm_group)``, so mlx-lm's own loss and iterator still plug in.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from ..data.batches import BatchIterator
from ..modeling.losses import global_masked_loss, mean_loss, perplexity
from ..runtime import is_rank0
from .state import Checkpoints, TrainState, WeightAverage


def checkpoint_layers(model) -> None:
    """Recompute each transformer layer's activations in the backward pass instead of keeping
    them. mlx-lm's ``grad_checkpoint`` does this by rewriting ``__call__`` on the layer *class*,
    for every model in the process, for good; here each of this model's layers gets its own
    subclass, so nothing outside this model changes. The computation is mlx-lm's."""
    for layer in model.layers:
        cls = type(layer)

        def call(self, *args, _call=cls.__call__, **kwargs):
            def inner(params, *args, **kwargs):
                self.update(params)
                return _call(self, *args, **kwargs)

            return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

        layer.__class__ = type(cls.__name__, (cls,), {"__call__": call})


def rng_seed(seed: int, iteration: int) -> int:
    """The RNG seed from ``iteration`` on (reseeded at each optimizer update).

    MLX cannot set its global RNG key from a saved value (``mx.random.state`` is read-only), so
    dropout randomness is made a pure function of (seed, iteration) instead: a resumed run draws
    exactly what the uninterrupted run drew.
    """
    return (seed * 1_000_003 + iteration) % 2**31


@dataclass
class LoopSettings:
    iters: int
    batch_size: int
    grad_accum: int
    max_seq_length: int
    seed: int
    grad_checkpoint: bool
    steps_per_report: int
    steps_per_eval: int
    validate_first: bool  # validate the untrained adapter at iteration 0 too
    steps_per_save: int
    shuffle_batches: bool  # batches of rows in a seeded random order, not by length
    shuffle_window: int  # with shuffle_batches: runs of this many batches sorted by length
    cpu_kernels: str  # the model's (src/modeling/kernels.py): the loss uses the same


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite; ``args[0]`` is the iteration."""


class Report:
    """Where the loop's numbers go (the console, curves, DVCLive). It only reports: the loop
    itself validates, saves and reseeds, at its own cadence."""

    def step(self, iteration: int, loss: float, tokens_per_sec: float) -> None: ...

    def train(self, row: dict) -> None: ...

    def valid(self, row: dict) -> None: ...


def compiled_step(model, optimizer, loss_fn, grad_accum: int, compiled: list):
    """mlx-lm's trainer step, unchanged: loss and gradients of one micro-batch, accumulated over
    ``grad_accum`` micro-batches, averaged over ranks and applied at the update."""
    from mlx.nn.utils import average_gradients
    from mlx.utils import tree_map

    loss_value_and_grad = nn.value_and_grad(model, loss_fn)

    @partial(mx.compile, inputs=compiled, outputs=compiled)
    def step(batch, prev_grad, do_update):
        (lvalue, toks), grad = loss_value_and_grad(model, *batch)
        if prev_grad is not None:
            grad = tree_map(lambda x, y: x + y, grad, prev_grad)
        if do_update:
            grad = average_gradients(grad)
            if grad_accum > 1:
                grad = tree_map(lambda x: x / grad_accum, grad)
            optimizer.update(model, grad)
            grad = None
        return lvalue, toks, grad

    return step


def _validate(model, valid_set, s, state, checkpoints, report, head, it: int) -> None:
    """Validate over the whole set at iteration ``it``: the curve, the report, and the best
    adapter kept."""
    loss = mean_loss(model, valid_set, s.batch_size, s.max_seq_length, head, s.cpu_kernels)
    model.train()
    ppl = perplexity(loss)
    row = {"iteration": it, "update": it // s.grad_accum}
    row |= {"valid_loss": round(loss, 6), "valid_ppl": round(ppl, 6)}
    state.valid_curve.append(row)
    state.last_valid_loss = loss
    report.valid(row)
    if ppl < state.best_ppl:
        state.best_ppl, state.best_iter = ppl, it
        if is_rank0():
            checkpoints.save_best(model)


def train_loop(
    model,
    optimizer,
    train_set,
    valid_set,
    s: LoopSettings,
    state: TrainState,
    checkpoints: Checkpoints,
    report: Report,
    average: WeightAverage,
    head=None,
    groups=None,
) -> TrainState:
    """Train from ``state.iteration`` to ``s.iters``: mlx-lm's compiled step with gradient
    accumulation, and at their own cadence the report, the validation over the whole set (with
    the best adapter kept), and the checkpoint. Raises ``NonFiniteLoss`` at the first iteration
    whose loss is NaN or infinite, before it reaches the weights of a checkpoint. ``head``
    (``checked_head(model)``, or None) computes logits at the trained positions only.
    ``groups``: one key per training row, rows of a key batched together (None: each row on
    its own; ``BatchIterator``, which also orders by ``s.shuffle_batches``). ``average``: the
    running mean of the last updates' weights; where it holds any, the model ends with that
    mean, and the last validation is the mean's."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import maybe_set_recommended_wired_limit

    maybe_set_recommended_wired_limit()
    world, rank0 = mx.distributed.init(), is_rank0()
    loss_fn = partial(global_masked_loss, head=head, kernels=s.cpu_kernels)
    if s.grad_checkpoint:
        checkpoint_layers(model)
    compiled = [model.state, optimizer.state, mx.random.state]
    step = compiled_step(model, optimizer, loss_fn, s.grad_accum, compiled)

    validate = partial(_validate, model, valid_set, s, state, checkpoints, report, head)
    if state.iteration == 0 and s.validate_first:
        validate(0)
    batches = BatchIterator(
        s.seed, state.iteration, head is not None, groups, s.shuffle_batches, s.shuffle_window
    )(train_set, s.batch_size, s.max_seq_length, loop=True, comm_group=world)
    mx.random.seed(rng_seed(s.seed, state.iteration))
    model.train()
    grad = None
    for it in range(state.iteration + 1, s.iters + 1):
        batch = next(batches)
        tic = time.perf_counter()
        lvalue, toks, grad = step(batch, grad, it % s.grad_accum == 0)
        mx.eval(compiled, lvalue, toks, grad)
        if mx.get_cache_memory() > 0:  # as mlx-lm's trainer (clear_cache_threshold 0)
            mx.clear_cache()
        seconds = time.perf_counter() - tic
        loss = mx.distributed.all_sum(lvalue, stream=mx.cpu).item() / world.size()
        if not math.isfinite(loss):
            raise NonFiniteLoss(it)
        tokens = int(mx.distributed.all_sum(toks, stream=mx.cpu).item())
        state.add_step(it, loss, tokens, seconds)
        report.step(it, loss, tokens / seconds)
        if it % s.grad_accum == 0:  # dropout draws are a function of the iteration
            mx.random.seed(rng_seed(s.seed, it))
            average.add(model, it // s.grad_accum)
        if it % s.steps_per_report == 0 or it == s.iters:
            learning_rate = float(f"{optimizer.learning_rate.item():.6g}")
            report.train(state.close_window(it // s.grad_accum, learning_rate))
        if it == s.iters and average.count:
            trained = dict(tree_flatten(model.trainable_parameters()))
            model.load_weights(average.mean(model), strict=False)
            validate(it)  # the mean's validation (and best/ if it is the best)
            model.load_weights(list(trained.items()), strict=False)
        elif it % s.steps_per_eval == 0 or it == s.iters:
            validate(it)
        if rank0 and (it % s.steps_per_save == 0 or it == s.iters):
            checkpoints.save(model, optimizer, state, average)
    if average.count:  # the weights the adapter is saved with (the checkpoint keeps the last)
        model.load_weights(average.mean(model), strict=False)
    return state
