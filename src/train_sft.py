"""train stage: QLoRA SFT of the base model into a GenRM judge, with mlx-lm's pieces.

Recipe steps 2-3. Reads the split stage's ``sft_train.jsonl`` / ``sft_valid.jsonl`` and the base
model; writes ``checkpoints/sft_adapter/`` (``adapters.safetensors``, ``adapter_config.json``,
``run_info.json``, ``best/``), resumable checkpoints in ``--state-dir``, ``metrics/train.json``
and the curves through DVCLive in ``metrics/live/`` (``plots/metrics/*.tsv``, ``metrics.json``).

Built on mlx-lm: ``load``, ``quantize_model``, ``linear_to_lora_layers``, ``evaluate``,
``CacheDataset`` and its compiled training step. The loop is ours (``src/training/``), with
what mlx-lm gets wrong or lacks for us replaced there, each saying why: the loss (mlx-lm trains one
padding token past each row), the batch iterator (resumable, whole validation set), checkpoints
(mlx-lm saves adapter weights only; ours hold optimizer, iteration, RNG and data position too).

Iterations: ``--iters`` counts micro-batches (mlx-lm's meaning); an optimizer update happens every
``--grad-accum`` iterations; ``--warmup-steps`` and the LR schedule count optimizer updates.

Params: ``qlora.*``, ``lora.*``, ``train.*``.

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
import hashlib
import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import paths
from .data.sft import make_dataset, read_jsonl, task_id, validate_rows
from .judging.card import JudgeCard
from .modeling.blas import blas_report, warn_if_slow_blas
from .modeling.head import checked_head
from .modeling.kernels import KERNELS, kernels_arg
from .modeling.load import QLORA_COMPUTE, load_base
from .modeling.losses import perplexity
from .runtime import (
    StageError,
    arg,
    atomic_path,
    check_choice,
    check_range,
    config_parser,
    is_rank0,
    package_version,
    stage_main,
    write_json,
)
from .training.loop import LoopSettings, NonFiniteLoss, train_loop
from .training.report import Progress, StageReport
from .training.state import Checkpoints, TrainState, WeightAverage

OPTIMIZERS = ("adam", "adamw", "sgd", "adafactor")
SCHEDULES = ("constant", "cosine")
# Fields that do not change the training trajectory: a resume may differ in these.
RESUMABLE_FIELDS = {
    "iters",
    "resume",
    "steps_per_report",
    "steps_per_eval",
    "steps_per_save",
    "validate_first",
    "live_dir",
    "adapter_path",
    "state_dir",
}


@dataclass
class TrainConfig:
    model: str = arg(paths.BASE, "the base model (a folder, or a Hub id)")
    train_data: Path = arg(paths.TRAIN_SPLIT, "training rows (chat, completions or text JSONL)")
    valid_data: Path = arg(paths.VALID_SPLIT, "validation rows, evaluated whole")
    adapter_path: Path = arg(paths.ADAPTER, "the adapter folder written at the end")
    state_dir: Path | None = arg(None, "resumable checkpoints (default: <adapter-path>_state)")
    live_dir: Path = arg(paths.LIVE, "DVCLive's curves and live metrics")
    iters: int = arg(5000, "micro-batches to train (mlx-lm's meaning)")
    batch_size: int = arg(4, "rows per micro-batch")
    grad_accum: int = arg(4, "micro-batches per optimizer update")
    lora_layers: int = arg(16, "LoRA on the last N transformer layers")
    rank: int = arg(16, "LoRA rank")
    scale: float = arg(20.0, "LoRA scale")
    dropout: float = arg(0.0, "LoRA dropout")
    learning_rate: float = arg(2e-4, "peak learning rate")
    warmup_steps: int = arg(100, "linear warmup, in optimizer updates")
    lr_schedule: str = arg("constant", "after warmup", choices=SCHEDULES)
    min_learning_rate: float = arg(0.0, "where the cosine schedule or the decay ends")
    decay_steps: int = arg(
        0, "the last N updates decay linearly to --min-learning-rate (constant schedule only)"
    )
    optimizer: str = arg("adam", "optimizer", choices=OPTIMIZERS)
    weight_decay: float = arg(0.0, "weight decay (adamw, sgd)")
    max_seq_length: int = arg(2048, "rows are cut to this many tokens")
    mask_prompt: bool = arg(False, "train on the assistant's tokens only")
    grad_checkpoint: bool = arg(False, "recompute activations in the backward pass (less memory)")
    bits: int = arg(4, "quantize the base to this many bits (QLoRA); 0: plain LoRA")
    group_size: int = arg(64, "quantization group size")
    qlora_compute: str = arg(
        "auto", "how 4-bit layers compute (auto: dequantized on the CPU)", choices=QLORA_COMPUTE
    )
    cpu_kernels: str = kernels_arg()
    seed: int = arg(0, "seed of LoRA init, data order and dropout")
    pair_batches: bool = arg(
        False,
        "keep the rows of one task (metadata.task_id) in the same batch: a correct and a wrong "
        "response judged in the same update",
    )
    shuffle_batches: bool = arg(
        False,
        "batch the training rows in a seeded random order instead of by length (mixes task "
        "families and verdicts in a batch; more padding)",
    )
    shuffle_window: int = arg(
        2,
        "with --shuffle-batches: each run of this many batches' rows is sorted by length "
        "(less padding); 1: fully random batches",
    )
    steps_per_report: int = arg(10, "iterations between train-loss reports")
    steps_per_eval: int = arg(200, "iterations between validations")
    validate_first: bool = arg(
        True, "validate before the first update too (valid_loss_initial); false saves a pass"
    )
    steps_per_save: int = arg(100, "iterations between checkpoints (a multiple of --grad-accum)")
    average_last: int = arg(
        0, "the adapter is the mean of the weights after each of the last N updates (0: the last)"
    )
    resume: bool = arg(False, "continue from the newest checkpoint in --state-dir")

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
            "shuffle_window",
        ):
            check_range(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        check_range("--learning-rate", self.learning_rate, 0.0, 1.0)
        check_range("--min-learning-rate", self.min_learning_rate, 0.0, self.learning_rate)
        check_range("--warmup-steps", self.warmup_steps, 0)
        check_range("--decay-steps", self.decay_steps, 0)
        check_range("--average-last", self.average_last, 0)
        check_range("--dropout", self.dropout, 0.0, 0.99)
        check_range("--weight-decay", self.weight_decay, 0.0)
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("lr_schedule", SCHEDULES),
            ("qlora_compute", QLORA_COMPUTE),
            ("cpu_kernels", KERNELS),
        ):
            check_choice(f"--{name.replace('_', '-')}", getattr(self, name), allowed)
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
        if self.decay_steps and self.lr_schedule != "constant":
            raise StageError(
                f"--decay-steps ({self.decay_steps}) is for the constant schedule; the "
                f"{self.lr_schedule} schedule already decays. Set one of them."
            )
        if self.warmup_steps + self.decay_steps > self.updates:
            raise StageError(
                f"--warmup-steps ({self.warmup_steps}) + --decay-steps ({self.decay_steps}) "
                f"exceed the run's {self.updates} optimizer updates."
            )
        if self.average_last > self.updates:
            raise StageError(
                f"--average-last ({self.average_last}) exceeds the run's {self.updates} "
                "optimizer updates."
            )
        if self.state_dir is None:
            self.state_dir = self.adapter_path.with_name(self.adapter_path.name + "_state")

    @property
    def updates(self) -> int:
        return self.iters // self.grad_accum

    def fingerprint(self) -> str:
        kept = {k: str(v) for k, v in asdict(self).items() if k not in RESUMABLE_FIELDS}
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def build_schedule(cfg: TrainConfig):
    """LR per optimizer update: linear warmup from 0, then constant or cosine to min_lr; a
    constant schedule may end in a linear decay to min_lr over its last ``decay_steps`` updates
    (warmup-stable-decay). Why the default decays: docs/default-judge.md."""
    import mlx.optimizers as optim

    lr, phases, starts = cfg.learning_rate, [], []
    if cfg.warmup_steps:
        phases.append(optim.linear_schedule(0.0, lr, cfg.warmup_steps))
    if cfg.lr_schedule == "cosine":
        phases.append(optim.cosine_decay(lr, cfg.updates - cfg.warmup_steps, cfg.min_learning_rate))
    else:
        phases.append(optim.linear_schedule(lr, lr, 1))
        if cfg.decay_steps:
            phases.append(optim.linear_schedule(lr, cfg.min_learning_rate, cfg.decay_steps))
    if cfg.warmup_steps:
        starts.append(cfg.warmup_steps)
    if cfg.decay_steps:
        starts.append(cfg.updates - cfg.decay_steps)
    return optim.join_schedules(phases, starts) if starts else phases[0]


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
    model, tokenizer, _, info = load_base(
        cfg.model, cfg.bits, cfg.group_size, cfg.qlora_compute, cfg.cpu_kernels
    )
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


def _run_info(cfg: TrainConfig, base: dict) -> dict:
    import mlx.core as mx

    source = Path(base["path"]) / "source.json"
    return {
        "model": cfg.model,
        "model_source": json.loads(source.read_text()) if source.is_file() else None,
        "base": base,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "versions": {p: package_version(p) for p in ("mlx", "mlx-lm", "dvc")},
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


def run(cfg: TrainConfig) -> dict:
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    wall0 = time.perf_counter()
    warn_if_slow_blas()
    mx.random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    model, tokenizer, base = load_model(cfg)
    train_set, train_rows = _load_split(cfg.train_data, tokenizer, cfg, "train")
    valid_set, valid_rows = _load_split(cfg.valid_data, tokenizer, cfg, "validation")
    model.freeze()
    lora = {"rank": cfg.rank, "scale": cfg.scale, "dropout": cfg.dropout}
    linear_to_lora_layers(model, cfg.lora_layers, lora)
    n_trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    head = checked_head(model)  # logits at trained positions only, where the model allows it
    optimizer = build_optimizer(cfg)

    data_hash = hashlib.sha256(cfg.train_data.read_bytes() + cfg.valid_data.read_bytes())
    ckpts = Checkpoints(cfg.state_dir, f"{cfg.fingerprint()}-{data_hash.hexdigest()[:16]}")
    card = JudgeCard.from_rows(train_rows, hashlib.sha256(cfg.train_data.read_bytes()).hexdigest())
    progress = Progress(cfg.iters)
    average = WeightAverage(cfg.average_last, cfg.updates)
    if cfg.resume:
        state = ckpts.restore(model, optimizer, average)
        progress.line(f"resumed from iteration {state.iteration} ({ckpts.newest()})")
    else:
        state = TrainState()
        if is_rank0() and cfg.state_dir.exists():
            shutil.rmtree(cfg.state_dir)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    mx.reset_peak_memory()
    report = StageReport(progress, cfg.live_dir, state)
    settings = LoopSettings(**{f.name: getattr(cfg, f.name) for f in fields(LoopSettings)})
    try:
        # --pair-batches: a task's rows batched together (BatchIterator's groups)
        groups = [task_id(row) for row in train_rows] if cfg.pair_batches else None
        train_loop(
            model,
            optimizer,
            train_set,
            valid_set,
            settings,
            state,
            ckpts,
            report,
            average,
            head,
            groups,
        )
    except NonFiniteLoss as err:
        last = ckpts.newest()
        raise StageError(
            f"training loss became NaN or infinite at iteration {err.args[0]}; the "
            f"last good checkpoint is {last or 'none (none was saved yet)'}. Fix: "
            "lower --learning-rate or check the data, then --resume or rerun."
        ) from None
    report.end()
    if is_rank0():
        _save_adapter_dir(cfg, model, base, state, head is not None, card)

    return _metrics(
        cfg, state, average.count, int(n_trainable), len(train_rows), len(valid_rows)
    ) | {"wall_seconds": round(time.perf_counter() - wall0, 2)}


def _metrics(
    cfg: TrainConfig, state: TrainState, averaged: int, trainable: int, n_train: int, n_valid: int
) -> dict:
    """The train stage's flat metrics (metrics/train.json), but its wall time."""
    import mlx.core as mx

    final, first = state.last_valid_loss, state.valid_curve[0]
    initial = {}  # the untrained adapter's validation, where it ran (--validate-first)
    if first["iteration"] == 0:
        initial = {"valid_loss_initial": first["valid_loss"]}
        initial["valid_ppl_initial"] = first["valid_ppl"]
    return initial | {
        "valid_loss": round(final, 6),
        "valid_ppl": round(perplexity(final), 6),
        "best_valid_ppl": round(state.best_ppl, 6),
        "best_valid_iteration": state.best_iter,
        "train_loss": state.train_curve[-1]["train_loss"],
        "iterations": cfg.iters,
        "optimizer_updates": cfg.updates,
        "averaged_updates": averaged,  # the adapter is their mean (0: the last update's)
        "trained_tokens": state.trained_tokens,
        "tokens_per_sec": round(state.trained_tokens / max(state.train_seconds, 1e-9), 1),
        "peak_memory_gb": round(mx.get_peak_memory() / 1e9, 4),
        "trainable_params": trainable,
        "n_train": n_train,
        "n_valid": n_valid,
    }


