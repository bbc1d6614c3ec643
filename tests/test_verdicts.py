"""Verdict formats: parsing, detection, and the arithmetic of the judge's metrics."""

from __future__ import annotations

import pytest

from src.data.sample import generate_rows
from src.judging.metrics import best_of_n, pearson, spearman
from src.judging.prompts import swap_pair
from src.judging.verdicts import FORMATS, regex_format, resolve
from src.runtime import DataError, StageError


@pytest.mark.parametrize(
    "fmt, text, raw",
    [
        ("score10", "Critique: fine.\nScore: 8/10", 8.0),
        ("score10", "Score: 3/10 ... on reflection Score: 9 / 10", 9.0),  # the last one counts
        ("score10", "Score: 7.5/10", 7.5),
        ("score10", "Score: 11/10", None),  # out of range
        ("score10", "Score: /10", None),
        ("score10", "Score: 8/100", None),
        ("score10", "", None),
        ("yes_no", "Is the answer correct (Yes/No)? Yes", 1.0),
        ("yes_no", "Verification: Is the answer correct (Yes/No)? No", 0.0),
        ("yes_no", "Is the answer correct (Yes/No)? **Yes**", 1.0),
        ("yes_no", "Yes, it is correct.", None),  # a bare Yes in a critique is not the verdict
        ("yes_no", "Is the answer correct (Yes/No)? Maybe", None),
        ("result5", "Feedback: good. [RESULT] 4", 4.0),
        ("result5", "[RESULT] 5", 5.0),
        ("result5", "[RESULT] 0", None),
        ("result5", "[RESULT] 6", None),
        ("result5", "[RESULT]", None),
        ("rating10", "Rating: [[7]]", 7.0),
        ("rating10", "Rating: [[10]]", 10.0),
        ("rating10", "Rating: [[0]]", None),
        ("rating10", "Rating: [7]", None),
        ("pairwise", "Assistant A is more helpful. [[A]]", 1.0),
        ("pairwise", "[[B]]", 0.0),
        ("pairwise", "a tie: [[C]]", 0.5),
        ("pairwise", "[[A]] at first, but finally [[B]]", 0.0),
        ("pairwise", "[[D]]", None),
        ("pairwise", "A is better", None),
    ],
)
def test_parse(fmt, text, raw):
    assert FORMATS[fmt].parse(text) == raw


def test_units_and_verdicts():
    score10, result5, yes_no = FORMATS["score10"], FORMATS["result5"], FORMATS["yes_no"]
    assert score10.unit(8) == 0.8 and result5.unit(1) == 0.0 and result5.unit(5) == 1.0
    assert score10.positive(6) and not score10.positive(5.5)
    assert result5.positive(4) and not result5.positive(3)
    assert yes_no.positive(1.0) and not yes_no.positive(0.0)
    assert not FORMATS["pairwise"].positive(0.5)  # a tie is not a win


def test_regex_format():
    fmt = regex_format(r"Grade: (\d+) of 5", 0, 5)
    assert fmt.parse("Grade: 2 of 5. Grade: 4 of 5") == 4.0
    assert fmt.parse("Grade: 7 of 5") is None and fmt.parse("none") is None
    assert fmt.positive(2.5) and not fmt.positive(2)
    assert regex_format("Verdict: (good|bad)", 0, 1).parse("Verdict: good") is None
    for pattern, low, high, message in [
        ("Grade: (\\d", 0, 5, "is not a valid regex"),
        ("Grade: \\d", 0, 5, "exactly one group"),
        ("(\\d)(\\d)", 0, 5, "exactly one group"),
        ("(\\d)", 5, 5, "must be below"),
    ]:
        with pytest.raises(StageError, match=message):
            regex_format(pattern, low, high)


@pytest.mark.parametrize("verdict", ["score10", "yes_no", "result5", "rating10", "pairwise"])
def test_auto_detects_each_format_from_the_references(verdict):
    rows = generate_rows(200, seed=1, long_fraction=0.0, verdict=verdict)
    refs = [(i + 1, r["messages"][-1]["content"]) for i, r in enumerate(rows)]
    assert resolve("auto", refs, "v.jsonl").name == verdict
    assert resolve(verdict, refs, "v.jsonl").name == verdict


def test_detection_tolerates_a_few_unparsed_references_and_no_more():
    refs = [(i + 1, f"Score: {i % 11}/10") for i in range(100)]
    few = refs[:95] + [(96 + i, "no verdict") for i in range(5)]
    assert resolve("auto", few, "v.jsonl").name == "score10"
    many = refs[:94] + [(95 + i, "no verdict") for i in range(6)]
    with pytest.raises(DataError) as err:
        resolve("auto", many, "v.jsonl")
    assert err.value.line == 95 and "score10 94/100" in err.value.what
    with pytest.raises(DataError, match="eval.verdict=score10 parses 94 of 100"):
        resolve("score10", many, "v.jsonl")


def test_best_of_n_arithmetic():
    tasks = ["a", "a", "a", "b", "b", "c", "d", "d"]
    scores = [9, 3, None, 5, 5, 7, None, 2]
    labels = [1, 0, 0, 1, 0, 1, 0, 1]
    got = best_of_n(tasks, scores, labels)
    # a: top 9 is correct (1); b: tie between a correct and a wrong one (0.5); c: one candidate,
    # not a best-of-N task; d: the unparsed one ranks last, so 2 is picked and correct (1)
    assert got["tasks"] == 3 and got["accuracy"] == pytest.approx(2.5 / 3)
    assert got["random"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert got["oracle"] == 1.0 and got["mean_n"] == pytest.approx(7 / 3)
    assert best_of_n(["a", "b"], [1, 2], [1, 0]) is None  # no task with several candidates


def test_correlations():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) is None and pearson([1], [2]) is None
    # Spearman only sees the order: monotone but not linear is still 1
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 10, 100, 1000]) < 0.95
    # ties share their average rank: ranks [0.5, 0.5, 2] vs [0, 1, 2]
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(pearson([0.5, 0.5, 2], [0, 1, 2]))


def test_swap_pair():
    prompt = "Task: Compute 5 + 7.\n\n[Response A]\n12\n\n[Response B]\n120\n\nWhich?"
    assert swap_pair(prompt, "12", "120") == (
        "Task: Compute 5 + 7.\n\n[Response A]\n120\n\n[Response B]\n12\n\nWhich?"
    )
    # a response that also occurs in the task: A is the last occurrence before B
    prompt = "Task: Sort 2, 1.\n\n[Response A]\n2, 1\n\n[Response B]\n1, 2\n\nWhich?"
    assert swap_pair(prompt, "2, 1", "1, 2") == (
        "Task: Sort 2, 1.\n\n[Response A]\n1, 2\n\n[Response B]\n2, 1\n\nWhich?"
    )
    assert swap_pair(prompt, "2, 1", "missing") is None
    assert swap_pair("B first then A", "A", "B") is None
