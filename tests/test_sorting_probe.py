"""The sorting probe (benchmarks/sorting_probe.py): every label re-checked from the prompt."""

from __future__ import annotations

import json
import re
from collections import Counter

from benchmarks.sorting_probe import count, write


def _lists(row: dict) -> tuple[list[int], list[int], bool]:
    user = row["messages"][0]["content"]
    numbers = [int(x) for x in re.search(r"order: (.*?)\.\n", user).group(1).split(", ")]
    reference = [int(x) for x in re.search(r"Reference answer: (.*?)\n", user).group(1).split(", ")]
    response = [int(x) for x in re.search(r"Response: (.*?)\n", user).group(1).split(", ")]
    descending = user.startswith("Task: Sort in descending")
    assert reference == sorted(numbers, reverse=descending)
    return reference, response, descending


def test_probe_rows_are_labelled_by_what_their_lists_are(tmp_path, capsys):
    write(tmp_path)
    swapped = [json.loads(line) for line in (tmp_path / "swapped.jsonl").open()]
    altered = [json.loads(line) for line in (tmp_path / "altered.jsonl").open()]
    assert len(swapped) == len(altered) == 200
    assert Counter(r["metadata"]["label"] for r in altered) == {0: 100, 1: 100}
    for s, a in zip(swapped, altered, strict=True):
        reference, response, _ = _lists(s)
        if s["metadata"]["label"] == 1:
            assert response == reference and a == s
            continue
        assert sorted(response) == sorted(reference) and response != reference  # a swap
        reference, changed, descending = _lists(a)
        assert changed == sorted(changed, reverse=descending) and changed != reference
        assert len(changed) == len(reference) and a["metadata"]["response"] == ", ".join(
            map(str, changed)
        )
        assert a["messages"][1]["content"] == "Is the answer correct (Yes/No)? No"
    judged = tmp_path / "j.jsonl"
    rows = [{"label": 0, "score": 0.0}, {"label": 0, "score": 1.0}, {"label": 1, "score": None}]
    judged.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    count(judged)
    assert capsys.readouterr().out.splitlines() == [
        "wrong lists 2: judged wrong 1, judged right 1, no verdict 0",
        "right lists 1: judged right 0, judged wrong 0, no verdict 1",
    ]
