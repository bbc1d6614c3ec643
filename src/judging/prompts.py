"""The judge's prompt: what the sample judge is trained to read, and what ``GenRM`` asks it.

The user turn holds the task, the candidate response (and, for reference-guided grading, the
reference answer) and the grading instruction, which names the verdict line to end with.
"""

from __future__ import annotations

GRADING_INSTRUCTION = (
    "Judge whether the response solves the task correctly. "
    'Write a short critique, then end with a line "Score: N/10".'
)
# Reference-guided grading (as in MT-Bench's reference-guided judge): the prompt carries the
# correct answer, so the judge compares instead of solving. Fairer to a small model, and what a
# GenRM for verifiable tasks sees in practice.
REFERENCE_INSTRUCTION = (
    "Judge whether the response is correct by comparing it with the reference answer. "
    'Write a short critique, then end with a line "Score: N/10".'
)
# How the instruction ends, per pointwise verdict format (src/judging/verdicts.py reads them all).
VERDICT_ENDINGS = {
    "score10": 'end with a line "Score: N/10".',
    "yes_no": 'end with the line "Is the answer correct (Yes/No)?" and your answer.',
    "result5": 'end with "[RESULT] N", N from 1 to 5.',
    "rating10": 'end with "Rating: [[N]]", N from 1 to 10.',
}
# Default judgement length, in tokens: the sample judge's longest critique (a sorted list of nine
# numbers walked pair by pair, src/data/sample.py) and its verdict line take up to 118. A critique
# ends at the end-of-turn token, so a shorter one costs nothing for the longer limit.
MAX_JUDGEMENT_TOKENS = 128
PAIRWISE_INSTRUCTION = (
    "Decide which response solves the task correctly. Write a short critique, then end with "
    '"[[A]]" if Response A is better or "[[B]]" if Response B is better.'
)
PAIRWISE_DIRECT_INSTRUCTION = (
    "Decide which response solves the task correctly. Give no critique: write only "
    '"[[A]]" if Response A is better or "[[B]]" if Response B is better.'
)


def judge_prompt(
    question: str,
    response: str,
    verdict: str = "score10",
    reference: str | None = None,
    direct: bool = False,
) -> str:
    """The user turn the sample judge is trained on: the task, the candidate response (and the
    reference answer, for reference-guided grading), and the grading instruction (``direct``:
    the verdict line only, no critique)."""
    ask = (
        "Judge whether the response is correct by comparing it with the reference answer."
        if reference is not None
        else "Judge whether the response solves the task correctly."
    )
    if direct:
        what = VERDICT_ENDINGS[verdict].replace("end with", "write only", 1)
        instruction = f"{ask} Give no critique: {what}"
    elif verdict == "score10":  # the original wording, byte for byte
        instruction = REFERENCE_INSTRUCTION if reference is not None else GRADING_INSTRUCTION
    else:
        instruction = f"{ask} Write a short critique, then {VERDICT_ENDINGS[verdict]}"
    ref = f"Reference answer: {reference}\n\n" if reference is not None else ""
    return f"Task: {question}\n\n{ref}Response: {response}\n\n{instruction}"


def judge_template(verdict: str, reference: bool) -> str:
    """``judge_prompt`` as a template with ``{prompt}``, ``{response}`` (and ``{reference}``)."""
    text = judge_prompt("\0p", "\0r", verdict, "\0f" if reference else None)
    text = text.replace("{", "{{").replace("}", "}}")
    return (
        text.replace("\0p", "{prompt}").replace("\0r", "{response}").replace("\0f", "{reference}")
    )


def pairwise_prompt(
    question: str, a: str, b: str, reference: str | None = None, direct: bool = False
) -> str:
    """The user turn of a pairwise comparison: Response A, then Response B."""
    ref = f"Reference answer: {reference}\n\n" if reference is not None else ""
    ask = PAIRWISE_DIRECT_INSTRUCTION if direct else PAIRWISE_INSTRUCTION
    return f"Task: {question}\n\n{ref}[Response A]\n{a}\n\n[Response B]\n{b}\n\n{ask}"


def swap_pair(prompt: str, a: str, b: str) -> str | None:
    """``prompt`` with Response A (``a``) and Response B (``b``) exchanged, for judging both
    orders. A precedes B: B is its last occurrence, A the last one before B. None where they
    are not found in that order."""
    b_at = prompt.rfind(b)
    a_at = prompt.rfind(a, 0, b_at) if b_at >= 0 else -1
    if a_at < 0 or a_at + len(a) > b_at:
        return None
    return prompt[:a_at] + b + prompt[a_at + len(a) : b_at] + a + prompt[b_at + len(b) :]
