"""The train stage's loop and the pieces it is made of, each replacing an mlx-lm piece that is
wrong or missing for us (each says why).

The loop is ours (``train_loop``): it replaced mlx-lm's ``trainer.train`` once its loss, batch
iterator, evaluation, checkpoints and UI had all been replaced, and patching ``train`` to keep
calling it made exact resume depend on its report interval. It keeps mlx-lm's contract: a compiled
step with gradient accumulation over ``loss(model, *batch)`` and ``iterate_batches(dataset,
batch_size, max_seq_length, loop, comm_group)``, so mlx-lm's own loss and iterator still plug in.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .cpu_kernels import exp_nonpositive
from .runtime import StageError, atomic_path, is_rank0


@mx.custom_function
def token_cross_entropy(logits, targets):
    """Per-position cross-entropy, as ``nn.losses.cross_entropy``, but with one ``exp`` pass
    over the logits instead of two, and that one vectorized.

    MLX differentiates ``logsumexp`` by recomputing the softmax, i.e. a second ``exp`` over every
    logit. On MLX's CPU backend ``exp`` is a scalar single-threaded kernel (~17 ns/element, 4-6x
    numpy's), so over a 16k-32k vocabulary that second pass is ~10% of a LoRA step. Here the
    forward keeps the softmax it already computed and the backward reuses it (same memory: the
    logits, which the stock backward keeps, are no longer needed by it), and the ``exp`` is
    src/cpu_kernels.py's arithmetic one. Used on the CPU only: on Metal and CUDA ``exp`` is cheap
    and the stock fused ``logsumexp`` needs less memory.
    Returns ``(float32 loss per position, softmax)``; callers use the first.
    """
    x = logits.astype(mx.float32)
    peak = mx.stop_gradient(x.max(axis=-1, keepdims=True))
    e = exp_nonpositive(x - peak)  # MLX's exp on the CPU is scalar: src/cpu_kernels.py
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


def masked_loss(model, batch, lengths, positions=None, head=None):
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
    if mx.default_device() == mx.cpu:
        ce = token_cross_entropy(logits, targets)[0] * mask
    else:
        ce = nn.losses.cross_entropy(logits, targets) * mask
    return ce.astype(mx.float32).sum() / mx.maximum(ntoks, 1), ntoks


def global_masked_loss(model, batch, lengths, positions=None, head=None):
    """``masked_loss`` whose gradient, once mlx-lm averages it over ranks, is the token-weighted
    mean over the *global* batch, as in a single process.

    Under ``mlx.launch`` each rank sees part of the batch, and mlx-lm averages the ranks' mean
    losses: ranks with fewer trained tokens would weigh more than in a single process. Scaling
    each rank's loss by ``world * local_tokens / global_tokens`` makes the averaged gradient (and
    the reported loss) exactly the single-process one. Without distribution it is ``masked_loss``.
    """
    loss, ntoks = masked_loss(model, batch, lengths, positions, head)
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


def evaluate_full(model, dataset, batch_size: int, max_seq_length: int, head=None) -> float:
    """Token-weighted mean loss over the whole dataset (mlx-lm's ``evaluate``, every batch)."""
    from mlx_lm.tuner.trainer import evaluate

    return evaluate(
        model,
        dataset,
        batch_size=batch_size,
        num_batches=-1,
        max_seq_length=max_seq_length,
        loss=partial(masked_loss, head=head),
        iterate_batches=BatchIterator(seed=0, positions=head is not None),
    )


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
    steps_per_save: int


@dataclass
class TrainState:
    """Everything a resumed run needs besides weights and optimizer state; saved in each
    checkpoint. The report window (losses since the last report) is here too, so a run resumed
    between two reports reports what the uninterrupted run reported, at any report interval."""

    iteration: int = 0
    best_ppl: float = math.inf
    best_iter: int = 0
    trained_tokens: int = 0
    train_seconds: float = 0.0
    last_valid_loss: float | None = None
    window_loss: float = 0.0
    window_steps: int = 0
    window_tokens: int = 0
    window_seconds: float = 0.0
    train_curve: list[dict] = field(default_factory=list)
    valid_curve: list[dict] = field(default_factory=list)


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite; ``args[0]`` is the iteration."""


class Checkpoints:
    """Full training state every ``steps_per_save`` iterations, newest two kept, written
    atomically: adapter weights, optimizer state (moments, step, learning rate) and the
    ``TrainState``. The RNG needs no file: it is reseeded at every optimizer update from
    ``(seed, iteration)`` (see ``rng_seed``), and the data position follows from the iteration.
    The best-validation adapter is kept in ``best/``."""

    def __init__(self, root: Path, fingerprint: str):
        self.root, self.fingerprint = Path(root), fingerprint

    def newest(self) -> Path | None:
        done = sorted(p for p in self.root.glob("iter_*") if (p / "state.json").is_file())
        return done[-1] if done else None

    def save(self, model, optimizer, state: TrainState) -> Path:
        from mlx.utils import tree_flatten

        name = f"iter_{state.iteration:07d}"
        with atomic_path(self.root / name, is_dir=True) as tmp:
            _save_adapter(model, tmp)
            mx.save_safetensors(
                str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state))
            )
            meta = {**asdict(state), "fingerprint": self.fingerprint}
            (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        for old in sorted(self.root.glob("iter_*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        return self.root / name

    def save_best(self, model) -> None:
        with atomic_path(self.root / "best", is_dir=True) as tmp:
            _save_adapter(model, tmp)

    def restore(self, model, optimizer) -> TrainState:
        from mlx.utils import tree_flatten, tree_map_with_path

        ckpt = self.newest()
        if ckpt is None:
            raise StageError(f"--resume: no checkpoint in {self.root}. Fix: run without --resume.")
        meta = json.loads((ckpt / "state.json").read_text())
        if meta.get("fingerprint") != self.fingerprint:
            raise StageError(
                f"--resume: {ckpt} was written with other settings or data "
                "(fingerprint mismatch). Fix: resume with the same params, or run "
                "without --resume to start over."
            )
        model.load_weights(str(ckpt / "adapters.safetensors"), strict=False)
        saved = mx.load(str(ckpt / "optimizer.safetensors"))
        optimizer.init(model.trainable_parameters())
        if set(saved) != {k for k, _ in tree_flatten(optimizer.state)}:
            raise StageError(f"--resume: optimizer state in {ckpt} does not match the model.")
        optimizer.state = tree_map_with_path(lambda path, _: saved[path], optimizer.state)
        return TrainState(**{f.name: meta[f.name] for f in fields(TrainState) if f.name in meta})


def _save_adapter(model, folder: Path) -> None:
    from mlx.utils import tree_flatten

    mx.save_safetensors(
        str(folder / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )


class Report:
    """Where the loop's numbers go (the console, curves, DVCLive). It only reports: the loop
    itself validates, saves and reseeds, at its own cadence."""

    def step(self, iteration: int, loss: float, tokens_per_sec: float) -> None: ...

    def train(self, row: dict) -> None: ...

    def valid(self, row: dict) -> None: ...

    def saved(self, state: TrainState) -> None: ...


def train_loop(
    model,
    optimizer,
    train_set,
    valid_set,
    s: LoopSettings,
    state: TrainState,
    checkpoints: Checkpoints,
    report: Report,
    head=None,
) -> TrainState:
    """Train from ``state.iteration`` to ``s.iters``: mlx-lm's compiled step with gradient
    accumulation, and at their own cadence the report, the validation over the whole set (with
    the best adapter kept), and the checkpoint. Raises ``NonFiniteLoss`` at the first iteration
    whose loss is NaN or infinite, before it reaches the weights of a checkpoint. ``head``
    (``checked_head(model)``, or None) computes logits at the trained positions only."""
    from mlx.nn.utils import average_gradients
    from mlx.utils import tree_map
    from mlx_lm.utils import maybe_set_recommended_wired_limit

    maybe_set_recommended_wired_limit()
    world, rank0 = mx.distributed.init(), is_rank0()
    loss_value_and_grad = nn.value_and_grad(model, partial(global_masked_loss, head=head))
    if s.grad_checkpoint:
        checkpoint_layers(model)
    compiled = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=compiled, outputs=compiled)
    def step(batch, prev_grad, do_update):  # mlx-lm's trainer step, unchanged
        (lvalue, toks), grad = loss_value_and_grad(model, *batch)
        if prev_grad is not None:
            grad = tree_map(lambda x, y: x + y, grad, prev_grad)
        if do_update:
            grad = average_gradients(grad)
            if s.grad_accum > 1:
                grad = tree_map(lambda x: x / s.grad_accum, grad)
            optimizer.update(model, grad)
            grad = None
        return lvalue, toks, grad

    def validate(it: int) -> None:
        loss = evaluate_full(model, valid_set, s.batch_size, s.max_seq_length, head)
        model.train()
        ppl = math.exp(min(loss, 50.0))
        row = {"iteration": it, "update": it // s.grad_accum}
        row |= {"valid_loss": round(loss, 6), "valid_ppl": round(ppl, 6)}
        state.valid_curve.append(row)
        state.last_valid_loss = loss
        report.valid(row)
        if ppl < state.best_ppl:
            state.best_ppl, state.best_iter = ppl, it
            if rank0:
                checkpoints.save_best(model)

    if state.iteration == 0:
        validate(0)
    batches = BatchIterator(s.seed, state.iteration, positions=head is not None)(
        train_set, s.batch_size, s.max_seq_length, loop=True, comm_group=world
    )
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
        state.iteration = it
        state.trained_tokens += tokens
        state.train_seconds += seconds
        state.window_loss += loss
        state.window_steps += 1
        state.window_tokens += tokens
        state.window_seconds += seconds
        report.step(it, loss, tokens / seconds)
        if it % s.grad_accum == 0:  # dropout draws are a function of the iteration
            mx.random.seed(rng_seed(s.seed, it))
        if it % s.steps_per_report == 0 or it == s.iters:
            row = {
                "iteration": it,
                "update": it // s.grad_accum,
                "train_loss": round(state.window_loss / state.window_steps, 6),
                "learning_rate": float(f"{optimizer.learning_rate.item():.6g}"),
                "tokens_per_sec": round(state.window_tokens / state.window_seconds, 1),
            }
            state.train_curve.append(row)
            report.train(row)
            state.window_loss, state.window_steps = 0.0, 0
            state.window_tokens, state.window_seconds = 0, 0.0
        if it % s.steps_per_eval == 0 or it == s.iters:
            validate(it)
        if rank0 and (it % s.steps_per_save == 0 or it == s.iters):
            checkpoints.save(model, optimizer, state)
            report.saved(state)
    return state
