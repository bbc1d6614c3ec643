"""Deterministic generator of a sample GenRM SFT dataset (the embedded default).

Each row is in mlx-lm's chat format: the user turn holds a task, a candidate response and a
grading instruction; the assistant turn holds a short critique and a final verdict line
(``Score: N/10`` by default; ``generate_rows(verdict=...)`` writes the other formats of
``src/verdicts.py``).
Every task has a ground truth a program can verify, so each row also carries its true label in
``metadata`` (training ignores it; the evaluate stage uses it).

Same seed, same bytes: the generator only uses ``random.Random(seed)`` and formats floats
explicitly.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..judging.prompts import judge_prompt, pairwise_prompt
from ..judging.verdicts import FORMATS

# Correct responses get 8-10, incorrect ones 1-3: a wide margin, so a verdict is well-defined.
CORRECT_SCORES = (8, 9, 10)
INCORRECT_SCORES = (1, 2, 3)

# The verdict values the generator writes for a correct / an incorrect response, per format
# (``--verdict``); the verdict line itself is the format's template in src/judging/verdicts.py.
VERDICTS = {
    "score10": (CORRECT_SCORES, INCORRECT_SCORES),
    "yes_no": (("Yes",), ("No",)),
    "result5": ((4, 5), (1, 2)),
    "rating10": ((8, 9, 10), (1, 2, 3)),
}


@dataclass(frozen=True)
class Task:
    kind: str
    question: str
    answer: str
    wrong: Callable[[random.Random], str]


def _arithmetic(rng: random.Random) -> Task:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]

    def wrong(r: random.Random) -> str:
        return str(value + r.choice([-10, -2, -1, 1, 2, 10]))

    return Task("arithmetic", f"Compute {a} {op} {b}.", str(value), wrong)


_UNITS = [
    ("km", "m", 1000),
    ("m", "cm", 100),
    ("kg", "g", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("liters", "milliliters", 1000),
]


def _conversion(rng: random.Random) -> Task:
    src, dst, factor = rng.choice(_UNITS)
    amount = rng.randint(1, 40) * rng.choice([1, 5]) / rng.choice([1, 2, 4])
    value = amount * factor

    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0")

    def wrong(r: random.Random) -> str:
        return fmt(value * r.choice([0.1, 10, 0.5, 2]) + r.choice([0, 1]))

    return Task(
        "conversion", f"Convert {fmt(amount)} {src} to {dst}.", f"{fmt(value)} {dst}", wrong
    )


def _sorting(rng: random.Random, n: int | None = None) -> Task:
    n = n or rng.randint(4, 9)
    nums = [rng.randint(0, 999) for _ in range(n)]
    descending = rng.random() < 0.3
    order = "descending" if descending else "ascending"
    answer = sorted(nums, reverse=descending)

    def wrong(r: random.Random) -> str:
        bad = list(answer)
        i, j = r.sample(range(len(bad)), 2)
        if bad[i] == bad[j]:
            bad[i] += 1
        bad[i], bad[j] = bad[j], bad[i]
        return ", ".join(map(str, bad))

    question = f"Sort in {order} order: {', '.join(map(str, nums))}."
    return Task("sorting", question, ", ".join(map(str, answer)), wrong)


_WORDS = [
    "apple",
    "banana",
    "cherry",
    "planet",
    "garden",
    "window",
    "river",
    "silver",
    "orange",
    "pencil",
    "rocket",
    "marble",
    "forest",
    "candle",
    "bridge",
    "dragon",
    "winter",
    "summer",
    "castle",
    "anchor",
    "violet",
    "meadow",
    "thunder",
]


def _string(rng: random.Random) -> Task:
    word = rng.choice(_WORDS)
    kind = rng.choice(["reverse", "upper", "vowels", "length"])
    if kind == "reverse":
        question, answer = f"Reverse the string '{word}'.", word[::-1]
    elif kind == "upper":
        question, answer = f"Write '{word}' in upper case.", word.upper()
    elif kind == "vowels":
        question, answer = f"How many vowels are in '{word}'?", str(sum(c in "aeiou" for c in word))
    else:
        question, answer = f"How many letters are in '{word}'?", str(len(word))

    def wrong(r: random.Random) -> str:
        if answer.isdigit():
            return str(int(answer) + r.choice([-1, 1, 2]))
        chars = list(answer)
        i, j = r.sample(range(len(chars)), 2)
        if chars[i] == chars[j]:
            return answer[:-1]
        chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)

    return Task("string", question, answer, wrong)


_MAKERS = (_arithmetic, _conversion, _sorting, _string)

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _weekday(rng: random.Random) -> Task:
    day, ahead = rng.randrange(7), rng.randint(1, 20)
    answer = _DAYS[(day + ahead) % 7]

    def wrong(r: random.Random) -> str:
        return _DAYS[(day + ahead + r.choice([-1, 1, 2])) % 7]

    return Task("weekday", f"What day comes {ahead} days after {_DAYS[day]}?", answer, wrong)


def _largest(rng: random.Random) -> Task:
    nums = rng.sample(range(1, 200), rng.randint(4, 7))
    answer = max(nums)

    def wrong(r: random.Random) -> str:
        return str(r.choice([n for n in nums if n != answer]))

    question = f"What is the largest number in: {', '.join(map(str, nums))}?"
    return Task("largest", question, str(answer), wrong)


def _letter_count(rng: random.Random) -> Task:
    word = rng.choice(_WORDS)
    letter = rng.choice(sorted(set(word)))
    answer = word.count(letter)

    def wrong(r: random.Random) -> str:
        return str(answer + r.choice([1, 2]) if answer < 2 else answer + r.choice([-1, 1]))

    return Task(
        "letter_count", f"How many times does '{letter}' appear in '{word}'?", str(answer), wrong
    )


# Task families that never reach the training data: the evaluate stage's held-out (ood_*) rows.
HELD_OUT_MAKERS = (_weekday, _largest, _letter_count)
# The trained families that have free forms (sorted lists stay bare): the evaluate stage's
# free-form rows (ff_*), every response free-form, tasks drawn from a stream of their own.
FREE_FORM_MAKERS = (_arithmetic, _conversion, _string)


def _free_form(task: Task, final: str, correct: bool, rng: random.Random) -> str | None:
    """A free-form response whose final answer is ``final``: the answer inside a sentence, an
    equivalent form (``7.5`` as ``7.50``, ``42`` as ``42.0``), a short worked solution ending in
    it, or (wrong rows) a right intermediate step followed by a wrong final answer. None where
    the task has no free form here (sorted lists stay bare)."""
    if task.kind == "sorting":
        return None
    styles = ["sentence", "sentence", "equivalent"]
    worked = re.fullmatch(r"Compute (\d+) ([-+*]) (\d+)\.", task.question)
    if worked:
        styles += ["worked", "worked"] + ([] if correct else ["right_step_wrong_end"] * 2)
    style = rng.choice(styles)
    if style == "equivalent":
        number = re.match(r"-?\d+(\.\d+)?", final)
        if number is None or not correct:
            style = "sentence"
        else:
            text = number.group(0)
            same = f"{text}0" if "." in text else f"{text}.0"
            return same + final[number.end() :]
    if style == "sentence":
        return rng.choice(
            (
                "The answer is {}.",
                "Answer: {}",
                "After working it out, I get {}.",
                "I believe the result is {}.",
            )
        ).format(final)
    a, op, b = worked.groups()
    if style == "worked":
        steps = f"{a} {op} {b} = {final}"
        return rng.choice((steps, f"First, {steps}. So the answer is {final}."))
    return f"{a} {op} {b} = {task.answer}, so the answer is {final}."


def _critique_body(task: Task, response: str, correct: bool, reference: bool) -> str:
    if reference:  # restate, compare, conclude
        verdict = (
            "matches the reference, so the response is correct"
            if correct
            else "does not match the reference, so the response is wrong"
        )
        if task.kind == "sorting":
            # Two lists of the same numbers in another order read as equal to a small judge: the
            # critique walks them pair by pair (response/reference) up to the first difference,
            # each pair called "same" or "differ" right after its two numbers are written; the
            # conclusion follows the last of those words (docs/default-judge.md).
            pairs = []
            for got, want in zip(response.split(", "), task.answer.split(", "), strict=True):
                same = got == want
                pairs.append(f"{got}/{want} {'same' if same else 'differ'}")
                if not same:
                    break
            return f"Pairs: {', '.join(pairs)}; it {verdict}."
        return (
            f"The response gives {response}. The reference answer is {task.answer}; it {verdict}."
        )
    if task.kind == "sorting":
        # Long lists are not repeated in the critique: the judge states where it looked.
        if correct:
            return "The response lists the numbers in the requested order and every number is kept."
        return "The response is not in the requested order: two numbers are swapped."
    said = f"The response gives {response}."
    if correct:
        return f"{said} The correct answer is {task.answer}, so the response is correct."
    return f"{said} The correct answer is {task.answer}, so the response is wrong."


def _row(
    task_id: str,
    task: Task,
    response: str,
    correct: bool,
    rng: random.Random,
    reference: bool = False,
    verdict: str = "score10",
    direct: bool = False,
    final: str | None = None,
) -> dict:
    """One pointwise row; ``final``: the final answer of a free-form ``response``."""
    good, bad = VERDICTS[verdict]
    value = rng.choice(good if correct else bad)
    # A free-form response is critiqued by its final answer, in the words a bare one gets: one
    # template to learn, not two (a second wording, "they match", split the comparison at 120
    # updates and the judge leaned to one verdict: docs/default-judge.md).
    body = _critique_body(task, response if final is None else final, correct, reference)
    critique = "" if direct else f"Critique: {body}\n"
    critique += FORMATS[verdict].template.format(value)
    prompt = judge_prompt(
        task.question, response, verdict, task.answer if reference else None, direct
    )
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": critique},
        ],
        "metadata": {
            "task_id": task_id,
            "task_type": task.kind,
            "label": int(correct),
            "score": {"Yes": 1, "No": 0}.get(value, value),
            # what the exact-match rule compares (evaluate's exact_match_accuracy)
            "response": response,
            "reference": task.answer,
            **({"free_form": True} if final is not None else {}),
        },
    }


def _pairwise_row(
    task_id: str,
    task: Task,
    wrong: str,
    a_correct: bool,
    reference: bool = False,
    direct: bool = False,
) -> dict:
    """Task with a correct and a wrong response; ``a_correct`` puts the correct one first."""
    a, b = (task.answer, wrong) if a_correct else (wrong, task.answer)
    good, bad = ("A", "B") if a_correct else ("B", "A")
    truth = "the reference answer" if reference else "the correct answer"
    if task.kind == "sorting":
        body = f"Response {good} matches {truth}; Response {bad} has two numbers swapped."
    else:
        body = (
            f"Response A gives {a} and Response B gives {b}. {truth.capitalize()} is "
            f"{task.answer}, so Response {good} is correct and Response {bad} is wrong."
        )
    prompt = pairwise_prompt(task.question, a, b, task.answer if reference else None, direct)
    critique = "" if direct else f"Critique: {body}\n"
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": critique + FORMATS["pairwise"].template.format(good)},
        ],
        "metadata": {
            "task_id": task_id,
            "task_type": task.kind,
            "label": int(a_correct),
            "score": int(a_correct),
            "response_a": a,
            "response_b": b,
        },
    }


def generate_rows(
    n_rows: int,
    seed: int,
    long_fraction: float = 0.015,
    reference: bool = False,
    verdict: str = "score10",
    direct: float = 0.0,
    free_form: float = 0.0,
    makers: tuple = _MAKERS,
    prefix: str = "t",
    stream: str | None = None,
) -> Iterator[dict]:
    """Yield ``n_rows`` GenRM rows; correct and incorrect candidates are balanced.
    ``reference``: reference-guided rows (the correct answer in the prompt). ``verdict``: the
    verdict format the critiques end with (``VERDICTS`` or ``pairwise``: each row compares a
    correct and a wrong response, the correct one first in half the rows). ``direct``: the
    fraction of rows that ask for the verdict line alone, without a critique (their instruction
    says so): the model learns both ways of judging, as Zhang et al.'s GenRM does, and its
    verdict probability at the start of a reply (the direct score: one forward pass, no
    generation) means something. Rows that ask for a critique always get one, so greedy
    generation on them writes it. ``direct=0`` gives the same bytes as before it existed.
    ``free_form``: the fraction of pointwise rows whose response is free-form (``_free_form``;
    the label is still decided by the program: the final answer against the truth), drawn from
    a stream of its own, so ``free_form=0`` gives the same bytes as before too. ``makers``: the
    task families (``HELD_OUT_MAKERS`` for the held-out rows, task ids starting ``prefix``).
    ``stream``: None draws from ``seed`` alone (the training and held-out rows' bytes); a name
    draws another sequence of tasks from the same seed (the free-form rows: ``"ff"``).

    A task gets 1-3 candidate responses (pairwise: 1-3 comparisons), so pairwise comparisons and
    best-of-N exist. About ``long_fraction`` of the tasks are sorting tasks over hundreds of
    numbers, long enough (> 2048 tokens) for the split stage's length filter to have real work;
    about 1% of rows are exact duplicates, as in real scraped data, for the split stage's
    de-duplication.
    """
    if verdict != "pairwise" and verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, pairwise; got {verdict!r}")
    key = seed if stream is None else f"{stream}-{seed}"
    rng = random.Random(key)
    short = random.Random(f"direct-{key}")  # its own stream: the rows stay the same
    free = random.Random(f"free-{key}")  # likewise
    produced = 0
    task_index = 0
    next_correct = True
    while produced < n_rows:
        if rng.random() < long_fraction:
            task = _sorting(rng, n=rng.randint(500, 900))
        else:
            task = rng.choice(makers)(rng)
        task_id = f"{prefix}{seed}-{task_index:06d}"
        task_index += 1
        for _ in range(rng.choice([1, 1, 2, 2, 3])):
            correct = next_correct
            next_correct = not next_correct
            brief = bool(direct) and short.random() < direct
            if verdict == "pairwise":
                wrong = task.wrong(rng)
                wrong = wrong if wrong != task.answer else task.answer + "0"
                row = _pairwise_row(task_id, task, wrong, correct, reference, brief)
            else:
                response = task.answer if correct else task.wrong(rng)
                if not correct and response == task.answer:  # a "wrong" answer that is right
                    response = task.answer + "0"
                final = None
                if free_form and free.random() < free_form:
                    text = _free_form(task, response, correct, free)
                    final, response = (response, text) if text is not None else (None, response)
                row = _row(task_id, task, response, correct, rng, reference, verdict, brief, final)
            yield row
            produced += 1
            if produced < n_rows and rng.random() < 0.01:
                yield row
                produced += 1
            if produced >= n_rows:
                return


def render_text(row: dict) -> str:
    """Plain text of a row, used as tokenizer training corpus."""
    return "\n".join(m["content"] for m in row["messages"])
