"""Split stage: the GenRM SFT file -> train / valid splits, filtering rows too long to train on.

Recipe step 1. Reads ``data/processed/sft/sft_genrm_train.jsonl``; writes ``sft_train.jsonl``,
``sft_valid.jsonl`` (500 rows), ``sft_rejects.jsonl`` (every dropped row and why) beside it, and
``metrics/split.json``.

- Length is the token count of the full sequence exactly as the train stage tokenizes it (same
  tokenizer, same chat template, special tokens included); rows longer than ``--max-seq-length``
  are filtered.
- Exact duplicate rows are removed; rows sharing a prompt (or a ``metadata.task_id``) stay on
  one side; with ``metadata.label`` the validation split keeps the label balance of the whole.
- Deterministic for ``--seed``. Bad input exits 1 with file, line and fix, and writes nothing.

Params (``params.yaml``): ``model.path``, ``split.*``, ``train.max_seq_length``.

    uv run python -m src.split_data --max-seq-length 2048
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .model_source import load_tokenizer
from .runtime import DataError, StageError, add_bool_flag, atomic_path, check_range, run_main
from .sft_data import (
    CHAT,
    fold_system,
    prompt_key,
    read_jsonl,
    render,
    token_lengths,
    validate_rows,
)

DATA_DIR = Path("data/processed/sft")


@dataclass
class SplitConfig:
    input: Path = DATA_DIR / "sft_genrm_train.jsonl"
    train_out: Path = DATA_DIR / "sft_train.jsonl"
    valid_out: Path = DATA_DIR / "sft_valid.jsonl"
    rejects_out: Path = DATA_DIR / "sft_rejects.jsonl"
    model: str = "checkpoints/base_model"
    max_seq_length: int = 2048
    valid_size: int = 500
    seed: int = 0
    fold_system: bool = False

    def __post_init__(self) -> None:
        check_range("--max-seq-length", self.max_seq_length, 2)
        check_range("--valid-size", self.valid_size, 1)


def _dumps(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=True)


def _groups(keys: list[tuple[str, str | None]]) -> list[int]:
    """Union rows that share a prompt or a task id; return a group id per row."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, (prompt, task) in enumerate(keys):
        for key in (("p", prompt), ("t", task)):
            if key[1] is None:
                continue
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    return [find(i) for i in range(len(keys))]


def _pick_valid(groups: list[int], labels: list[int | None], size: int, seed: int) -> set[int]:
    """Choose whole groups for validation, ``size`` rows, keeping the label mix of the whole."""
    members: dict[int, list[int]] = defaultdict(list)
    for row, group in enumerate(groups):
        members[group].append(row)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    counts = Counter(labels)
    target = {label: round(size * n / len(labels)) for label, n in counts.items()}
    # Rounding may leave the targets a row off the requested size; the largest class absorbs it.
    target[max(counts, key=counts.get)] += size - sum(target.values())
    chosen: set[int] = set()
    taken: Counter = Counter()
    for group in order:
        need = Counter(labels[r] for r in members[group])
        if all(taken[label] + n <= target[label] for label, n in need.items()):
            chosen.update(members[group])
            taken.update(need)
            if len(chosen) == size:
                break
    return chosen


