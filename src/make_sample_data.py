"""sample_data stage: write the embedded sample GenRM SFT dataset (the recipe's Faz 0 output).

Deterministic: the same ``--seed`` and ``--rows`` give the same bytes. To train on a real Faz 0
file instead, see the README ("Your own data"): the file takes this stage's place and is tracked
with ``dvc add``.

Params: ``data.rows``, ``data.seed``, ``data.reference`` (reference-guided prompts: the correct
answer is in the prompt and the judge compares; see ``src/data/sample.py``), ``data.verdict``
(the verdict format the critiques end with: ``score10``, ``yes_no``, ``result5``, ``rating10`` or
``pairwise``; see ``src/judging/verdicts.py``), ``data.direct`` (the fraction of rows judged by the
verdict line alone, without a critique), ``data.free_form`` (the fraction of free-form
responses), ``data.ood_rows`` and ``data.ood_free_form`` (evaluation-only rows from task families
never trained on, written to ``--ood-out`` for the evaluate stage's ``ood_*`` metrics),
``data.ff_rows`` (evaluation-only rows from the trained families, every response free-form,
written to ``--ff-out`` for the ``ff_*`` metrics: how the judge reads free-form answers to the
tasks it was trained on, whether or not ``data.free_form`` trains on any).

    uv run python -m src.make_sample_data --rows 3000 --seed 0 \
        --out data/processed/sft/sft_genrm_train.jsonl
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .data.sample import FREE_FORM_MAKERS, HELD_OUT_MAKERS, VERDICTS, generate_rows
from .data.sft import dumps
from .runtime import arg, check_choice, check_range, config_parser, stage_main, write_jsonl


@dataclass
class SampleDataConfig:
    rows: int = arg(3000, "rows to generate")
    seed: int = arg(0, "seed: the same seed and rows give the same bytes")
    reference: bool = arg(False, "reference-guided rows: the correct answer in each prompt")
    verdict: str = arg(
        "score10", "verdict format the critiques end with", choices=(*VERDICTS, "pairwise")
    )
    direct: float = arg(0.0, "fraction of rows judged by the verdict line alone (no critique)")
    free_form: float = arg(
        0.0,
        "fraction of rows whose response is free-form (the answer in a sentence, a worked "
        "solution, an equivalent form); the label stays the program's",
    )
    out: Path = arg(paths.RAW, "the JSONL written")
    ood_rows: int = arg(0, "evaluation-only rows from task families never in --out (0: none)")
    ood_free_form: float = arg(0.5, "fraction of those rows with free-form responses")
    ood_out: Path | None = arg(
        None,
        f"the held-out rows' JSONL (default: {paths.OOD} when --ood-rows > 0); given, it is "
        "written at 0 rows too, empty",
    )
    ff_rows: int = arg(
        0, "evaluation-only rows from the trained families, every response free-form (0: none)"
    )
    ff_out: Path | None = arg(
        None,
        f"the free-form rows' JSONL (default: {paths.FREE_FORM} when --ff-rows > 0); given, it "
        "is written at 0 rows too, empty",
    )

    def __post_init__(self) -> None:
        check_range("--rows", self.rows, 1)
        check_range("--direct", self.direct, 0.0, 1.0)
        check_range("--free-form", self.free_form, 0.0, 1.0)
        check_range("--ood-rows", self.ood_rows, 0)
        check_range("--ood-free-form", self.ood_free_form, 0.0, 1.0)
        check_range("--ff-rows", self.ff_rows, 0)
        check_choice("--verdict", self.verdict, (*VERDICTS, "pairwise"))


def run(cfg: SampleDataConfig) -> dict:
    common = dict(reference=cfg.reference, verdict=cfg.verdict)
    generated = list(
        generate_rows(cfg.rows, cfg.seed, direct=cfg.direct, free_form=cfg.free_form, **common)
    )
    evaluation_only = dict(long_fraction=0.0, **common)
    held_out = list(
        generate_rows(
            cfg.ood_rows,
            cfg.seed,
            free_form=cfg.ood_free_form,
            makers=HELD_OUT_MAKERS,
            prefix="ood",
            **evaluation_only,
        )
    )
    # the trained families' tasks, drawn afresh (a question may recur from training, as in the
    # validation split: there are 92 string questions); every response free-form
    free_form_eval = list(
        generate_rows(
            cfg.ff_rows,
            cfg.seed,
            free_form=1.0,
            makers=FREE_FORM_MAKERS,
            prefix="ff",
            stream="ff",
            **evaluation_only,
        )
    )
    write_jsonl(cfg.out, generated, dumps=dumps)
    # An evaluation-only file named on the command line is written even at 0 rows, empty: DVC
    # expects its outputs, and evaluate reads an empty file as no such set (`-S
    # data.ood_rows=0` is a valid experiment). Unnamed, it goes to its default path, and only
    # when it has rows (nothing there is replaced by an empty file).
    for rows, out, default in (
        (held_out, cfg.ood_out, paths.OOD),
        (free_form_eval, cfg.ff_out, paths.FREE_FORM),
    ):
        if out is not None or rows:
            write_jsonl(out or default, rows, dumps=dumps)
    labels = Counter(r["metadata"]["label"] for r in generated)
    n_direct = sum("\n" not in r["messages"][-1]["content"] for r in generated)
    return {
        "n_rows": len(generated),
        "n_correct": labels[1],
        "n_incorrect": labels[0],
        "n_direct": n_direct,
        "n_free_form": sum(bool(r["metadata"].get("free_form")) for r in generated),
        "n_ood": len(held_out),
        "n_ff": len(free_form_eval),
    }


def build_parser() -> argparse.ArgumentParser:
    return config_parser(
        SampleDataConfig, "src.make_sample_data", __doc__, "metrics/sample_data.json"
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main(build_parser(), SampleDataConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
