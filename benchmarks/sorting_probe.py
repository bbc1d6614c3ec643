"""How often the judge catches a wrong sorted list: 200 fresh reference-guided sorting rows.

The validation split holds about 8 wrong sorted lists per run, too few to measure the walk
(docs/default-judge.md). This writes two probe files of 200 rows each, 100 right and 100 wrong:

- ``swapped.jsonl``: wrong lists are the generator's own (two numbers swapped), from tasks the
  sample data never draws (their own stream);
- ``altered.jsonl``: the same tasks, each wrong list re-made sorted, one number of the reference
  replaced by another (a policy that sorts but changes a number): never in the training data.

    uv run python benchmarks/sorting_probe.py write OUT_DIR
    uv run python -m src.evaluate_genrm --model checkpoints/sft_merged_model \\
        --data OUT_DIR/swapped.jsonl --judgements-out OUT_DIR/swapped_judgements.jsonl \\
        --metrics OUT_DIR/swapped.json --batch-size 100 --max-tokens 128
    uv run python benchmarks/sorting_probe.py count OUT_DIR/swapped_judgements.jsonl

(and the same for ``altered``). ``count`` says, per label, how many verdicts are right, wrong,
or missing (a walk that loops to the token limit writes no verdict).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/...` runs
import src  # noqa: E402, F401  (the project's runtime set-up, before mlx)
from src.data.sample import _sorting, generate_rows
from src.data.sft import read_jsonl
from src.runtime import DataError, StageError, write_jsonl


def swapped_rows() -> list[dict]:
    return list(
        generate_rows(200, seed=7, long_fraction=0.0, reference=True, verdict="yes_no",
                      makers=(_sorting,), prefix="probe", stream="walkprobe")
    )  # fmt: skip


def altered(row: dict, rng: random.Random) -> dict:
    """A wrong row's response replaced by the reference with one number changed, re-sorted."""
    meta = row["metadata"]
    reference = [int(x) for x in meta["reference"].split(", ")]
    descending = "descending" in row["messages"][0]["content"].split("\n")[0]
    while True:
        bad = list(reference)
        # the position drawn before the number (`bad[i()] = v()` would draw v first)
        k = rng.randrange(len(bad))
        bad[k] = rng.randint(0, 999)
        bad.sort(reverse=descending)
        if bad != reference:
            break
    new = ", ".join(map(str, bad))
    user = row["messages"][0]["content"].replace(
        f"Response: {meta['response']}\n", f"Response: {new}\n"
    )
    # the generator's critique names the old response: the reference turn keeps its verdict alone
    verdict = row["messages"][1]["content"].splitlines()[-1]
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": verdict}]
    return {"messages": messages, "metadata": meta | {"response": new}}


def write(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = swapped_rows()
    rng = random.Random(11)
    changed = [altered(r, rng) if r["metadata"]["label"] == 0 else r for r in rows]
    for name, data in (("swapped", rows), ("altered", changed)):
        write_jsonl(out / f"{name}.jsonl", data)
    print(f"wrote {out}/swapped.jsonl and {out}/altered.jsonl: 200 rows each, 100 wrong")


def count(judgements: Path) -> None:
    rows = []
    for line, row in read_jsonl(judgements):
        if not {"label", "score"} <= row.keys():
            raise DataError(judgements, line, "no label or score", "pass evaluate's judgements")
        rows.append(row)
    for label, name in ((0, "wrong"), (1, "right")):
        part = [r for r in rows if r["label"] == label]
        right = sum(r["score"] == label for r in part)
        missing = sum(r["score"] is None for r in part)
        print(
            f"{name} lists {len(part)}: judged {name} {right}, "
            f"judged {'right' if label == 0 else 'wrong'} {len(part) - right - missing}, "
            f"no verdict {missing}"
        )


if __name__ == "__main__":
    commands = {"write": write, "count": count}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        sys.exit("usage: sorting_probe.py write OUT_DIR | count JUDGEMENTS.jsonl")
    try:
        commands[sys.argv[1]](Path(sys.argv[2]))
    except StageError as err:  # a missing or malformed file: its line and the fix, no traceback
        sys.exit(f"error: {err}")
