"""train stage: QLoRA SFT of the base model into a GenRM judge, on mlx-lm's trainer.

Recipe steps 2-3. Reads the split stage's ``sft_train.jsonl`` / ``sft_valid.jsonl`` and the base
model; writes ``checkpoints/sft_adapter/`` (``adapters.safetensors``, ``adapter_config.json``,
``run_info.json``, ``best/``), resumable checkpoints in ``--state-dir``, ``metrics/train.json``
and the curves ``metrics/curves/{train,valid}.csv``.

Built on mlx-lm: ``load``, ``quantize_model``, ``linear_to_lora_layers``, ``TrainingArgs``,
``trainer.train``, ``evaluate``, ``CacheDataset``, ``TrainingCallback``. Replaced where mlx-lm is
wrong or lacks what we need (see ``src/sft_loop.py``): the loss (mlx-lm trains one padding token
past each row), the batch iterator (resumable, whole validation set), and checkpoints (mlx-lm
saves adapter weights only; ours hold optimizer, iteration, RNG and data position too).

Iterations: ``--iters`` counts micro-batches (mlx-lm's meaning); an optimizer update happens every
``--grad-accum`` iterations; ``--warmup-steps`` and the LR schedule count optimizer updates.

Params: ``model.path``, ``lora.*``, ``train.*``.

    uv run python -m src.train_sft \\
        --model google/gemma-2b-it \\
        --train-data data/processed/sft/sft_train.jsonl \\
        --valid-data data/processed/sft/sft_valid.jsonl \\
        --iters 5000 --batch-size 4 --grad-accum 4 --lora-layers 16 --rank 16 \\
        --learning-rate 2e-4 --warmup-steps 100 --max-seq-length 2048 \\
        --adapter-path checkpoints/sft_adapter --mask-prompt --grad-checkpoint
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .base_model import QLORA_COMPUTE, load_base
from .blas import blas_report, warn_if_slow_blas
from .runtime import (
    StageError,
    add_bool_flag,
    atomic_path,
    check_range,
    is_rank0,
    stage_main,
    write_json,
)
from .sft_data import make_dataset, read_jsonl, validate_rows

OPTIMIZERS = ("adam", "adamw", "sgd", "adafactor")
SCHEDULES = ("constant", "cosine")
# Fields that do not change the training trajectory: a resume may differ in these.
RESUMABLE_FIELDS = {
    "iters",
    "resume",
    "steps_per_report",
    "steps_per_eval",
    "steps_per_save",
    "curves_dir",
    "adapter_path",
    "state_dir",
}


@dataclass
class TrainConfig:
    model: str = "checkpoints/base_model"
    train_data: Path = Path("data/processed/sft/sft_train.jsonl")
    valid_data: Path = Path("data/processed/sft/sft_valid.jsonl")
    adapter_path: Path = Path("checkpoints/sft_adapter")
    state_dir: Path | None = None  # default: <adapter_path>_state
    curves_dir: Path = Path("metrics/curves")
    iters: int = 5000
    batch_size: int = 4
    grad_accum: int = 4
    lora_layers: int = 16
    rank: int = 16
    scale: float = 20.0
    dropout: float = 0.0
    learning_rate: float = 2e-4
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    min_learning_rate: float = 0.0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    max_seq_length: int = 2048
    mask_prompt: bool = False
    grad_checkpoint: bool = False
    bits: int = 4
    group_size: int = 64
    qlora_compute: str = "auto"
    seed: int = 0
    steps_per_report: int = 10
    steps_per_eval: int = 200
    steps_per_save: int = 100
    resume: bool = False

    def __post_init__(self) -> None:
        for name in (
            "iters",
            "batch_size",
            "grad_accum",
            "lora_layers",
            "rank",
            "steps_per_report",
            "steps_per_eval",
            "steps_per_save",
            "max_seq_length",
        ):
            check_range(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        check_range("--learning-rate", self.learning_rate, 0.0, 1.0)
        check_range("--min-learning-rate", self.min_learning_rate, 0.0, self.learning_rate)
        check_range("--warmup-steps", self.warmup_steps, 0)
        check_range("--dropout", self.dropout, 0.0, 0.99)
        check_range("--weight-decay", self.weight_decay, 0.0)
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("lr_schedule", SCHEDULES),
            ("qlora_compute", QLORA_COMPUTE),
        ):
            if getattr(self, name) not in allowed:
                raise StageError(
                    f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, name)!r}."
                )
        if self.bits not in (0, 2, 3, 4, 5, 6, 8):
            raise StageError(
                f"--bits must be 0 (no quantization) or one of 2, 3, 4, 5, 6, 8; got {self.bits}."
            )
        if self.iters % self.grad_accum:
            raise StageError(
                f"--iters ({self.iters}) must be a multiple of --grad-accum "
                f"({self.grad_accum}) so the last micro-batches reach an update."
            )
        if self.steps_per_save % self.grad_accum:
            raise StageError(
                f"--steps-per-save ({self.steps_per_save}) must be a multiple of "
                f"--grad-accum ({self.grad_accum}): checkpoints fall between updates."
            )
        if self.warmup_steps >= self.updates and self.lr_schedule == "cosine":
            raise StageError(
                f"--warmup-steps ({self.warmup_steps}) leaves no updates for the "
                f"cosine decay ({self.updates} updates in all)."
            )
        if self.state_dir is None:
            self.state_dir = self.adapter_path.with_name(self.adapter_path.name + "_state")

    @property
    def updates(self) -> int:
        return self.iters // self.grad_accum

    def fingerprint(self) -> str:
        kept = {k: str(v) for k, v in asdict(self).items() if k not in RESUMABLE_FIELDS}
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def rng_seed(seed: int, iteration: int) -> int:
    """The RNG seed from ``iteration`` on (reseeded at each optimizer update).

    MLX cannot set its global RNG key from a saved value (``mx.random.state`` is read-only), so
    dropout randomness is made a pure function of (seed, iteration) instead: a resumed run draws
    exactly what the uninterrupted run drew.
    """
    return (seed * 1_000_003 + iteration) % 2**31


class NonFiniteLoss(Exception):
    pass


def build_schedule(cfg: TrainConfig):
    """LR per optimizer update: linear warmup from 0, then constant or cosine to min_lr."""
    import mlx.optimizers as optim

    if cfg.lr_schedule == "cosine":
        main = optim.cosine_decay(
            cfg.learning_rate, cfg.updates - cfg.warmup_steps, cfg.min_learning_rate
        )
    else:
        main = optim.linear_schedule(cfg.learning_rate, cfg.learning_rate, 1)
    if cfg.warmup_steps == 0:
        return main
    warmup = optim.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optim.join_schedules([warmup, main], [cfg.warmup_steps])


def build_optimizer(cfg: TrainConfig):
    import mlx.optimizers as optim

    lr = build_schedule(cfg)
    if cfg.optimizer == "adam":
        return optim.Adam(learning_rate=lr)
    if cfg.optimizer == "adamw":
        return optim.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return optim.SGD(learning_rate=lr, weight_decay=cfg.weight_decay)
    return optim.Adafactor(learning_rate=lr)


def load_model(cfg: TrainConfig):
    model, tokenizer, _, info = load_base(cfg.model, cfg.bits, cfg.group_size, cfg.qlora_compute)
    n_layers = len(model.layers)
    if cfg.lora_layers > n_layers:
        raise StageError(
            f"--lora-layers {cfg.lora_layers} exceeds the model's {n_layers} layers. "
            f"Fix: pass --lora-layers {n_layers} or fewer."
        )
    return model, tokenizer, info


def _load_split(path: Path, tokenizer, cfg: TrainConfig, name: str):
    numbered = read_jsonl(path)
    validate_rows(numbered, path)  # errors cite the file's own line numbers (blank lines too)
    rows = [r for _, r in numbered]
    if len(rows) < cfg.batch_size:
        raise StageError(
            f"{path}: {len(rows)} {name} rows, fewer than --batch-size "
            f"{cfg.batch_size}. Fix: lower --batch-size or add data."
        )
    return make_dataset(rows, tokenizer, cfg.mask_prompt), rows


class _SilentUI:
    """Stands in for mlx-lm's TrainUI: our callback reports on its own cadence instead."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, *a):
        pass

    def report_train(self, *a):
        pass

    def report_val(self, *a):
        pass

    def report_save(self, *a):
        pass

    @contextmanager
    def val_task(self, total):
        yield lambda: None


