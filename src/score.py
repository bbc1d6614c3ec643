"""Score (prompt, response) pairs with the trained judge: the judge as a command.

Input: JSONL, one pair per line, either ``{"prompt": ..., "response": ...}`` or a chat row
``{"messages": [..., {"role": "user", ...}, {"role": "assistant", ...}]}`` whose last turn is the
response to judge (its last user turn is the prompt); ``"reference"`` (a reference answer) is
optional in both. Output: JSONL, one line per input line in the same order:
``{"line", "score", "raw", "judgement"}`` with ``score`` in [0, 1] (null when the judgement has
no verdict) and ``raw`` on the verdict format's own scale; ``--soft`` adds ``soft_score`` (the
probability-weighted verdict where the judge wrote it, e.g. P(Yes); formats whose verdicts are
one token each), ``--direct`` scores without a critique (``judgement`` null). A bad row stops
the command with ``file:line: what. Fix: how`` and nothing written. The Python interface:
``src/genrm.py``.

    uv run python -m src.score --model checkpoints/sft_merged_model \\
        --input candidates.jsonl --output scores.jsonl [--direct]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .runtime import (
    DataError,
    StageError,
    arg,
    check_choice,
    config_parser,
    stage_main,
    write_jsonl,
)
from .sft_data import read_jsonl
from .verdicts import NAMES

POINTWISE = tuple(n for n in NAMES if n not in ("pairwise", "regex"))  # built-in prompts


@dataclass
class ScoreConfig:
    model: str = arg(str(paths.MERGED), "the judge: a fused model folder")
    input: Path = arg(None, "JSONL of pairs to score", required=True)
    output: Path = arg(None, "JSONL of scores, one per input row", required=True)
    verdict: str = arg("score10", "the verdict format the judge writes", choices=POINTWISE)
    template: Path | None = arg(
        None,
        "file with the judge's prompt, {prompt} and {response} (and {reference}) in it "
        "(default: the sample data's grading prompt for --verdict)",
    )
    direct: bool = arg(False, "score from verdict probabilities, no critique")
    soft: bool = arg(False, "also soft_score: the verdict's probabilities where it was written")
    max_tokens: int = arg(64, "judgement length")
    batch_size: int = arg(16, "pairs judged together")

    def __post_init__(self) -> None:
        check_choice("--verdict", self.verdict, POINTWISE)
        for name in ("max_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise StageError(f"--{name.replace('_', '-')} must be >= 1.")
        if self.direct and self.soft:
            raise StageError("--direct and --soft are two different scores: choose one.")
        if self.template is not None and not Path(self.template).is_file():
            raise StageError(f"--template {self.template}: no such file.")


def read_pairs(path: Path) -> tuple[list[int], list, list, list | None]:
    """Line numbers, prompts, responses and references (None when no row has one)."""
    lines, prompts, responses, refs = [], [], [], []
    for line, row in read_jsonl(path):
        if "messages" in row:
            msgs = row["messages"]
            ok = isinstance(msgs, list) and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs
            )
            users = [m["content"] for m in msgs if m.get("role") == "user"] if ok else []
            if not ok or not users or msgs[-1].get("role") != "assistant":
                raise DataError(
                    path,
                    line,
                    "a chat row must end with the assistant response to judge, after a user turn",
                    'write {"messages": [{"role": "user", "content": ...}, {"role": '
                    '"assistant", "content": ...}]}',
                )
            prompt, response = users[-1], msgs[-1]["content"]
        else:
            prompt, response = row.get("prompt"), row.get("response")
            for name, value in (("prompt", prompt), ("response", response)):
                if not isinstance(value, str) or not value.strip():
                    raise DataError(
                        path,
                        line,
                        f'"{name}" is missing or not a non-empty string',
                        'write {"prompt": "...", "response": "..."} or a chat row',
                    )
        ref = row.get("reference")
        if ref is not None and not isinstance(ref, str | int | float):
            raise DataError(path, line, '"reference" must be a string', "write it as text")
        lines.append(line)
        prompts.append(prompt)
        responses.append(response)
        refs.append(None if ref is None else str(ref))
    return lines, prompts, responses, refs if any(r is not None for r in refs) else None


def run(cfg: ScoreConfig) -> dict:
    from .genrm import GenRM

    lines, prompts, responses, refs = read_pairs(cfg.input)  # all rows checked before loading
    template = Path(cfg.template).read_text(encoding="utf-8") if cfg.template else None
    judge = GenRM(cfg.model, cfg.verdict, template, cfg.direct, cfg.max_tokens, cfg.batch_size)
    try:
        records = judge.judge(prompts, responses, refs)
    except (KeyError, IndexError) as err:  # a template field the rows do not have
        raise StageError(f"--template {cfg.template}: unknown field {err}.") from None
    write_jsonl(cfg.output, [{"line": n, **r} for n, r in zip(lines, records, strict=True)])
    scored = [r["score"] for r in records if r["score"] is not None]
    metrics = {"n_rows": len(records), "n_unparsed": len(records) - len(scored)}
    if scored:
        metrics["mean_score"] = round(sum(scored) / len(scored), 4)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    return config_parser(ScoreConfig, "src.score", __doc__, None)


def main(argv: list[str] | None = None) -> int:
    return stage_main(build_parser(), ScoreConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
