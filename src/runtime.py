"""Shared plumbing for stage entry points: errors users can act on, atomic writes, metrics."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, field, fields
from pathlib import Path


class StageError(Exception):
    """An error the user can fix; printed as one clear message, never as a traceback."""


class DataError(StageError):
    """A problem in an input file, located by file and line."""

    def __init__(self, path: str | Path, line: int | None, what: str, fix: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {what}. Fix: {fix}")
        self.path, self.line, self.what, self.fix = str(path), line, what, fix


def package_version(package: str) -> str | None:
    """Installed version, or None: the stages also run where DVC is not installed (a CUDA box,
    the other hosts of an ``mlx.launch`` run)."""
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def is_rank0() -> bool:
    """True unless running as a non-zero rank under ``mlx.launch``."""
    import mlx.core as mx

    return mx.distributed.init().rank() == 0


@contextmanager
def atomic_path(final: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``final`` only if the block succeeds.

    A failing stage therefore never leaves half-written output behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp create private files; outputs get the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod((0o777 if is_dir else 0o666) & ~umask)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if is_dir and final.exists():
        _remove(final)
    os.replace(tmp, final)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | Path, obj: dict) -> None:
    """Write JSON atomically; NaN or infinity is a bug, so it raises."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_jsonl(path: str | Path, rows, dumps=json.dumps) -> None:
    """Write rows as JSON Lines (``jsonlines``' writer, ``dumps`` per row), atomically.

    Reading stays ``src.data.sft.iter_jsonl_lines``: errors further down cite each row's file line
    and the split copies each row's original text, which ``jsonlines``' reader does not keep."""
    import jsonlines

    with atomic_path(path) as tmp, jsonlines.open(tmp, "w", dumps=dumps) as writer:
        writer.write_all(rows)


def flat_metrics(metrics: dict) -> dict:
    """Check metrics are a flat mapping of finite numbers (what ``dvc metrics diff`` compares)."""
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {key!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"metric {key!r} is not finite: {value}")
    return dict(sorted(metrics.items()))


def run_main(run: Callable[[], dict], metrics_path: str | Path | None) -> int:
    """Call a stage's ``run``; write its metrics (rank 0 only); turn StageError into exit code 1."""
    try:
        metrics = run()
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if metrics_path and is_rank0():
        write_json(metrics_path, flat_metrics(metrics))
    return 0


def arg(default, help: str, **flag):
    """A config field and its flag, as mlx-lm's ``TrainingArgs`` declares them: the default, the
    ``help`` that ``--help`` shows, and argparse extras (``choices``, ``required``)."""
    return field(default=default, metadata={"help": help, **flag})


def _none_or(kind):
    return lambda text: None if text in ("", "None", "null") else kind(text)


def config_parser(
    config_cls, module: str, doc: str, metrics: str | None
) -> argparse.ArgumentParser:
    """A stage's CLI built from its typed config: one flag per field (``lora_layers`` ->
    ``--lora-layers``), typed by the field's annotation, with the field's help and extras;
    booleans take ``--flag`` alone or ``--flag true|false`` (what dvc.yaml renders); an optional
    field takes ``''``/``None`` for None. ``choices`` are listed in the help and checked by the
    config itself (``check_choice``), so Python callers get the same error. Plus ``--metrics``
    (default ``metrics``; None: none unless given)."""
    p = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(config_cls)
    for f in fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        extra = dict(f.metadata)
        help = extra.pop("help")  # every field documents its flag
        if "choices" in extra:
            help += f" (one of: {', '.join(map(str, extra.pop('choices')))})"
        default = f.default if f.default is not MISSING else f.default_factory()
        kind = hints[f.name]
        if kind is bool:
            add_bool_flag(p, flag, default, help)
            continue
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        convert = _none_or(options[0]) if options else kind
        p.add_argument(flag, type=convert, default=default, help=help, **extra)
    p.add_argument(
        "--metrics",
        type=_none_or(Path),
        default=Path(metrics) if metrics else None,
        help="where the stage writes its flat metrics JSON",
    )
    return p


def stage_main(
    parser: argparse.ArgumentParser,
    config_cls,
    run: Callable[[object], dict],
    argv: list[str] | None,
) -> int:
    """A stage's whole CLI: parse flags, build its typed config (bad values exit 2 with the
    message), run it, write its metrics (``--metrics``)."""
    args = vars(parser.parse_args(argv))
    metrics_path = args.pop("metrics")
    try:
        cfg = config_cls(**args)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_main(lambda: run(cfg), metrics_path)


def check_range(
    name: str, value: float, low: float | None = None, high: float | None = None, hint: str = ""
) -> None:
    """Raise a StageError naming the flag when ``value`` is out of [low, high]."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f">= {low}"
            if high is None
            else f"in [{low}, {high}]"
            if low is not None
            else f"<= {high}"
        )
        raise StageError(f"{name} must be {bounds}, got {value}.{' ' + hint if hint else ''}")


def check_choice(flag: str, value, choices) -> None:
    """Raise a StageError naming the flag when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise StageError(f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}.")


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_bool_flag(
    parser: argparse.ArgumentParser, flag: str, default: bool, help: str = ""
) -> None:
    """``--flag`` alone means true (the recipe's style); ``--flag false`` is what params.yaml
    renders through dvc.yaml's ``${...}``."""
    parser.add_argument(
        flag, type=parse_bool, nargs="?", const=True, default=default, metavar="BOOL", help=help
    )