@contextmanager
def _mlx_trainer_patched(model):
    """Silence mlx-lm's per-report console UI, and undo its class-wide grad-checkpoint patch
    (``grad_checkpoint`` rewrites ``type(layer).__call__``, which would stack on a second run)."""
    from mlx_lm.tuner import trainer

    ui, layer_cls = trainer.TrainUI, type(model.layers[0])
    call = layer_cls.__call__
    trainer.TrainUI = _SilentUI
    try:
        yield
    finally:
        trainer.TrainUI = ui
        layer_cls.__call__ = call


def _version(package: str) -> str | None:
    """Installed version, or None: the stages also run where DVC is not installed (a CUDA box,
    the other hosts of an ``mlx.launch`` run)."""
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def _run_info(cfg: TrainConfig, base: dict) -> dict:
    import mlx.core as mx

    source = Path(base["path"]) / "source.json"
    return {
        "model": cfg.model,
        "model_source": json.loads(source.read_text()) if source.is_file() else None,
        "base": base,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "versions": {p: _version(p) for p in ("mlx", "mlx-lm", "dvc")},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(mx.default_device()),
        "blas": blas_report(),
        "world_size": mx.distributed.init().size(),
    }


def _adapter_config(cfg: TrainConfig, base: dict) -> dict:
    """mlx-lm's adapter_config.json keys (so ``mlx_lm.load(adapter_path=)`` and ``fuse`` work),
    plus the base quantization this adapter was trained against."""
    return {
        "fine_tune_type": "lora",
        "num_layers": cfg.lora_layers,
        "lora_parameters": {"rank": cfg.rank, "scale": cfg.scale, "dropout": cfg.dropout},
        "model": cfg.model,
        # what the adapter was trained against: the shipped quantization of a pre-quantized
        # base (never re-quantized), else ours
        "base_quantization": (
            {"bits": cfg.bits, "group_size": cfg.group_size}
            if cfg.bits and not base["prequantized_base"]
            else base["base_quantization"]
        ),
        "mask_prompt": cfg.mask_prompt,
        "max_seq_length": cfg.max_seq_length,
    }


