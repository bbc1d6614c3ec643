"""Data-parallel training under MLX's own launcher (`mlx.launch`, ring backend, localhost)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from conftest import ROOT, train_flags

pytestmark = pytest.mark.slow


def _train(tmp_path, model, train, valid, tag, launch: bool, **extra) -> dict:
    out = tmp_path / tag
    args = train_flags(out, model, train, valid, state_dir=tmp_path / f"{tag}_state", **extra)
    cmd = [sys.executable, "-m", "src.train_sft", *args]
    if launch:
        launcher = os.path.join(os.path.dirname(sys.executable), "mlx.launch")
        cmd = [launcher, "-n", "2", "--backend", "ring", "--", *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return {
        "metrics": json.loads((out / "train.json").read_text()),
        "adapter": mx.load(str(out / "adapter" / "adapters.safetensors")),
        "stdout": done.stdout,
    }


def _max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(np.array(a[k]) - np.array(b[k])).max()) for k in a)


def test_two_ranks_match_one_process_and_resume(tmp_path, tiny_model, splits):
    train, valid = splits
    single = _train(tmp_path, tiny_model, train, valid, "single", launch=False)
    dist = _train(tmp_path, tiny_model, train, valid, "dist", launch=True)

    # Same global batch and token-weighted loss: only the order of float sums differs.
    m1, m2 = single["metrics"], dist["metrics"]
    assert m2["valid_loss_initial"] == pytest.approx(m1["valid_loss_initial"], abs=1e-5)
    assert m2["valid_loss"] == pytest.approx(m1["valid_loss"], abs=1e-3)
    assert m2["trained_tokens"] == m1["trained_tokens"]
    # Adam turns rounding-level gradient differences into at most ~lr-sized weight differences.
    assert _max_diff(single["adapter"], dist["adapter"]) < 4 * 1e-3
    # Only rank 0 printed the log.
    assert dist["stdout"].count("valid_loss") == m1["iterations"] // 4 + 1

    # A distributed run resumed from its checkpoint continues exactly where it stopped.
    _train(tmp_path, tiny_model, train, valid, "part", launch=True, iters=4)
    resumed = _train(tmp_path, tiny_model, train, valid, "part", launch=True, resume="true")
    assert "resumed from iteration 4" in resumed["stdout"]
    assert _max_diff(resumed["adapter"], dist["adapter"]) == 0.0
