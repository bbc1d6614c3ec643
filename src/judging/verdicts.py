"""Verdict formats a GenRM writes, and how each maps to a number.

Every format reads the *last* verdict in a judgement (a critique may quote an earlier one) into a
raw value on its own scale, and from there into a score in [0, 1] and a binary verdict:

| name       | the verdict looks like                          | raw values      | positive at |
|------------|-------------------------------------------------|-----------------|-------------|
| `score10`  | `Score: 8/10` (this project's sample data)      | 0-10            | >= 6        |
| `yes_no`   | `Is the answer correct (Yes/No)? Yes` (Zhang et al. 2024) | Yes=1, No=0 | Yes |
| `result5`  | `[RESULT] 4` (Prometheus 2, absolute)           | 1-5             | >= 4        |
| `rating10` | `Rating: [[7]]` (Auto-J, MT-Bench single)       | 1-10            | >= 6        |
| `pairwise` | `[[A]]` / `[[B]]` / `[[C]]` tie (MT-Bench, RewardBench) | A=1, B=0, C=0.5 | A      |
| `regex`    | your pattern with one group, your [min, max]    | min-max         | >= midpoint |

A value outside the format's range (`Score: 11/10`) is not a verdict: it parses to None, and an
unparsed judgement is counted as such by every metric, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..runtime import DataError, StageError

_NUMBER = r"(\d+(?:\.\d+)?)"


@dataclass(frozen=True)
class VerdictFormat:
    name: str
    pattern: re.Pattern
    low: float
    high: float
    positive_at: float  # raw value at or above which the verdict is positive (correct / A wins)
    # Categorical formats: the verdict word -> raw value. Numeric formats: empty.
    words: dict[str, float] = field(default_factory=dict)
    # How the verdict is written, "{}" for the value: direct (generation-free) scoring feeds the
    # text before "{}" and reads the model's distribution over the values. None: not scorable.
    template: str | None = None

    def parse(self, text: str | None) -> float | None:
        """Raw value of the last verdict in ``text``; None when there is none in range."""
        found = self.pattern.findall(text or "")
        if not found:
            return None
        last = found[-1]
        try:
            value = self.words[last] if self.words else float(last)
        except ValueError:  # a regex group that captured something other than a number
            return None
        return value if self.low <= value <= self.high else None

    def unit(self, raw: float) -> float:
        """A raw value on [0, 1] (the score a reward function returns)."""
        return (raw - self.low) / (self.high - self.low)

    def positive(self, raw: float) -> bool:
        return raw >= self.positive_at

    def direct_values(self) -> dict[str, float]:
        """Value text -> raw value, for every verdict direct scoring weighs."""
        if self.words:
            return dict(self.words)
        return {str(v): float(v) for v in range(int(self.low), int(self.high) + 1)}


FORMATS: dict[str, VerdictFormat] = {
    f.name: f
    for f in (
        VerdictFormat(
            "score10", re.compile(rf"Score:\s*{_NUMBER}\s*/\s*10\b"), 0, 10, 6, {}, "Score: {}/10"
        ),
        VerdictFormat(
            "yes_no",
            re.compile(r"\(Yes/No\)\??\s*:?\s*\**(Yes|No)\b"),
            0,
            1,
            1,
            {"Yes": 1.0, "No": 0.0},
            "Is the answer correct (Yes/No)? {}",
        ),
        VerdictFormat(
            "result5", re.compile(rf"\[RESULT\]\s*{_NUMBER}"), 1, 5, 4, {}, "[RESULT] {}"
        ),
        VerdictFormat(
            "rating10", re.compile(rf"Rating:\s*\[\[{_NUMBER}\]\]"), 1, 10, 6, {}, "Rating: [[{}]]"
        ),
        VerdictFormat(
            "pairwise",
            re.compile(r"\[\[([ABC])\]\]"),
            0,
            1,
            1,
            {"A": 1.0, "B": 0.0, "C": 0.5},
            "[[{}]]",
        ),
    )
}
NAMES = (*FORMATS, "regex")
# At most this share of reference judgements may lack a parsable verdict ("nearly all" parse).
UNPARSED_REFERENCES_ALLOWED = 0.05


def regex_format(pattern: str, low: float, high: float) -> VerdictFormat:
    """A user's numeric verdict: ``pattern`` has one group that captures the number."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise StageError(f"--verdict-pattern {pattern!r} is not a valid regex: {err}.") from None
    if compiled.groups != 1:
        raise StageError(
            f"--verdict-pattern {pattern!r} must have exactly one group, the number "
            r"(e.g. 'Grade: (\d+)'); it has " + str(compiled.groups) + "."
        )
    if not low < high:
        raise StageError(f"--verdict-min ({low}) must be below --verdict-max ({high}).")
    return VerdictFormat("regex", compiled, low, high, (low + high) / 2)


def get_format(name: str, pattern: str = "", low: float = 0.0, high: float = 10.0) -> VerdictFormat:
    if name == "regex":
        return regex_format(pattern, low, high)
    if name not in FORMATS:
        raise StageError(f"--verdict must be one of auto, {', '.join(NAMES)}; got {name!r}.")
    return FORMATS[name]


def detect(references: list[str]) -> VerdictFormat | None:
    """The built-in format that parses (nearly) all ``references``, or None."""
    n = len(references)
    counts = {f: sum(FORMATS[f].parse(t) is not None for t in references) for f in FORMATS}
    best = max(counts, key=counts.get)
    return FORMATS[best] if n and n - counts[best] <= UNPARSED_REFERENCES_ALLOWED * n else None


def resolve(
    name: str,
    references: list[tuple[int, str]],
    path,
    pattern: str = "",
    low: float = 0.0,
    high: float = 10.0,
) -> VerdictFormat:
    """The verdict format of ``references`` (``(line, reference judgement)`` pairs): ``name``,
    checked, or with ``auto`` the built-in format that parses (nearly) all of them. Raises a
    DataError naming the file, what each format parsed and the fix, rather than return a format
    whose metrics would compare the judge with nothing."""
    n = len(references)
    allowed = UNPARSED_REFERENCES_ALLOWED * n
    counts = {f: sum(FORMATS[f].parse(t) is not None for _, t in references) for f in FORMATS}
    tried = ", ".join(f"{f} {c}/{n}" for f, c in counts.items())
    if name == "auto":
        found = detect([t for _, t in references])
        if found is not None:
            return found
        line, text = _first_unparsed(FORMATS[max(counts, key=counts.get)], references)
        raise DataError(
            path,
            line,
            f"no verdict format parses (nearly) all {n} reference judgements ({tried}; this one "
            f"ends {text[-60:]!r})",
            "end every reference judgement with one verdict format, or set eval.verdict=regex "
            "with eval.verdict_pattern (one group: the number) and eval.verdict_min/max",
        )
    fmt = get_format(name, pattern, low, high)
    parsed = sum(fmt.parse(t) is not None for _, t in references)
    if n - parsed > allowed:
        line, text = _first_unparsed(fmt, references)
        likely = max(counts, key=counts.get)
        hint = f"eval.verdict={likely} or auto" if counts[likely] > parsed else "eval.verdict=auto"
        raise DataError(
            path,
            line,
            f"eval.verdict={name} parses {parsed} of {n} reference judgements (this one ends "
            f"{text[-60:]!r}; the built-in formats parse: {tried})",
            f"set {hint}, or fix the references",
        )
    return fmt


def _first_unparsed(fmt: VerdictFormat, references: list[tuple[int, str]]) -> tuple[int, str]:
    return next(((line, t) for line, t in references if fmt.parse(t) is None), references[0])
