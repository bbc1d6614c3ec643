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

from src.data.sample import generate_rows, render_text  # noqa: E402
from src.modeling.tiny_gemma import TinyGemmaConfig, build_tiny_gemma  # noqa: E402

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


def tiny_llama(vocab: int, seed: int = 0, tied: bool = False, kernels: str = "fast"):
    """A 2-layer mlx-lm Llama with random weights large enough to write varied text (the
    layout ``src/modeling/cpu_decode.py`` decodes whole in C), float32, with ``kernels``
    (``use_fast_kernels``: "fast" binds ours, "exact" leaves mlx-lm's)."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.models import llama

    from src.modeling.kernels import use_fast_kernels

    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=vocab,
        rope_theta=10000.0,
        tie_word_embeddings=tied,
    )
    model = llama.Model(args)
    mx.random.seed(seed)
    model.update(
        tree_map(
            lambda w: (
                1 + 0.1 * mx.random.normal(w.shape)
                if w.ndim == 1
                else 0.3 * mx.random.normal(w.shape)
            ),
            model.parameters(),
        )
    )
    use_fast_kernels(model, kernels)
    return model


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


def flags(**options) -> list[str]:
    """``flags(iters=8, mask_prompt=True)`` -> ``["--iters", "8", "--mask-prompt", "true"]``."""
    return [
        x
        for k, v in options.items()
        for x in (f"--{k.replace('_', '-')}", str(v).lower() if isinstance(v, bool) else str(v))
    ]


def train_flags(out: Path, model, train, valid, **extra) -> list[str]:
    """Flags for a short train-stage run on the tiny model, outputs under ``out``."""
    settings = dict(
        model=model,
        train_data=train,
        valid_data=valid,
        adapter_path=out / "adapter",
        live_dir=out / "live",
        metrics=out / "train.json",
        iters=8,
        batch_size=4,
        grad_accum=2,
        lora_layers=2,
        rank=4,
        learning_rate=1e-3,
        warmup_steps=1,
        steps_per_report=2,
        steps_per_eval=4,
        steps_per_save=4,
        mask_prompt=True,
        seed=0,
    )
    return flags(**{**settings, **extra})


def train_tiny_adapter(root: Path, model: Path, **options) -> Path:
    """Train a small adapter on GenRM rows into ``root/adapter`` (train.jsonl / valid.jsonl and
    train.json beside it), for the stages after train."""
    from src.train_sft import main as train

    rows = list(generate_rows(120, seed=8, long_fraction=0.0))
    train_rows = write_jsonl(root / "train.jsonl", rows[:100])
    valid_rows = write_jsonl(root / "valid.jsonl", rows[100:])
    settings = dict(
        learning_rate=5e-3,
        warmup_steps=0,
        steps_per_report=4,
        steps_per_eval=8,
        steps_per_save=8,
    )
    args = train_flags(root, model, train_rows, valid_rows, **{**settings, **options})
    assert train(args) == 0
    return root


@pytest.fixture(scope="session")
def fused(tmp_path_factory, tiny_model) -> Path:
    """A tiny judge, trained a few steps and fused: ``fused / "merged"``, with its
    ``valid.jsonl``."""
    from src.fuse_model import main as fuse

    root = train_tiny_adapter(
        tmp_path_factory.mktemp("eval"), tiny_model, iters=4, steps_per_eval=4, steps_per_save=4
    )
    assert (
        fuse(
            flags(
                model=tiny_model,
                adapter_path=root / "adapter",
                save_path=root / "merged",
                valid_data=root / "valid.jsonl",
                generations_out=root / "g.md",
                metrics=root / "f.json",
                verify_rows=4,
                n_generations=1,
                max_tokens=4,
            )
        )
        == 0
    )
    return root


def written_format(tok, tokens: list[list[int]], tops: list[list[dict]]):
    """A verdict-format test double for the tiny judge, which writes no real verdict: the last
    token of its first judgement (= 1) against the token it most nearly writes instead (= 0: in
    the top log-probabilities wherever that token is last written, the best of them on
    average), each read as one token (``scores.value_token_ids``), so that a soft score weighs
    both. ``tokens`` and ``tops``: greedy judgements with their steps' top log-probabilities."""
    import re

    from src.judging.scores import value_token_ids
    from src.judging.verdicts import VerdictFormat

    def one_token(t: int) -> str | None:
        text = tok.decode([t])
        return text if text.strip() and tok.encode(text, add_special_tokens=False) == [t] else None

    written = tokens[0][-1]
    word = one_token(written)
    steps = [  # each row's step where it last wrote that token
        top[max(k for k, t in enumerate(row) if t == written)]
        for row, top in zip(tokens, tops, strict=True)
        if written in row
    ]
    near = set.intersection(*map(set, steps)) - {written}
    near = sorted(near, key=lambda t: -sum(step[t] for step in steps))
    other = next(text for t in near if (text := one_token(t)) and word not in text)
    pattern = re.compile(f"({re.escape(word)}|{re.escape(other)})")
    fmt = VerdictFormat("written", pattern, 0, 1, 1, {word: 1.0, other: 0.0}, "{}")
    assert value_token_ids(tok, fmt)
    return fmt


def fake_generation(monkeypatch, answer) -> None:
    """Replace the judge's generation (``src.judging.generate.judge_texts``) by
    ``answer(prompt_text) -> judgement`` (direct scores still come from the real model; soft
    scores from the second pass, as where the generation cannot give them)."""
    from src.judging import generate as gen

    def fake(model, tokenizer, prompts, max_tokens, batch_size, *more):
        return [answer(tokenizer.decode(p)) for p in prompts], None, None

    monkeypatch.setattr(gen, "judge_texts", fake)
