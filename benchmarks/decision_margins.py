"""Where a trained judge decides: the margin of its comparison word, teacher-forced.

For each reference-guided validation row, the adapter reads the prompt and the row's own
critique up to the word that concludes the comparison (" matches" / " does" in "...; it matches
the reference"; " identical" / " different" in the other wording measured, "The two answers are
identical, so ..."), and the script takes the margin = logit(equal) - logit(unequal).
Reported per adapter (and per checkpoint file):

- ``acc``: how often the sign of the margin is the label (the decision greedy decoding makes);
- ``auc``: how well the margin ranks right above wrong responses, whatever its offset
  (``auc_ns``: without the sorting rows, whose critiques restate no numbers);
- ``bias``: the mean margin (0: no leaning to either word);
- ``sep``: mean margin of right responses minus wrong ones (without sorting rows).

A judge with ``auc`` near 1 and ``acc`` near 0.5 has learnt the comparison and leans one way;
one with ``auc`` near 0.5 has not learnt it.

    uv run python benchmarks/decision_margins.py --adapter checkpoints/sft_adapter \\
        --checkpoint checkpoints/sft_adapter_state/iter_0000060/adapters.safetensors

``--average`` also reports the mean of the ``--checkpoint`` files' weights (weight averaging).

docs/default-judge.md ("Where the failing runs decide") has what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import src  # noqa: E402, F401  (the fast BLAS before MLX)
from src.data.sft import read_jsonl  # noqa: E402
from src.judging.metrics import auc  # noqa: E402
from src.modeling.head import checked_head  # noqa: E402

# Concluding sentences (equal answers, unequal ones): the sample data's, and the "identical /
# different" wording measured against it (docs/default-judge.md).
CONCLUSIONS = (
    (
        "matches the reference, so the response is correct",
        "does not match the reference, so the response is wrong",
    ),
    ("identical, so the response is correct", "different, so the response is wrong"),
)


def decision_rows(rows, tok):
    """(token ids before the decision, the id of the word for equal answers, that for unequal
    ones, label, task type) for every row whose critique concludes with one of
    ``CONCLUSIONS``."""
    out = []
    for _, row in rows:
        messages, md = row["messages"], row.get("metadata") or {}
        critique = messages[-1]["content"]
        pair = next(((a, b) for a, b in CONCLUSIONS if a in critique or b in critique), None)
        if pair is None:
            continue
        same, differ = pair
        equal = same in critique
        other = critique.replace(same, differ) if equal else critique.replace(differ, same)
        ids = tok.apply_chat_template(messages, tokenize=True)
        alt = tok.apply_chat_template(
            messages[:-1] + [{"role": "assistant", "content": other}], tokenize=True
        )
        i = next(k for k, (x, y) in enumerate(zip(ids, alt, strict=False)) if x != y)
        yes, no = (ids[i], alt[i]) if equal else (alt[i], ids[i])
        out.append((ids[:i], yes, no, int(md["label"]), md.get("task_type", "")))
    return out


def margins(model, items, chunk: int = 10) -> list[float]:
    """The decision margin of each item: hidden states of a right-padded chunk, the LM head at
    each row's last position only."""
    import mlx.core as mx

    head = checked_head(model)  # the LM head, checked to reproduce the model's own logits
    if head is None:
        sys.exit("this model's LM head cannot be split from its body (see checked_head)")
    out = []
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        width = max(len(p[0]) for p in part)
        hidden = model.model(mx.array([p[0] + [0] * (width - len(p[0])) for p in part]))
        logits = head(mx.stack([hidden[j, len(p[0]) - 1] for j, p in enumerate(part)]))
        mx.eval(logits)
        out += [(logits[j, p[1]] - logits[j, p[2]]).item() for j, p in enumerate(part)]
    return out


def summary(name: str, margin: list[float], items) -> dict:
    labels = [it[3] for it in items]
    decided = [(m > 0) == bool(y) for m, y in zip(margin, labels, strict=True)]
    kept = [(m, it[3]) for m, it in zip(margin, items, strict=True) if it[4] != "sorting"]
    right = [m for m, y in kept if y]
    wrong = [m for m, y in kept if not y]
    return {
        "name": name,
        "acc": round(statistics.mean(decided), 3),
        "auc": round(auc(margin, labels), 3),
        "auc_ns": round(auc([m for m, _ in kept], [y for _, y in kept]), 3),
        "bias": round(statistics.mean(margin), 2),
        "sep": round(statistics.mean(right) - statistics.mean(wrong), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/base_model")
    parser.add_argument("--adapter", default="checkpoints/sft_adapter")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="adapter weight files")
    parser.add_argument("--data", default="data/processed/sft/sft_valid.jsonl")
    parser.add_argument(
        "--average", action="store_true", help="also the mean of the checkpoints' weights"
    )
    args = parser.parse_args()
    if args.average and len(args.checkpoint) < 2:
        sys.exit("--average needs two or more --checkpoint files to average.")

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import load_adapters

    from src.modeling.load import load_base

    model, tok, _, _ = load_base(args.model, 4, 64, "dequantized", "fast")
    model = load_adapters(model, args.adapter)
    model.eval()
    items = decision_rows(read_jsonl(args.data), tok)
    if not items:
        sys.exit(f"{args.data}: no critique concludes with the sample data's sentences.")
    print(json.dumps(summary(args.adapter, margins(model, items), items)), flush=True)
    lora = {k for k, _ in tree_flatten(model.parameters()) if ".lora_" in k}
    loaded = []
    for path in args.checkpoint:
        weights = mx.load(path)
        if set(weights) != lora:
            sys.exit(f"{path}: not a checkpoint of this adapter (its weights are not the LoRA's).")
        loaded.append(weights)
        model.load_weights(list(weights.items()), strict=False)
        print(json.dumps(summary(path, margins(model, items), items)), flush=True)
    if args.average:
        mean = {k: sum(w[k] for w in loaded) / len(loaded) for k in lora}
        model.load_weights(list(mean.items()), strict=False)
        name = f"mean of {len(loaded)} checkpoints"
        print(json.dumps(summary(name, margins(model, items), items)), flush=True)


if __name__ == "__main__":
    main()
