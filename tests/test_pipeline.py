"""End to end: the real `dvc repro`, `dvc exp run -S`, params/metrics diff, push and pull."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.slow

SMALL = {  # the default pipeline on the tiny Gemma, shortened: the whole test takes ~two minutes
    "model": {"name": "embedded"},
    "data": {"rows": 400},
    "split": {"valid_size": 40},
    "train": {
        "iters": 8,
        "grad_accum": 2,
        "warmup_steps": 1,
        "decay_steps": 2,  # the default's 30 exceed these 4 updates (an error, tested)
        "average_last": 3,  # likewise the default's 31
        "steps_per_report": 4,
        "steps_per_eval": 4,
        "validate_first": True,  # valid_loss_initial, for the checks below
        "steps_per_save": 4,
    },
    "fuse": {"verify_rows": 8, "n_generations": 1, "max_tokens": 8},
    "eval": {"max_tokens": 8, "limit": 16},
}


def _sh(cwd, *cmd, check=True) -> str:
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
        "PYTHONPATH": str(cwd),
    }
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    for item in ("src", "dvc.yaml", ".dvcignore", ".gitignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, repo / item)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh(repo, "git", "init", "-q")
    _sh(repo, "git", "config", "user.email", "t@example.com")
    _sh(repo, "git", "config", "user.name", "test")
    _sh(repo, "dvc", "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    return repo


def test_repro_exp_run_diffs_and_noop(repo):
    out = _sh(repo, "dvc", "repro")
    stages = {"prepare_model", "sample_data", "split", "train", "fuse", "evaluate_base", "evaluate"}
    for stage in stages:
        assert f"Running stage '{stage}'" in out
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == stages
    train = json.loads((repo / "metrics" / "train.json").read_text())
    fuse = json.loads((repo / "metrics" / "fuse.json").read_text())
    assert train["valid_loss"] < train["valid_loss_initial"]
    assert fuse["max_logit_diff"] < 1e-3
    assert (repo / "checkpoints" / "sft_merged_model" / "config.json").is_file()
    run_info = json.loads((repo / "checkpoints/sft_adapter/run_info.json").read_text())
    assert run_info["base"]["cpu_kernels"] == "fast" and run_info["base"]["fast_kernels"]
    # the judge carries its format into the merged model (the default data: yes_no, reference)
    card = json.loads((repo / "checkpoints/sft_merged_model/genrm_judge.json").read_text())
    assert (card["verdict"], card["reference"]) == ("yes_no", True)
    assert "{response}" in card["template"] and "{reference}" in card["template"]

    assert "Data and pipelines are up to date" in _sh(repo, "dvc", "repro")  # no-op

    # Same params, same data: the same metrics (timings aside).
    _sh(repo, "dvc", "repro", "--force", "--single-item", "train")
    again = json.loads((repo / "metrics" / "train.json").read_text())
    for key in (
        "valid_loss",
        "valid_loss_initial",
        "train_loss",
        "best_valid_ppl",
        "trained_tokens",
    ):
        assert again[key] == train[key], key

    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-qm", "baseline")
    # an adapter experiment does not pay for the base's evaluation again
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["lora"]["rank"] = 8
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = json.loads(_sh(repo, "dvc", "status", "--json"))
    assert "train" in changed and "evaluate_base" not in changed
    _sh(repo, "git", "checkout", "--", "params.yaml")
    out = _sh(repo, "dvc", "exp", "run", "-S", "lora.rank=8", "-S", "model.cpu_kernels=exact")
    for stage in ("train", "fuse", "evaluate", "evaluate_base"):  # the kernels: every model
        assert f"Running stage '{stage}'" in out
    assert "Running stage 'split'" not in out and "Running stage 'prepare_model'" not in out

    params_diff = json.loads(_sh(repo, "dvc", "params", "diff", "--json"))
    rank = params_diff["params.yaml"]["lora.rank"]
    assert (rank["old"], rank["new"]) == (16, 8)
    kernels = params_diff["params.yaml"]["model.cpu_kernels"]
    assert (kernels["old"], kernels["new"]) == ("fast", "exact")
    run_info = json.loads((repo / "checkpoints/sft_adapter/run_info.json").read_text())
    assert run_info["base"]["cpu_kernels"] == "exact" and not run_info["base"]["fast_kernels"]
    metrics_diff = json.loads(_sh(repo, "dvc", "metrics", "diff", "--json"))
    assert "valid_loss" in metrics_diff["metrics/train.json"]
    assert (
        "verdict_accuracy" in json.loads(_sh(repo, "dvc", "metrics", "show", "--json")).__repr__()
    )
    exp_show = json.loads(_sh(repo, "dvc", "exp", "show", "--json"))
    shown = json.dumps(exp_show)
    assert '"rank": 8' in shown and '"rank": 16' in shown  # the experiment beside its baseline
    # DVCLive's metrics (rewritten at every report while training) as `dvc exp show` reads them,
    # for the baseline and the experiment: the last step and its validation loss
    live = list(_find(exp_show, "metrics/live/metrics.json"))
    assert len(live) >= 2 and all(d["data"]["step"] == 8 for d in live)
    assert {d["data"]["valid_loss"] for d in live} >= {train["valid_loss"]}
    # `dvc plots` draws DVCLive's curves
    plots = json.loads(_sh(repo, "dvc", "plots", "show", "--json"))["data"]
    for plot, fields in {
        "loss": ("train_loss", "valid_loss"),
        "valid_ppl": ("valid_ppl",),
        "learning_rate": ("learning_rate",),
        "throughput": ("tokens_per_sec",),
    }.items():
        values = [
            v
            for d in _find(plots[plot], "data")
            if isinstance(d, dict)
            for v in d.get("values", [])
        ]
        for field in fields:  # train: steps 4 and 8; valid: also step 0
            steps = {int(v["step"]) for v in values if field in v}
            assert steps >= {4, 8}, (plot, field, steps)
    adapter = json.loads((repo / "checkpoints/sft_adapter/adapter_config.json").read_text())
    assert adapter["lora_parameters"]["rank"] == 8


def _find(tree, key):
    """Every value stored under ``key`` in a JSON tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key:
                yield v
            else:
                yield from _find(v, key)
    elif isinstance(tree, list):
        for v in tree:
            yield from _find(v, key)


def test_push_and_pull_restore_data_and_models(repo, tmp_path):
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-qm", "rank 8", check=False)
    remote = tmp_path / "remote"
    _sh(repo, "dvc", "remote", "add", "-d", "local", str(remote))
    _sh(repo, "dvc", "push")
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-qm", "remote")
    clone = tmp_path / "clone"
    _sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "checkpoints" / "sft_merged_model").exists()
    _sh(clone, "dvc", "pull")
    for path in (
        "data/processed/sft/sft_genrm_train.jsonl",
        "data/processed/sft/sft_train.jsonl",
        "checkpoints/base_model/model.safetensors",
        "checkpoints/sft_adapter/adapters.safetensors",
        "checkpoints/sft_merged_model/config.json",
    ):
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path
    assert "up to date" in _sh(clone, "dvc", "status")
