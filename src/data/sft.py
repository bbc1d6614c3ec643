"""SFT data: read and validate JSONL, and tokenize rows exactly as mlx-lm's trainer does.

Formats (mlx-lm's, one per file): chat ``{"messages": [...], "tools": [...]?}``,
``{"prompt": ..., "completion": ...}`` and ``{"text": ...}``. Extra keys (``metadata``) are kept
and ignored by training.

Training uses mlx-lm's own datasets (``create_dataset`` + ``CacheDataset``). The split stage
measures lengths with ``token_lengths``, a batched equivalent (render with the same tokenizer's
chat template, then one ``encode_batch``); ``tests/test_split.py`` proves the two agree token
for token, so the length filter cannot drift from what training sees.
"""

from __future__ import annotations

import json
import operator
from pathlib import Path
from types import SimpleNamespace

import orjson

from ..runtime import DataError

CHAT, COMPLETIONS, TEXT = "chat", "completions", "text"
ROLES = ("system", "user", "assistant", "tool")


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """Return ``(line_number, row)`` pairs. Accepts a UTF-8 BOM, CRLF and blank lines."""
    return [(number, row) for number, row, _ in read_jsonl_lines(path)]


def read_jsonl_lines(path: str | Path) -> list[tuple[int, dict, str]]:
    """Like ``read_jsonl``, with each row's original line text (to dedup and copy it verbatim)."""
    return list(iter_jsonl_lines(path))


def iter_jsonl_lines(path: str | Path):
    """``read_jsonl_lines`` one row at a time, so a stage can work while it reads."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            path, None, "file not found", "check the path or run the stage that makes it"
        )
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    n_rows = 0
    for number, line in enumerate(raw.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                path, number, f"invalid UTF-8 at byte {err.start}", "re-encode the file as UTF-8"
            ) from None
        try:
            row = _loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                path,
                number,
                f"malformed JSON ({err.msg} at column {err.colno})",
                "write one JSON object per line",
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                path,
                number,
                f"expected a JSON object, got {type(row).__name__}",
                "write one JSON object per line",
            )
        n_rows += 1
        yield number, row, text
    if not n_rows:
        raise DataError(path, None, "file is empty", "provide at least one JSONL row")


def dumps(row: dict) -> str:
    """One canonical JSONL line (sorted keys, UTF-8 kept as is)."""
    return json.dumps(row, ensure_ascii=False, sort_keys=True)


def _loads(text: str):
    """orjson (~3x faster) for the common case; the standard library for anything orjson refuses
    that ``json`` accepts (NaN, huge integers, lone surrogates) and for its error messages."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def row_format(row: dict) -> str | None:
    if "messages" in row:
        return CHAT
    if "prompt" in row and "completion" in row:
        return COMPLETIONS
    if "text" in row:
        return TEXT
    return None


def validate_rows(rows: list[tuple[int, dict]], path: str | Path) -> str:
    """Check every row's fields; return the file's single format."""
    check = FormatChecker(path)
    for number, row in rows:
        check(number, row)
    return check.format


class FormatChecker:
    """Checks one row at a time (fields, types, role order) and that all share one format."""

    def __init__(self, path: str | Path):
        self.path = path
        self.format: str | None = None
        self.first_line: int | None = None

    def __call__(self, number: int, row: dict) -> str:
        path, fmt = self.path, row_format(row)
        if fmt is None:
            raise DataError(
                path,
                number,
                f"row has none of the known fields (keys: {sorted(row)})",
                'use {"messages": [...]}, {"prompt", "completion"} or {"text"}',
            )
        if self.format is None:
            self.format, self.first_line = fmt, number
        elif fmt != self.format:
            raise DataError(
                path,
                number,
                f"{fmt} row in a {self.format} file (line {self.first_line} is {self.format})",
                "use one format per file",
            )
        if fmt == CHAT:
            check_chat(row, path, number)
        else:
            keys = ("prompt", "completion") if fmt == COMPLETIONS else ("text",)
            for key in keys:
                if not isinstance(row[key], str):
                    raise DataError(
                        path,
                        number,
                        f"{key!r} must be a string, got {type(row[key]).__name__}",
                        f"write {key!r} as a JSON string",
                    )
        return fmt


def check_chat(row: dict, path, number: int) -> None:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(
            path,
            number,
            "'messages' must be a non-empty list",
            'write "messages": [{"role": "user", ...}, {"role": "assistant", ...}]',
        )
    if "tools" in row and not isinstance(row["tools"], list):
        raise DataError(path, number, "'tools' must be a list", "write tools as a JSON list")
    previous = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(
                path,
                number,
                f"message {i} needs 'role' and 'content'",
                'write each message as {"role": ..., "content": ...}',
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataError(
                path,
                number,
                f"message {i} has unknown role {role!r}",
                f"use one of {', '.join(ROLES)}",
            )
        if not isinstance(content, str):
            raise DataError(
                path,
                number,
                f"message {i} content must be a string, got {type(content).__name__}",
                "write content as a JSON string",
            )
        allowed = {
            None: {"system", "user"},
            "system": {"user"},
            "user": {"assistant"},
            "assistant": {"user", "tool"},
            "tool": {"tool", "assistant"},
        }[previous]
        if role not in allowed:
            after = f"after {previous!r}" if previous else "first"
            raise DataError(
                path,
                number,
                f"message {i} has role {role!r} {after}: roles out of order",
                "start with system or user, then alternate user and assistant",
            )
        previous = role
    if "assistant" not in {m["role"] for m in messages}:
        raise DataError(
            path,
            number,
            "chat has no assistant turn",
            "end each conversation with the assistant's answer",
        )
    if previous != "assistant":
        raise DataError(
            path,
            number,
            f"chat ends with a {previous!r} turn; the trained turn is the last one",
            "end each conversation with the assistant's answer",
        )


def chat_messages(x) -> list[dict] | None:
    """``x`` as chat messages (a dict is one message): a non-empty list of dicts whose
    ``content`` is a string, else None. The judge's inputs (``src.score``, ``GenRM``) are read
    with it; training rows get the stricter ``check_chat``."""
    if isinstance(x, dict):
        x = [x]
    is_list = isinstance(x, list | tuple) and len(x) > 0
    if is_list and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in x):
        return list(x)
    return None


