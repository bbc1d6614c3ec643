"""Score (prompt, response) pairs with the trained judge: the judge as a command.

Input: JSONL, one pair per line, either ``{"prompt": ..., "response": ...}`` or a chat row
``{"messages": [..., {"role": "user", ...}, {"role": "assistant", ...}]}`` whose last turn is the
response to judge (its last user turn is the prompt); ``"reference"`` (a reference answer) is
optional in both. Output: JSONL, one line per input line in the same order:
``{"line", "score", "raw", "judgement"}`` with ``score`` in [0, 1] (null when the judgement has
no verdict) and ``raw`` on the verdict format's own scale; ``--soft`` adds ``soft_score`` (the
probability-weighted verdict where the judge wrote it, e.g. P(Yes); formats whose verdicts are
one token each), ``--direct`` scores without a critique (``judgement`` null). A bad row stops
the command with ``file:line: what. Fix: how`` and nothing written. The verdict format and
whether rows need a ``reference`` come from the judge's card (``genrm_judge.json``, written by
train and fuse); ``--verdict`` and ``--allow-missing-reference`` override it. The Python
interface: ``src/judging/genrm.py``.

    uv run python -m src.score --model checkpoints/sft_merged_model \\
        --input candidates.jsonl --output scores.jsonl [--direct]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .data.sft import chat_messages, read_jsonl
from .judging.card import CARD, JudgeCard
from .judging.prompts import MAX_JUDGEMENT_TOKENS
from .judging.verdicts import NAMES
from .modeling.kernels import KERNELS, kernels_arg
from .runtime import (
    DataError,
    StageError,
    arg,
    check_choice,
    check_range,
    config_parser,
    stage_main,
    write_jsonl,
)

POINTWISE = tuple(n for n in NAMES if n not in ("pairwise", "regex"))  # built-in prompts


@dataclass
class ScoreConfig:
    model: str = arg(str(paths.MERGED), "the judge: a fused model folder")
    input: Path = arg(None, "JSONL of pairs to score", required=True)
    output: Path = arg(None, "JSONL of scores, one per input row", required=True)
    verdict: str | None = arg(
        None,
        "the verdict format the judge writes (default: the judge card's, genrm_judge.json in "
        "the model folder)",
        choices=POINTWISE,
    )
    template: Path | None = arg(
        None,
        "file with the judge's prompt, {prompt} and {response} (and {reference}) in it "
        "(default: the built-in grading prompt for the verdict format)",
    )
    direct: bool = arg(False, "score from verdict probabilities, no critique")
    soft: bool = arg(False, "also soft_score: the verdict's probabilities where it was written")
    allow_missing_reference: bool = arg(
        False, "judge rows without a reference although the judge was trained with one"
    )
    max_tokens: int = arg(MAX_JUDGEMENT_TOKENS, "judgement length")
    batch_size: int = arg(16, "pairs judged together")
    cpu_kernels: str = kernels_arg()

    def __post_init__(self) -> None:
        if self.verdict is not None:
            check_choice("--verdict", self.verdict, POINTWISE)
        check_choice("--cpu-kernels", self.cpu_kernels, KERNELS)
        for name in ("max_tokens", "batch_size"):
            check_range(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        if self.direct and self.soft:
            raise StageError("--direct and --soft are two different scores: choose one.")
        if self.template is not None and not Path(self.template).is_file():
            raise StageError(f"--template {self.template}: no such file.")


def read_pairs(path: Path) -> tuple[list[int], list, list, list | None]:
    """Line numbers, prompts, responses and references (None when no row has one)."""
    lines, prompts, responses, refs = [], [], [], []
    for line, row in read_jsonl(path):
        if "messages" in row:
            msgs = chat_messages(row["messages"])
            users = [m["content"] for m in msgs or [] if m.get("role") == "user"]
            if not users or msgs[-1].get("role") != "assistant":
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


def _check_references(cfg: ScoreConfig, lines: list[int], refs: list | None) -> None:
    """A reference-guided judge (its card says so) needs a reference on every row."""
    card = JudgeCard.read(cfg.model)
    if card is None or not card.reference or cfg.allow_missing_reference:
        return
    missing = [n for n, r in zip(lines, refs or [None] * len(lines), strict=True) if r is None]
    if missing:
        more = f" (nor on {len(missing) - 1} more rows)" if len(missing) > 1 else ""
        raise DataError(
            cfg.input,
            missing[0],
            f'no "reference"{more}, but this judge was trained to compare a response with a '
            f"reference answer ({cfg.model}/{CARD})",
            'add "reference": "<the correct answer>" to every row, or pass '
            "--allow-missing-reference to judge without one",
        )


def run(cfg: ScoreConfig) -> dict:
    from .judging.genrm import GenRM

    lines, prompts, responses, refs = read_pairs(cfg.input)  # all rows checked before loading
    _check_references(cfg, lines, refs)
    template = Path(cfg.template).read_text(encoding="utf-8") if cfg.template else None
    judge = GenRM(
        cfg.model,
        cfg.verdict,
        template,
        cfg.direct,
        cfg.max_tokens,
        cfg.batch_size,
        soft=cfg.soft,
        allow_missing_reference=cfg.allow_missing_reference,
        cpu_kernels=cfg.cpu_kernels,
    )
    try:
        records = judge.judge(prompts, responses, refs)
    except (KeyError, IndexError) as err:  # a template field the rows do not have
        raise StageError(f"--template {cfg.template}: unknown field {err}.") from None
    write_jsonl(cfg.output, [{"line": n, **r} for n, r in zip(lines, records, strict=True)])
    scored = [r["score"] for r in records if r["score"] is not None]
    metrics = {"n_rows": len(records), "n_unparsed": len(records) - len(scored)}
    if scored:
        metrics["mean_score"] = round(sum(scored) / len(scored), 4)
    soft = [r["soft_score"] for r in records if r.get("soft_score") is not None]
    if cfg.soft:
        metrics["n_soft"] = len(soft)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    return config_parser(ScoreConfig, "src.score", __doc__, None)


def main(argv: list[str] | None = None) -> int:
    return stage_main(build_parser(), ScoreConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
