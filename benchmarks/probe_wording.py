"""Which comparison wording does the untrained base already read right?

For each validation row (reference-guided, ``metadata.response`` / ``metadata.reference``), the
base model reads the judge prompt and the start of a critique that restates both answers, and
the probe compares its logits for the two words that would conclude it (e.g. " identical" /
" different"). Reported: the AUC of that logit difference against the true label, per task
type (1.0: the base already ranks every equal pair above every unequal one; 0.5: no signal;
below 0.5: the wording's association runs the wrong way, which training must first undo).

    uv run python benchmarks/probe_wording.py --data data/processed/sft/sft_valid.jsonl

docs/default-judge.md ("The critique's wording and the sorting rows") has what it measured,
and what training with the better-read wording then did (it did not become the default).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import src  # noqa: E402, F401  (the fast BLAS before MLX)
from src.data.sft import read_jsonl  # noqa: E402
from src.judging.metrics import auc  # noqa: E402

# name: (critique start, the word for equal answers, the word for unequal ones)
WORDINGS = {
    "matches": ("The response gives {r}. The reference answer is {y}; it", " matches", " does"),
    "identical": (
        "The response gives {r}. The reference answer is {y}. The two answers are",
        " identical",
        " different",
    ),
    "same?": (
        "The response gives {r}. The reference answer is {y}. Are they the same? ",
        "Yes",
        "No",
    ),
    "python": (
        'The response gives {r}. The reference answer is {y}.\n>>> "{r}" == "{y}"\n',
        "True",
        "False",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/base_model")
    parser.add_argument("--data", default="data/processed/sft/sft_valid.jsonl")
    args = parser.parse_args()

    rows = read_jsonl(args.data)
    for line, row in rows:
        md = row.get("metadata") or {}
        if not all(k in md for k in ("response", "reference", "label", "task_type")):
            sys.exit(
                f"{args.data}:{line}: no metadata.response/reference/label/task_type. Fix: pass "
                "reference-guided pointwise rows as the sample_data stage writes them."
            )

    import mlx.core as mx

    from src.modeling.load import load_base

    model, tok, _, _ = load_base(args.model, 4, 64, "dequantized", "fast")
    for name, (start, same, differ) in WORDINGS.items():
        a = tok.encode(same, add_special_tokens=False)[0]
        b = tok.encode(differ, add_special_tokens=False)[0]
        seen = defaultdict(lambda: ([], []))  # task type: (logit differences, labels)
        for _, row in rows:
            md = row["metadata"]
            prompt = tok.apply_chat_template(
                row["messages"][:-1], tokenize=False, add_generation_prompt=True
            )
            text = prompt + "Critique: " + start.format(r=md["response"], y=md["reference"])
            logits = model(mx.array([tok.encode(text, add_special_tokens=False)]))[0, -1]
            seen[md["task_type"]][0].append((logits[a] - logits[b]).item())
            seen[md["task_type"]][1].append(md["label"])
        every = [sum((v[i] for v in seen.values()), []) for i in (0, 1)]
        per_task = ", ".join(f"{k} {auc(*v):.2f}" for k, v in sorted(seen.items()))
        print(f"{name:10s} AUC {auc(*every):.2f}  ({per_task})", flush=True)


if __name__ == "__main__":
    main()
