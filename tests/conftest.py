"""Shared fixtures: a tiny Gemma model and small GenRM data, built offline in about a second."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"  # a test that reaches for the Hub fails instead of waiting

from src.genrm_sample import generate_rows, render_text  # noqa: E402
from src.tiny_gemma import TinyGemmaConfig, build_tiny_gemma  # noqa: E402

# 2 layers, width 64 (divisible by the 4-bit group size 64), 512-token vocabulary.
TINY = TinyGemmaConfig(
    num_hidden_layers=2,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    vocab_size=512,
)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-gemma"
    corpus = [render_text(r) for r in generate_rows(300, seed=99)]
    return build_tiny_gemma(out, TINY, corpus)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture
def genrm_rows() -> list[dict]:
    """Short GenRM rows without the > 2048-token ones."""
    return list(generate_rows(240, seed=5, long_fraction=0.0))


@pytest.fixture
def splits(tmp_path, genrm_rows) -> tuple[Path, Path]:
    """A train and a validation file, rows kept as generated."""
    train = write_jsonl(tmp_path / "train.jsonl", genrm_rows[:200])
    valid = write_jsonl(tmp_path / "valid.jsonl", genrm_rows[200:])
    return train, valid
