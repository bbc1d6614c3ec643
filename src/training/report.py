"""Where the train stage's numbers go: a console log, and the curves through DVCLive."""

from __future__ import annotations

import sys
from pathlib import Path

from ..runtime import is_rank0
from .loop import Report
from .state import TrainState


class Progress:
    """A live status line on a terminal; plain lines otherwise. Rank 0 only."""

    def __init__(self, total: int):
        self.total, self.live = total, sys.stderr.isatty() and is_rank0()
        self.quiet = not is_rank0()

    def step(self, it: int, loss: float, tok_s: float) -> None:
        if self.live:
            print(
                f"\r  iter {it}/{self.total}  loss {loss:.3f}  {tok_s:,.0f} tok/s",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.live:
            print("\r\033[K", end="", file=sys.stderr)
        print(text, flush=True)


def _live(live_dir: Path):
    """DVCLive's ``Live`` on ``live_dir``: it only logs (no experiment saving, no dvc.yaml edits:
    the pipeline declares its outputs itself)."""
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    class _Live(Live):
        # DVCLive 3.49 reads the Git HEAD before it checks that the repo has a commit, so the
        # first `dvc repro` right after `git init` would crash here. There it logs without the
        # Git link, which only serves the experiment saving turned off above.
        def _init_dvc(self):
            try:
                super()._init_dvc()
            except SCMError:
                self._dvc_repo = None

    return _Live(str(live_dir), save_dvc_exp=False, dvcyaml=None)


class StageReport(Report):
    """The training log on the console, and the curves through DVCLive (``--live-dir``): its
    ``plots/metrics/*.tsv`` are what ``dvc plots`` draws, and its ``metrics.json`` (the latest
    value of each) is rewritten at every report, so ``dvc exp show`` follows a run while it
    trains. The step is the iteration. Rank 0 only."""

    def __init__(self, progress: Progress, live_dir: Path, state: TrainState):
        self.progress = progress
        self.live = None
        if is_rank0():
            # Never DVCLive's own resume: a run resumes from its last checkpoint, which may be
            # older than the last rows DVCLive wrote before the run died, and those would be kept
            # twice. The curves are replayed from the checkpoint's state instead, so a resumed
            # run's files are the uninterrupted run's.
            self.live = _live(live_dir)
            rows = sorted(state.train_curve + state.valid_curve, key=lambda r: r["iteration"])
            for row in rows:
                self._log(row)

    def _log(self, row: dict) -> None:
        if self.live is None:
            return
        self.live.step = row["iteration"]
        # the update counter is a train-curve column only (a validation row repeats it)
        skip = {"iteration", "update"} if "valid_loss" in row else {"iteration"}
        for name, value in row.items():
            if name not in skip:
                self.live.log_metric(name, value)
        self.live.make_summary()

    def step(self, iteration: int, loss: float, tokens_per_sec: float) -> None:
        self.progress.step(iteration, loss, tokens_per_sec)

    def train(self, row: dict) -> None:
        self.progress.line(
            f"  iter {row['iteration']:>6}  update {row['update']:>5}  train_loss "
            f"{row['train_loss']:.4f}  lr {row['learning_rate']:.2e}  "
            f"{row['tokens_per_sec']:,.0f} tok/s"
        )
        self._log(row)

    def valid(self, row: dict) -> None:
        self.progress.line(
            f"  iter {row['iteration']:>6}  valid_loss {row['valid_loss']:.4f}  "
            f"valid_ppl {row['valid_ppl']:.3f}"
        )
        self._log(row)

    def end(self) -> None:
        if self.live is not None:
            self.live.end()
