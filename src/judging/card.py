"""The judge's card: what a trained judge reads and writes, kept beside its weights.

The train stage writes ``genrm_judge.json`` into the adapter folder from its training rows, and
fuse copies it into the merged model, so the judge carries its own format: ``src.score``,
``GenRM`` and ``ServedGenRM`` read it and prompt the judge the way it was trained, unless a flag
says otherwise. A model folder without a card (any other model) works with explicit flags.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..runtime import DataError, write_json
from .prompts import VERDICT_ENDINGS, judge_template
from .verdicts import detect

CARD = "genrm_judge.json"


@dataclass(frozen=True)
class JudgeCard:
    verdict: str  # verdict format name (src/judging/verdicts.py)
    template: str | None  # the user turn with {prompt}, {response} ({reference}); None: not ours
    reference: bool  # whether the prompts carry a reference answer
    n_rows: int  # training rows it was read from
    data_sha256: str  # of the training data file

    @classmethod
    def from_rows(cls, rows: list[dict], data_sha256: str) -> JudgeCard | None:
        """The card of chat rows ending with a judgement; None when they are not judge data
        (no verdict format parses nearly all of their last turns)."""
        chats = [r["messages"] for r in rows if "messages" in r and len(r["messages"]) > 1]
        if len(chats) != len(rows):
            return None
        fmt = detect([m[-1]["content"] for m in chats])
        if fmt is None:
            return None
        users = [m[-2]["content"] for m in chats]
        template, reference = _prompt_template(fmt.name, users)
        if template is None:  # a prompt of the user's own: does it show a reference answer?
            reference = sum("reference" in u.lower() for u in users) > len(users) / 2
        return cls(fmt.name, template, reference, len(rows), data_sha256)

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / CARD, asdict(self))

    @classmethod
    def read(cls, folder: str | Path) -> JudgeCard | None:
        """The card in a model or adapter folder; None where there is none."""
        path = Path(folder) / CARD
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise DataError(
                path, None, f"not a judge card ({err})", "delete it or re-run the fuse stage"
            ) from None


def _prompt_template(verdict: str, users: list[str]) -> tuple[str | None, bool]:
    """The built-in judge prompt (src/judging/prompts.py) that most user turns follow, and
    whether it carries a reference; (None, False) when none does."""
    if verdict not in VERDICT_ENDINGS:
        return None, False
    best = (0, None, False)
    for reference in (True, False):
        template = judge_template(verdict, reference)
        pattern = re.escape(template.replace("{{", "{").replace("}}", "}"))
        for field in ("prompt", "response", "reference"):
            pattern = pattern.replace(re.escape("{" + field + "}"), "(.*)")
        matcher = re.compile(pattern, re.DOTALL)
        hits = sum(matcher.fullmatch(u) is not None for u in users)
        best = max(best, (hits, template, reference), key=lambda b: b[0])
    hits, template, reference = best
    return (template, reference) if hits > len(users) / 2 else (None, False)
