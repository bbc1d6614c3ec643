"""Split stage: the GenRM SFT file -> train / valid splits, filtering rows too long to train on.

Recipe step 1. Reads ``data/processed/sft/sft_genrm_train.jsonl``; writes ``sft_train.jsonl``,
``sft_valid.jsonl`` (``--valid-size`` rows; the recipe's 500), ``sft_rejects.jsonl`` (every
dropped row and why) beside it, and ``metrics/split.json``.

- Length is the token count of the full sequence exactly as the train stage tokenizes it (same
  tokenizer, same chat template, special tokens included); rows longer than ``--max-seq-length``
  are filtered.
- Exact duplicate rows are removed; rows sharing a prompt (or a ``metadata.task_id``) stay on
  one side; with ``metadata.label`` the validation split keeps the label balance of the whole.
- Deterministic for ``--seed``. Bad input exits 1 with file, line and fix, and writes nothing.

Params (``params.yaml``): ``split.*``, ``train.max_seq_length`` (the tokenizer is the base model's).

    uv run python -m src.split_data --max-seq-length 2048
"""

from __future__ import annotations

import argparse
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import paths
from .data.sft import (
    CHAT,
    FormatChecker,
    dumps,
    fast_renderer,
    fold_system,
    iter_jsonl_lines,
    prompt_key,
    task_id,
    token_lengths,
)
from .modeling.source import load_tokenizer
from .runtime import (
    DataError,
    StageError,
    arg,
    atomic_path,
    check_range,
    config_parser,
    stage_main,
)


@dataclass
class SplitConfig:
    input: Path = arg(paths.RAW, "the GenRM SFT rows (JSONL)")
    train_out: Path = arg(paths.TRAIN_SPLIT, "training rows, written as read")
    valid_out: Path = arg(paths.VALID_SPLIT, "held-out validation rows")
    rejects_out: Path = arg(paths.REJECTS, "rows left out, each with its reason")
    model: str = arg(paths.BASE, "model whose tokenizer and chat template measure row length")
    max_seq_length: int = arg(2048, "rows longer than this many tokens are left out")
    valid_size: int = arg(500, "validation rows (whole tasks and prompts stay on one side)")
    seed: int = arg(0, "seed of the split")
    fold_system: bool = arg(False, "fold a leading system message into the first user turn")

    def __post_init__(self) -> None:
        check_range("--max-seq-length", self.max_seq_length, 2)
        check_range("--valid-size", self.valid_size, 1)


def _groups(keys: list[tuple]) -> list[int]:
    """Union rows that share a prompt or a task id; return a group id per row."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple, int] = {}
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


def _read_and_measure(cfg: SplitConfig, tokenizer, chunk: int = 1024):
    """One pass over the input: parse, check, dedup and render rows in this thread while the
    previous chunk is tokenized in another (the Rust tokenizer releases the GIL and uses every
    core), so everything but tokenization costs little wall time.

    Returns the file's format, rows read, the unique rows ``(line, row)``, their output lines
    (the input line verbatim unless folded), their token lengths, and the duplicate rejects.
    """
    check = FormatChecker(cfg.input)
    seen: dict[str, int] = {}
    rows: list[tuple[int, dict]] = []
    lines: list[str] = []
    rejects: list[dict] = []
    pending, n_read, render_row = [], 0, None
    with ThreadPoolExecutor(max_workers=1) as pool:

        def submit(batch: list[tuple[int, dict]]) -> None:
            nonlocal render_row
            if render_row is None:
                render_row = fast_renderer(check.format, tokenizer, [r for _, r in batch[:64]])
            texts = [_render(render_row, row, check.format, cfg.input, n) for n, row in batch]
            pending.append(pool.submit(token_lengths, texts, check.format, tokenizer, chunk))

        for number, row, text in iter_jsonl_lines(cfg.input):
            n_read += 1
            check(number, row)
            key = text.strip()
            if key in seen:
                rejects.append(
                    {"line": number, "reason": f"duplicate of line {seen[key]}", "row": row}
                )
                continue
            seen[key] = number
            if cfg.fold_system:
                folded = fold_system(row)
                if folded is not row:
                    row, key = folded, dumps(folded)
            rows.append((number, row))
            lines.append(key)
            if len(rows) % chunk == 0:
                submit(rows[-chunk:])
        if len(rows) % chunk:
            submit(rows[-(len(rows) % chunk) :])
        lengths = [n for future in pending for n in future.result()]
    return check.format, n_read, rows, lines, lengths, rejects


def _render(render_row, row: dict, fmt: str, path: Path, number: int) -> str:
    try:
        return render_row(row)
    except Exception as err:  # the chat template's raise_exception, e.g. Gemma's system role
        has_system = fmt == CHAT and row["messages"][0]["role"] == "system"
        fix = (
            "pass --fold-system to move system text into the first user turn"
            if has_system
            else "rewrite the row so the chat template accepts it"
        )
        raise DataError(path, number, f"the chat template rejects this row: {err}", fix) from None


def run(cfg: SplitConfig) -> dict:
    tokenizer = load_tokenizer(cfg.model)
    fmt, n_read, rows, lines, lengths, rejects = _read_and_measure(cfg, tokenizer)
    n_duplicates = n_read - len(rows)

    kept, kept_lines, kept_lengths = [], [], []
    for (number, row), line, n in zip(rows, lines, lengths, strict=True):
        if n > cfg.max_seq_length:
            rejects.append({"line": number, "reason": "too_long", "n_tokens": n, "row": row})
        else:
            kept.append(row)
            kept_lines.append(line)
            kept_lengths.append(n)
    n_too_long = len(rows) - len(kept)
    if len(kept) <= cfg.valid_size:
        raise DataError(
            cfg.input,
            None,
            f"only {len(kept)} usable rows (of {n_read} read: "
            f"{n_duplicates} duplicates, {n_too_long} longer than "
            f"{cfg.max_seq_length} tokens), but --valid-size is {cfg.valid_size} and "
            "training needs rows too",
            "lower --valid-size or add data",
        )

    meta = [row.get("metadata") if isinstance(row.get("metadata"), dict) else {} for row in kept]
    task_ids = [task_id(row) for row in kept]
    labels = [m.get("label") for m in meta]
    groups = _groups([(prompt_key(row, fmt), t) for row, t in zip(kept, task_ids, strict=True)])
    valid_idx = _pick_valid(groups, labels, cfg.valid_size, cfg.seed)
    if len(valid_idx) < cfg.valid_size:
        raise StageError(
            f"could only place {len(valid_idx)} of {cfg.valid_size} validation rows "
            "without splitting a prompt group or the label balance. Fix: lower "
            "--valid-size."
        )

    train = [line for i, line in enumerate(kept_lines) if i not in valid_idx]
    valid = [line for i, line in enumerate(kept_lines) if i in valid_idx]
    with (
        atomic_path(cfg.train_out) as t,
        atomic_path(cfg.valid_out) as v,
        atomic_path(cfg.rejects_out) as rj,
    ):
        for path, part in ((t, train), (v, valid), (rj, [dumps(r) for r in rejects])):
            path.write_text("".join(line + "\n" for line in part), encoding="utf-8")

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
        metrics["label_pos_frac_valid"] = round(
            sum(map(bool, valid_known)) / max(1, len(valid_known)), 4
        )
    return metrics


def build_parser() -> argparse.ArgumentParser:
    return config_parser(SplitConfig, "src.split_data", __doc__, "metrics/split.json")


def main(argv: list[str] | None = None) -> int:
    return stage_main(build_parser(), SplitConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