def fold_system(row: dict) -> dict:
    """Move a leading system message into the first user turn (Gemma has no system role)."""
    messages = row.get("messages")
    if not messages or messages[0]["role"] != "system":
        return row
    system, user, *rest = messages
    folded = {**user, "content": f"{system['content']}\n\n{user['content']}"}
    return {**row, "messages": [folded, *rest]}


def task_id(row: dict) -> str | None:
    """A row's ``metadata.task_id`` as a string; None where the row has no metadata object or
    no id (the split keeps a task's rows on one side, ``--pair-batches`` in one batch)."""
    meta = row.get("metadata")
    return str(meta["task_id"]) if isinstance(meta, dict) and "task_id" in meta else None


def prompt_key(row: dict, fmt: str):
    """What a row is conditioned on; rows sharing it must stay on one side of the split."""
    if fmt == CHAT:
        return tuple(map(_role_content, row["messages"][:-1]))
    if fmt == COMPLETIONS:
        return row["prompt"]
    return row["text"]


_role_content = operator.itemgetter("role", "content")


def _mlx_config(mask_prompt: bool) -> SimpleNamespace:
    return SimpleNamespace(mask_prompt=mask_prompt)


def make_dataset(rows: list[dict], tokenizer, mask_prompt: bool):
    """mlx-lm's own dataset for these rows, cached: exactly what ``trainer.train`` consumes."""
    from mlx_lm.tuner.datasets import CacheDataset, create_dataset

    if mask_prompt and rows and row_format(rows[0]) == TEXT:
        raise DataError(
            "<dataset>",
            None,
            "mask_prompt needs a prompt, but rows are plain text",
            "use chat or prompt/completion rows, or turn mask_prompt off",
        )
    return CacheDataset(create_dataset(rows, tokenizer, _mlx_config(mask_prompt)))


def _messages(row: dict, fmt: str) -> list[dict]:
    if fmt == COMPLETIONS:
        return [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
    return row["messages"]


def render(row: dict, fmt: str, tokenizer) -> str:
    """The full training text of one row, rendered as mlx-lm's dataset renders it."""
    if fmt == TEXT:
        return row["text"]
    return tokenizer.apply_chat_template(
        _messages(row, fmt), tools=row.get("tools"), tokenize=False
    )


def fast_renderer(fmt: str, tokenizer, probe: list[dict]):
    """``render`` without transformers' per-call overhead (it deep-copies every conversation):
    the tokenizer's compiled Jinja template called directly, ~2.5x faster. Used only if it
    reproduces ``render`` exactly on ``probe`` rows; otherwise ``render`` itself is returned."""
    slow = lambda row: render(row, fmt, tokenizer)  # noqa: E731
    if fmt == TEXT or not isinstance(getattr(tokenizer, "chat_template", None), str):
        return slow
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        template = _compile_jinja_template(tokenizer.chat_template)
    except Exception:
        return slow
    special = dict(tokenizer.special_tokens_map)

    def fast(row: dict) -> str:
        return template.render(
            messages=_messages(row, fmt),
            tools=row.get("tools"),
            documents=None,
            add_generation_prompt=False,
            **special,
        )

    try:
        same = all(fast(row) == slow(row) for row in probe)
    except Exception:
        same = False
    return fast if same else slow


def token_lengths(texts: list[str], fmt: str, tokenizer, batch_size: int = 2048) -> list[int]:
    """Token counts of rendered texts, batched through the Rust tokenizer."""
    backend = tokenizer._tokenizer._tokenizer  # mlx-lm wrapper -> HF fast tokenizer -> Rust
    # Chat templates already contain their special tokens; plain text gets BOS like encode() does.
    add_special = fmt == TEXT
    eos = tokenizer.eos_token_id
    # ``encode_batch_fast`` (tokenizers >= 0.20) gives the same ids without character offsets,
    # which we never read: 30-45% less work here.
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    lengths = []
    for start in range(0, len(texts), batch_size):
        for enc in encode(texts[start : start + batch_size], add_special_tokens=add_special):
            n = len(enc.ids)
            if fmt == TEXT and (n == 0 or enc.ids[-1] != eos):
                n += 1  # mlx-lm's TextDataset appends EOS
            lengths.append(n)
    return lengths