def _save_adapter_dir(
    cfg: TrainConfig, model, base: dict, state: TrainState, sparse: bool, card: JudgeCard | None
):
    """The adapter as mlx-lm writes it, plus run_info.json, the judge's card (what it was
    trained to read and write; none for rows that are not judge data) and the best adapter in
    ``best/``."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    best = cfg.state_dir / "best" / "adapters.safetensors"
    with atomic_path(cfg.adapter_path, is_dir=True) as tmp:
        mx.save_safetensors(
            str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
        )
        adapter_config = _adapter_config(cfg, base)
        write_json(tmp / "adapter_config.json", adapter_config)
        info = _run_info(cfg, base)
        info["logits_at"] = "trained positions" if sparse else "every position"
        # what fuse checks its merged model against (the adapter folder is fuse's input; the
        # stage metrics, which hold timings, are not)
        info["valid_loss"] = state.last_valid_loss
        write_json(tmp / "run_info.json", info)
        if card is not None:
            card.write(tmp)
        if best.is_file():
            (tmp / "best").mkdir()
            shutil.copy2(best, tmp / "best")
            write_json(
                tmp / "best" / "adapter_config.json",
                {**adapter_config, "iteration": state.best_iter},
            )


def build_parser() -> argparse.ArgumentParser:
    return config_parser(TrainConfig, "src.train_sft", __doc__, "metrics/train.json")


def main(argv: list[str] | None = None) -> int:
    return stage_main(build_parser(), TrainConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
