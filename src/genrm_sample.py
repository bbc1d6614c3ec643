"""Deterministic generator of a sample GenRM SFT dataset (the embedded default).

Each row is in mlx-lm's chat format: the user turn holds a task, a candidate response and a
grading instruction; the assistant turn holds a short critique and a final ``Score: N/10`` line.
Every task has a ground truth a program can verify, so each row also carries its true label in
``metadata`` (training ignores it; the evaluate stage uses it).

Same seed, same bytes: the generator only uses ``random.Random(seed)`` and formats floats
explicitly.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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

# Correct responses get 8-10, incorrect ones 1-3: a wide margin, so a verdict is well-defined.
CORRECT_SCORES = (8, 9, 10)
INCORRECT_SCORES = (1, 2, 3)


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


def _critique(
    task: Task, response: str, correct: bool, rng: random.Random, reference: bool = False
) -> tuple[str, int]:
    if reference:  # restate, compare, conclude
        verdict = (
            "matches the reference, so the response is correct"
            if correct
            else "does not match the reference, so the response is wrong"
        )
        if task.kind == "sorting":  # lists are not restated: ~110 tokens, over eval.max_tokens
            how = "in the same order as" if correct else "with two numbers swapped against"
            body = f"The response lists the numbers {how} the reference answer; it {verdict}."
        else:
            body = (
                f"The response gives {response}. The reference answer is {task.answer}; "
                f"it {verdict}."
            )
    elif task.kind == "sorting":
        # Long lists are not repeated in the critique: the judge states where it looked.
        checked = "The response lists the numbers in the requested order"
        if correct:
            body = f"{checked} and every number is kept."
        else:
            body = "The response is not in the requested order: two numbers are swapped."
    else:
        said = f"The response gives {response}."
        if correct:
            body = f"{said} The correct answer is {task.answer}, so the response is correct."
        else:
            body = f"{said} The correct answer is {task.answer}, so the response is wrong."
    score = rng.choice(CORRECT_SCORES if correct else INCORRECT_SCORES)
    return f"Critique: {body}\nScore: {score}/10", score


def _row(
    task_id: str,
    task: Task,
    response: str,
    correct: bool,
    rng: random.Random,
    reference: bool = False,
) -> dict:
    critique, score = _critique(task, response, correct, rng, reference)
    if reference:
        prompt = (
            f"Task: {task.question}\n\nReference answer: {task.answer}\n\n"
            f"Response: {response}\n\n{REFERENCE_INSTRUCTION}"
        )
    else:
        prompt = f"Task: {task.question}\n\nResponse: {response}\n\n{GRADING_INSTRUCTION}"
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": critique},
        ],
        "metadata": {
            "task_id": task_id,
            "task_type": task.kind,
            "label": int(correct),
            "score": score,
        },
    }


def generate_rows(
    n_rows: int, seed: int, long_fraction: float = 0.015, reference: bool = False
) -> Iterator[dict]:
    """Yield ``n_rows`` GenRM rows; correct and incorrect candidates are balanced.
    ``reference``: reference-guided rows (the correct answer in the prompt).

    A task gets 1-3 candidate responses, so pairwise comparisons exist. About ``long_fraction``
    of the tasks are sorting tasks over hundreds of numbers, long enough (> 2048 tokens) for the
    split stage's length filter to have real work; about 1% of rows are exact duplicates, as in
    real scraped data, for the split stage's de-duplication.
    """
    rng = random.Random(seed)
    produced = 0
    task_index = 0
    next_correct = True
    while produced < n_rows:
        if rng.random() < long_fraction:
            task = _sorting(rng, n=rng.randint(500, 900))
        else:
            task = rng.choice(_MAKERS)(rng)
        task_id = f"t{seed}-{task_index:06d}"
        task_index += 1
        for _ in range(rng.choice([1, 1, 2, 2, 3])):
            correct = next_correct
            next_correct = not next_correct
            response = task.answer if correct else task.wrong(rng)
            if not correct and response == task.answer:  # a "wrong" answer that happens to be right
                response = task.answer + "0"
            row = _row(task_id, task, response, correct, rng, reference)
            yield row
            produced += 1
            if produced < n_rows and rng.random() < 0.01:
                yield row
                produced += 1
            if produced >= n_rows:
                return


def dumps(row: dict) -> str:
    """One canonical JSONL line (sorted keys, UTF-8 kept as is)."""
    return json.dumps(row, ensure_ascii=False, sort_keys=True)


def render_text(row: dict) -> str:
    """Plain text of a row, used as tokenizer training corpus."""
    return "\n".join(m["content"] for m in row["messages"])
