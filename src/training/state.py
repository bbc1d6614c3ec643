"""What a training run keeps to resume exactly: ``TrainState`` and its ``Checkpoints``."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import mlx.core as mx

from ..runtime import StageError, atomic_path


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

    def add_step(self, iteration: int, loss: float, tokens: int, seconds: float) -> None:
        self.iteration = iteration
        self.trained_tokens += tokens
        self.train_seconds += seconds
        self.window_loss += loss
        self.window_steps += 1
        self.window_tokens += tokens
        self.window_seconds += seconds

    def close_window(self, update: int, learning_rate: float) -> dict:
        """The train-curve row of the steps since the last report; starts a new window."""
        row = {
            "iteration": self.iteration,
            "update": update,
            "train_loss": round(self.window_loss / self.window_steps, 6),
            "learning_rate": learning_rate,
            "tokens_per_sec": round(self.window_tokens / self.window_seconds, 1),
        }
        self.train_curve.append(row)
        self.window_loss, self.window_steps = 0.0, 0
        self.window_tokens, self.window_seconds = 0, 0.0
        return row


class WeightAverage:
    """The mean of the trainable weights after each of the last ``last`` optimizer updates of a
    run of ``updates`` (tail averaging; 0: off). Its running sum is part of each checkpoint, so
    a resumed run averages what the uninterrupted run averaged. Why the default averages:
    docs/default-judge.md."""

    def __init__(self, last: int, updates: int):
        self.first = updates - last + 1 if last else updates + 1  # first update averaged
        self.sum: dict[str, mx.array] = {}
        self.count = 0

    def add(self, model, update: int) -> None:
        from mlx.utils import tree_flatten

        if update < self.first:
            return
        params = dict(tree_flatten(model.trainable_parameters()))
        self.sum = {k: v.astype(mx.float32) + self.sum.get(k, 0.0) for k, v in params.items()}
        self.count += 1
        mx.eval(self.sum)

    def mean(self, model) -> list[tuple[str, mx.array]]:
        from mlx.utils import tree_flatten

        dtypes = {k: v.dtype for k, v in tree_flatten(model.trainable_parameters())}
        return [(k, (v / self.count).astype(dtypes[k])) for k, v in self.sum.items()]

    def save(self, folder: Path) -> None:
        if self.count:
            count = {"count": str(self.count)}
            mx.save_safetensors(str(folder / "average.safetensors"), self.sum, metadata=count)

    def restore(self, folder: Path) -> None:
        """The running sum saved in the checkpoint ``folder`` (none before the window)."""
        if (folder / "average.safetensors").is_file():
            self.sum, meta = mx.load(str(folder / "average.safetensors"), return_metadata=True)
            self.count = int(meta["count"])


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

    def save(self, model, optimizer, state: TrainState, average: WeightAverage) -> Path:
        from mlx.utils import tree_flatten

        name = f"iter_{state.iteration:07d}"
        with atomic_path(self.root / name, is_dir=True) as tmp:
            _save_adapter(model, tmp)
            average.save(tmp)
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

    def restore(self, model, optimizer, average: WeightAverage) -> TrainState:
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
        state = TrainState(**{f.name: meta[f.name] for f in fields(TrainState) if f.name in meta})
        average.restore(ckpt)
        return state


def _save_adapter(model, folder: Path) -> None:
    from mlx.utils import tree_flatten

    mx.save_safetensors(
        str(folder / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