class Checkpoints:
    """Full training state every ``steps_per_save`` iterations, newest two kept, written
    atomically: adapter weights, optimizer state (moments, step, learning rate), iteration and
    curves so far. The RNG needs no file: it is reseeded at every optimizer update from
    ``(seed, iteration)`` (see ``rng_seed``), and the data position follows from the iteration."""

    def __init__(self, root: Path, fingerprint: str):
        self.root, self.fingerprint = Path(root), fingerprint

    def newest(self) -> Path | None:
        done = sorted(p for p in self.root.glob("iter_*") if (p / "state.json").is_file())
        return done[-1] if done else None

    def save(self, it: int, model, optimizer, meta: dict) -> Path:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        with atomic_path(self.root / f"iter_{it:07d}", is_dir=True) as tmp:
            mx.save_safetensors(
                str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
            )
            mx.save_safetensors(
                str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state))
            )
            (tmp / "state.json").write_text(
                json.dumps({**meta, "iteration": it, "fingerprint": self.fingerprint}, indent=1)
            )
        for old in sorted(self.root.glob("iter_*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        return self.root / f"iter_{it:07d}"

    def restore(self, model, optimizer) -> dict:
        import mlx.core as mx
        from mlx.utils import tree_flatten, tree_map_with_path

        ckpt = self.newest()
        if ckpt is None:
            raise StageError(f"--resume: no checkpoint in {self.root}. Fix: run without --resume.")
        meta = json.loads((ckpt / "state.json").read_text())
        if meta["fingerprint"] != self.fingerprint:
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
        return meta


class Progress:
    """A live status line on a terminal; plain lines otherwise. Rank 0 only."""

    def __init__(self, total: int):
        self.total, self.live = total, sys.stderr.isatty() and is_rank0()
        self.quiet = not is_rank0()

    def step(self, it: int, loss: float, tok_s: float) -> None:
        if self.live:
            print(
                f"\r  iter {it}/{self.total}  loss {loss:.3f}  {tok_s:,.0f} tok/s",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.live:
            print("\r\033[K", end="", file=sys.stderr)
        print(text, flush=True)


def _write_curves(root: Path, train_rows: list[dict], valid_rows: list[dict]) -> None:
    for name, rows in (("train", train_rows), ("valid", valid_rows)):
        if not rows:
            continue
        with atomic_path(root / f"{name}.csv") as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def run(cfg: TrainConfig) -> dict:
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from .sft_loop import (
        BatchIterator,
        enable_trained_positions_head,
        evaluate_full,
        global_masked_loss,
    )

    wall0 = time.perf_counter()
    rank0 = is_rank0()
    warn_if_slow_blas()
    mx.random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    model, tokenizer, base = load_model(cfg)
    train_set, train_rows = _load_split(cfg.train_data, tokenizer, cfg, "train")
    valid_set, valid_rows = _load_split(cfg.valid_data, tokenizer, cfg, "validation")
    model.freeze()
    linear_to_lora_layers(
        model, cfg.lora_layers, {"rank": cfg.rank, "scale": cfg.scale, "dropout": cfg.dropout}
    )
    n_trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    sparse_head = enable_trained_positions_head(model)
    optimizer = build_optimizer(cfg)

    data_hash = hashlib.sha256(cfg.train_data.read_bytes() + cfg.valid_data.read_bytes())
    ckpts = Checkpoints(cfg.state_dir, f"{cfg.fingerprint()}-{data_hash.hexdigest()[:16]}")
    progress = Progress(cfg.iters)
    eval_bs = cfg.batch_size

    state = {
        "start": 0,
        "train_curve": [],
        "valid_curve": [],
        "best_ppl": math.inf,
        "best_iter": 0,
        "trained_tokens": 0,
        "train_seconds": 0.0,
    }
    if cfg.resume:
        state.update(ckpts.restore(model, optimizer))
        state["start"] = state.pop("iteration")
        progress.line(f"resumed from iteration {state['start']} ({ckpts.newest()})")
    elif rank0 and cfg.state_dir.exists():
        shutil.rmtree(cfg.state_dir)
    start = state["start"]
    best_dir = cfg.state_dir / "best"

    def validate(it: int) -> float:
        loss = evaluate_full(model, valid_set, eval_bs, cfg.max_seq_length)
        model.train()
        ppl = math.exp(min(loss, 50.0))
        state["valid_curve"].append(
            {
                "iteration": it,
                "update": it // cfg.grad_accum,
                "valid_loss": round(loss, 6),
                "valid_ppl": round(ppl, 6),
            }
        )
        progress.line(f"  iter {it:>6}  valid_loss {loss:.4f}  valid_ppl {ppl:.3f}")
        if ppl < state["best_ppl"]:
            state["best_ppl"], state["best_iter"] = ppl, it
            if rank0:
                with atomic_path(best_dir, is_dir=True) as tmp:
                    mx.save_safetensors(
                        str(tmp / "adapters.safetensors"),
                        dict(tree_flatten(model.trainable_parameters())),
                    )
        return loss

    if start == 0:
        validate(0)

    window = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
    prev_tokens = [0]

    class Reporter(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:
            it = start + info["iteration"]
            loss = info["train_loss"]
            if not math.isfinite(loss):
                raise NonFiniteLoss(it)
            tokens = info["trained_tokens"] - prev_tokens[0]
            prev_tokens[0] = info["trained_tokens"]
            seconds = 1.0 / info["iterations_per_second"]
            window["loss"] += loss
            window["steps"] += 1
            window["tokens"] += tokens
            window["seconds"] += seconds
            state["trained_tokens"] += tokens
            state["train_seconds"] += seconds
            progress.step(it, loss, tokens / seconds)
            if it % cfg.grad_accum == 0:
                mx.random.seed(rng_seed(cfg.seed, it))
            if it % cfg.steps_per_report == 0 or it == cfg.iters:
                mean = window["loss"] / window["steps"]
                tok_s = window["tokens"] / window["seconds"]
                lr = info["learning_rate"]
                state["train_curve"].append(
                    {
                        "iteration": it,
                        "update": it // cfg.grad_accum,
                        "train_loss": round(mean, 6),
                        "learning_rate": float(f"{lr:.6g}"),
                        "tokens_per_sec": round(tok_s, 1),
                    }
                )
                progress.line(
                    f"  iter {it:>6}  update {it // cfg.grad_accum:>5}  train_loss "
                    f"{mean:.4f}  lr {lr:.2e}  {tok_s:,.0f} tok/s"
                )
                window.update(loss=0.0, steps=0, tokens=0, seconds=0.0)
            if it % cfg.steps_per_eval == 0 or it == cfg.iters:
                state["last_valid_loss"] = validate(it)
            if rank0 and (it % cfg.steps_per_save == 0 or it == cfg.iters):
                meta = {k: v for k, v in state.items() if k != "start"}
                ckpts.save(it, model, optimizer, meta)
            if rank0 and (it % cfg.steps_per_report == 0 or it == cfg.iters):
                _write_curves(cfg.curves_dir, state["train_curve"], state["valid_curve"])

    args = TrainingArgs(
        batch_size=cfg.batch_size,
        iters=cfg.iters - start,
        val_batches=-1,
        steps_per_report=1,  # the callback aggregates; per-step reports give an exact NaN iteration
        steps_per_eval=cfg.iters + 1,  # validation runs in the callback, over the whole set
        steps_per_save=cfg.iters + 1,  # mlx-lm's adapter-only saves are replaced by Checkpoints
        max_seq_length=cfg.max_seq_length,
        adapter_file=str(cfg.state_dir / "last_adapters.safetensors"),
        grad_checkpoint=cfg.grad_checkpoint,
        grad_accumulation_steps=cfg.grad_accum,
    )
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    mx.reset_peak_memory()
    mx.random.seed(rng_seed(cfg.seed, start))
    model.train()
    try:
        with _mlx_trainer_patched(model):
            train(
                model=model,
                optimizer=optimizer,
                train_dataset=train_set,
                val_dataset=None,
                args=args,
                loss=global_masked_loss,
                iterate_batches=BatchIterator(cfg.seed, start, positions=sparse_head),
                training_callback=Reporter(),
            )
    except NonFiniteLoss as err:
        last = ckpts.newest()
        raise StageError(
            f"training loss became NaN or infinite at iteration {err.args[0]}; the "
            f"last good checkpoint is {last or 'none (none was saved yet)'}. Fix: "
            "lower --learning-rate or check the data, then --resume or rerun."
        ) from None

    final_loss = state.get("last_valid_loss")
    if final_loss is None:  # e.g. resuming a run that had already finished
        final_loss = validate(cfg.iters)
    if rank0:
        _write_curves(cfg.curves_dir, state["train_curve"], state["valid_curve"])
        with atomic_path(cfg.adapter_path, is_dir=True) as tmp:
            mx.save_safetensors(
                str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
            )
            adapter_config = _adapter_config(cfg, base)
            write_json(tmp / "adapter_config.json", adapter_config)
            info = _run_info(cfg, base)
            info["logits_at"] = "trained positions" if sparse_head else "every position"
            write_json(tmp / "run_info.json", info)
            if (best_dir / "adapters.safetensors").is_file():
                (tmp / "best").mkdir()
                shutil.copy2(best_dir / "adapters.safetensors", tmp / "best")
                write_json(
                    tmp / "best" / "adapter_config.json",
                    {**adapter_config, "iteration": state["best_iter"]},
                )

    first = state["valid_curve"][0]
    last_train = state["train_curve"][-1] if state["train_curve"] else {"train_loss": math.nan}
    return {
        "valid_loss_initial": first["valid_loss"],
        "valid_ppl_initial": first["valid_ppl"],
        "valid_loss": round(final_loss, 6),
        "valid_ppl": round(math.exp(min(final_loss, 50.0)), 6),
        "best_valid_ppl": round(state["best_ppl"], 6),
        "best_valid_iteration": state["best_iter"],
        "train_loss": last_train["train_loss"],
        "iterations": cfg.iters,
        "optimizer_updates": cfg.updates,
        "trained_tokens": state["trained_tokens"],
        "tokens_per_sec": round(state["trained_tokens"] / max(state["train_seconds"], 1e-9), 1),
        "peak_memory_gb": round(mx.get_peak_memory() / 1e9, 4),
        "wall_seconds": round(time.perf_counter() - wall0, 2),
        "trainable_params": int(n_trainable),
        "n_train": len(train_rows),
        "n_valid": len(valid_rows),
    }


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m src.train_sft", description=__doc__.split("\n")[0])
    types = {f.name: f.type for f in fields(TrainConfig)}
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        if types[f.name] in ("bool", bool):
            add_bool_flag(p, flag, default)
        elif f.name in ("train_data", "valid_data", "adapter_path", "curves_dir"):
            p.add_argument(flag, type=Path, default=default)
        elif f.name == "state_dir":
            p.add_argument(
                flag, type=lambda s: None if s in ("", "None", "null") else Path(s), default=None
            )
        else:
            p.add_argument(flag, type=type(default), default=default)
    p.add_argument("--metrics", type=Path, default=Path("metrics/train.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    return stage_main(build_parser(), TrainConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