def run(cfg: SplitConfig) -> dict:
    tokenizer = load_tokenizer(cfg.model)
    numbered = read_jsonl(cfg.input)
    fmt = validate_rows(numbered, cfg.input)
    n_read = len(numbered)

    if cfg.fold_system:
        numbered = [(n, fold_system(r)) for n, r in numbered]

    rejects: list[dict] = []
    seen: dict[str, int] = {}
    rows: list[tuple[int, dict]] = []
    for number, row in numbered:
        key = _dumps(row)
        if key in seen:
            rejects.append({"line": number, "reason": f"duplicate of line {seen[key]}", "row": row})
        else:
            seen[key] = number
            rows.append((number, row))
    n_duplicates = n_read - len(rows)

    texts = []
    for number, row in rows:
        try:
            texts.append(render(row, fmt, tokenizer))
        except Exception as err:  # the chat template's own raise_exception, e.g. a system role
            has_system = fmt == CHAT and row["messages"][0]["role"] == "system"
            fix = ("pass --fold-system to move system text into the first user turn"
                   if has_system else "rewrite the row so the model's chat template accepts it")
            raise DataError(cfg.input, number, f"the chat template rejects this row: {err}",
                            fix) from None
    lengths = token_lengths(texts, fmt, tokenizer)

    kept, kept_lengths = [], []
    for (number, row), n in zip(rows, lengths, strict=True):
        if n > cfg.max_seq_length:
            rejects.append({"line": number, "reason": "too_long", "n_tokens": n, "row": row})
        else:
            kept.append(row)
            kept_lengths.append(n)
    n_too_long = len(rows) - len(kept)
    if len(kept) <= cfg.valid_size:
        raise DataError(cfg.input, None, f"only {len(kept)} usable rows (of {n_read} read: "
                        f"{n_duplicates} duplicates, {n_too_long} longer than "
                        f"{cfg.max_seq_length} tokens), but --valid-size is {cfg.valid_size} and "
                        "training needs rows too", "lower --valid-size or add data")

    meta = [row.get("metadata") if isinstance(row.get("metadata"), dict) else {} for row in kept]
    task_ids = [str(m["task_id"]) if "task_id" in m else None for m in meta]
    labels = [m.get("label") for m in meta]
    groups = _groups([(prompt_key(row, fmt), t) for row, t in zip(kept, task_ids, strict=True)])
    valid_idx = _pick_valid(groups, labels, cfg.valid_size, cfg.seed)
    if len(valid_idx) < cfg.valid_size:
        raise StageError(f"could only place {len(valid_idx)} of {cfg.valid_size} validation rows "
                         "without splitting a prompt group or the label balance. Fix: lower "
                         "--valid-size.")

    train = [r for i, r in enumerate(kept) if i not in valid_idx]
    valid = [r for i, r in enumerate(kept) if i in valid_idx]
    with (atomic_path(cfg.train_out) as t, atomic_path(cfg.valid_out) as v,
          atomic_path(cfg.rejects_out) as rj):
        for path, part in ((t, train), (v, valid), (rj, rejects)):
            path.write_text("".join(_dumps(r) + "\n" for r in part), encoding="utf-8")

    lens = np.array(kept_lengths)
    train_tokens = sum(n for i, n in enumerate(kept_lengths) if i not in valid_idx)
    metrics = {
        "n_read": n_read,
        "n_duplicates": n_duplicates,
        "n_filtered_too_long": n_too_long,
        "n_kept": len(kept),
        "n_train": len(train),
        "n_valid": len(valid),
        "tokens_mean": round(float(lens.mean()), 2),
        "tokens_p50": float(np.percentile(lens, 50)),
        "tokens_p95": float(np.percentile(lens, 95)),
        "tokens_max": int(lens.max()),
        "train_tokens": int(train_tokens),
    }
    known = [lab for lab in labels if lab is not None]
    if known:
        valid_known = [labels[i] for i in valid_idx if labels[i] is not None]
        metrics["label_pos_frac_all"] = round(sum(map(bool, known)) / len(known), 4)
        metrics["label_pos_frac_valid"] = round(sum(map(bool, valid_known)) / max(1, len(valid_known)), 4)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    d = SplitConfig()
    p = argparse.ArgumentParser(prog="python -m src.split_data", description=__doc__.split("\n")[0])
    p.add_argument("--input", type=Path, default=d.input)
    p.add_argument("--train-out", type=Path, default=d.train_out)
    p.add_argument("--valid-out", type=Path, default=d.valid_out)
    p.add_argument("--rejects-out", type=Path, default=d.rejects_out)
    p.add_argument("--model", default=d.model, help="model whose tokenizer measures length")
    p.add_argument("--max-seq-length", type=int, default=d.max_seq_length)
    p.add_argument("--valid-size", type=int, default=d.valid_size)
    p.add_argument("--seed", type=int, default=d.seed)
    add_bool_flag(p, "--fold-system", d.fold_system,
                  "fold a leading system message into the first user turn")
    p.add_argument("--metrics", type=Path, default=Path("metrics/split.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    metrics_path = args.pop("metrics")
    try:
        cfg = SplitConfig(**args)
    except StageError as err:
        print(f"error: {err}")
        return 2
    return run_main(lambda: run(cfg), metrics_path)


if __name__ == "__main__":
    raise SystemExit(main())
