"""Batches for training and evaluation: mlx-lm's batching, resumable and covering every row."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from ..modeling.head import trained_positions


class BatchIterator:
    """A drop-in for mlx-lm's ``iterate_batches`` that can start mid-run and covers every row.

    mlx-lm's version draws its epoch order from numpy's global RNG and cannot skip ahead, so a
    resumed run would see different data; and its evaluation drops the last partial batch. Here
    the order of epoch ``e`` is a pure function of ``(seed, e)``, ``start_batch`` skips batches
    already trained on, and evaluation pads the last batch with empty rows that carry no loss.
    Batching is otherwise mlx-lm's: rows sorted by length, one batch per step, but padded to a
    multiple of 8 tokens (mlx-lm: 32k + 1), which saves 5-7% of the tokens at a few more
    compiled step shapes.
    With ``positions`` each batch also carries its ``trained_positions`` for ``masked_loss``.

    ``groups`` (one key per row, e.g. its ``metadata.task_id``; None: a group of its own) keeps a
    group's rows next to each other in that order, so a training batch holds a task's correct
    and wrong response together (``--pair-batches``) instead of, often, one verdict only. Four
    runs: no better across seeds than length order (docs/default-judge.md).

    ``shuffle`` (training only) deals the rows in a seeded random order, then sorts each run of
    ``window`` rows by length: batches mix task families and verdicts (length order makes 71%
    of the default's batches one family and 40% one verdict), and a batch's rows are alike in
    length. On the default's training split, windows of 8 rows (2 batches) keep one-verdict
    batches at chance (12%) and one-family batches at 15%, for 1.17x the tokens of length
    order; windows of one batch (fully random batches) cost 1.37x. With ``groups``, whole groups
    in random order.
    """

    def __init__(
        self,
        seed: int,
        start_batch: int = 0,
        positions: bool = False,
        groups=None,
        shuffle: bool = False,
        window: int = 1,
    ):
        self.seed = seed
        self.start_batch = start_batch
        self.positions = positions
        self.groups = groups
        self.shuffle = shuffle
        self.window = window

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
        lengths = [len(_tokens(dataset[i])) for i in range(len(dataset))]
        order = self.order(lengths, loop, batch_size)
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

    def order(self, lengths: list[int], loop: bool = True, batch_size: int = 1) -> list[int]:
        """Row indices by token length; training with ``shuffle``: in a seeded random order,
        each run of ``window * batch_size`` rows sorted by length. With ``groups`` (training
        only) whole groups by their longest row's key (length or random), a group's rows
        adjacent (padding stays small: a task's rows are alike)."""
        n = len(lengths)
        shuffled = loop and self.shuffle
        rank = np.random.default_rng([self.seed, 1 << 30]).permutation(n) if shuffled else lengths
        if loop and self.groups is not None:
            keys = [(0, g) if g is not None else (1, i) for i, g in enumerate(self.groups)]
            longest: dict = {}
            for i, key in enumerate(keys):
                longest[key] = max(longest.get(key, 0), rank[i])
            return sorted(range(n), key=lambda i: (longest[keys[i]], keys[i], lengths[i], i))
        order = sorted(range(n), key=lambda i: (rank[i], i))
        if not shuffled:
            return order
        run, by_length = self.window * batch_size, lambda i: (lengths[i], i)
        return [i for s in range(0, n, run) for i in sorted(order[s : s + run], key=by_length)]

    def _collate(self, dataset, idx, rows, max_seq_length):
        items = [dataset[j] for j in idx]
        seqs = [_tokens(it) for it in items]
        offsets = [it[1] if isinstance(it, tuple) else 0 for it in items]
        longest = max((len(s) for s in seqs), default=1)
        width = min(8 * math.ceil(longest / 8), max_seq_length)
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
