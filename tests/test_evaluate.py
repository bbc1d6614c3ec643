"""evaluate stage: parsing the judge, the metrics, and the stage on a tiny fused model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import flags, read_jsonl, train_tiny_adapter, write_jsonl

from src.evaluate_genrm import main as evaluate
from src.judge import auc, pairwise_accuracy, parse_score, score_tokens


@pytest.mark.parametrize(
    "text, score",
    [
        ("Critique: fine.\nScore: 8/10", 8.0),
        ("Score: 3/10 ... on reflection Score: 9 / 10", 9.0),
        ("Score: 7.5/10", 7.5),
        ("Score: 11/10", None),
        ("Score: /10", None),
        ("no verdict at all", None),
        ("", None),
        ("Score: 8/100", None),
    ],
)
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_auc_and_pairwise():
    assert auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert auc([0.5, 0.5], [1, 0]) == 0.5
    assert auc([0.5, 0.6], [1, 1]) is None
    acc, n = pairwise_accuracy(
        ["a", "a", "a", "b", "b", "c"], [9, 2, None, 5, 5, 7], [1, 0, 0, 1, 0, 1]
    )
    # task a: (9>2) win, (9 vs unparsed) win; task b: tie = 0.5; task c: no pair
    assert n == 3 and acc == pytest.approx(2.5 / 3)


def test_score_tokens_cover_every_score(tiny_model):
    from src.model_source import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    prefix, numbers, slash = score_tokens(tok)
    assert tok.decode(prefix).strip() == "Score:"
    for score, toks in numbers.items():
        assert tok.decode(prefix + toks + [slash]).replace(" ", "") == f"Score:{score}/"
    assert len({tuple(t) for t in numbers.values()}) == 11


def test_direct_score_follows_the_model(tiny_model, monkeypatch):
    """With a model that puts all mass on one verdict, the expected score is that verdict."""
    import mlx.core as mx

    from src.judge import direct_scores
    from src.model_source import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    prefix, numbers, slash = score_tokens(tok)
    for target in (2, 7, 10):
        seq = numbers[target] + [slash]

        def model(x, seq=seq):  # after the prefix, emit the target's tokens then "/"
            b, t = x.shape
            logits = mx.full((b, t, 512), -30.0)
            done = [int((x[i] != 0).sum()) for i in range(b)]
            for i in range(b):
                row = x[i, : done[i]].tolist()
                k = max(j for j in range(len(seq) + 1) if j == 0 or row[-j:] == seq[:j])
                logits[i, done[i] - 1, seq[min(k, len(seq) - 1)]] = 30.0
            return logits

        got = direct_scores(model, tok, [[5, 6, 7], [8, 9]])
        assert got == pytest.approx([target, target], abs=1e-3)


@pytest.fixture(scope="module")
def fused(tmp_path_factory, tiny_model):
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


def _eval_args(root, **extra):
    settings = dict(
        model=root / "merged",
        data=root / "valid.jsonl",
        judgements_out=root / "j.jsonl",
        metrics=root / "eval.json",
        max_tokens=6,
        batch_size=8,
    )
    return flags(**{**settings, **extra})


def test_stage_runs_on_a_fused_model(fused):
    assert evaluate(_eval_args(fused, limit=12)) == 0
    m = json.loads((fused / "eval.json").read_text())
    assert m["n_eval"] == 12 and 0 <= m["parse_rate"] <= 1
    assert 0 <= m["verdict_accuracy"] <= 1 and 0 <= m["direct_auc"] <= 1
    judgements = read_jsonl(fused / "j.jsonl")
    assert len(judgements) == 12 and all("judgement" in j for j in judgements)


def test_metrics_of_a_perfect_and_a_broken_judge(fused, monkeypatch):
    import importlib

    gen = importlib.import_module(
        "mlx_lm.generate"
    )  # `mlx_lm.generate` the attribute is a function

    rows = read_jsonl(fused / "valid.jsonl")
    answers = {
        "perfect": [r["messages"][-1]["content"] for r in rows],
        "broken": ["Score: 11/10", "no verdict", "Score: /10"] * len(rows),
    }
    results = {}
    for name, texts in answers.items():
        queue = list(texts)

        def fake(model, tokenizer, prompts, max_tokens, queue=queue):
            out = [queue.pop(0) for _ in prompts]
            return SimpleNamespace(texts=out)

        monkeypatch.setattr(gen, "batch_generate", fake)
        assert evaluate(_eval_args(fused)) == 0
        results[name] = json.loads((fused / "eval.json").read_text())
    perfect, broken = results["perfect"], results["broken"]
    assert perfect["parse_rate"] == 1.0 and perfect["verdict_accuracy"] == 1.0
    assert perfect["mean_abs_score_error"] == 0.0 and perfect["reference_verdict_agreement"] == 1.0
    assert perfect["n_pairs"] > 0 and perfect["pairwise_accuracy"] == 1.0
    assert broken["parse_rate"] == 0.0 and broken["verdict_accuracy"] == 0.0
    assert "mean_abs_score_error" not in broken  # nothing parsed: left out, not NaN
    assert broken["pairwise_accuracy"] == 0.0


def test_non_chat_rows_are_refused(tmp_path, capsys, fused):
    data = write_jsonl(tmp_path / "v.jsonl", [{"text": "hello"}])
    assert evaluate(_eval_args(fused, data=data)) == 1
    assert "evaluated on chat rows" in capsys.readouterr().err


@pytest.mark.parametrize(
    "verdict", ["Is the answer correct (Yes/No)? Yes", "[RESULT] 4", "Rating: [[7]]"]
)
def test_references_in_another_verdict_format_are_refused(tmp_path, capsys, fused, verdict):
    """Other formats must not turn into metrics that look like results (Yes/No rows used to
    give parse_rate 0.66 and a score error against nothing)."""
    rows = read_jsonl(fused / "valid.jsonl")
    for r in rows:
        r["messages"][-1]["content"] = "Critique: fine.\n" + verdict
        r.pop("metadata", None)
    data = write_jsonl(tmp_path / "v.jsonl", rows)
    out = tmp_path / "eval.json"
    assert evaluate(_eval_args(fused, data=data, metrics=out, judgements_out=tmp_path / "j")) == 1
    err = capsys.readouterr().err
    assert f"{data}:1: {len(rows)} of {len(rows)} reference judgements have no" in err
    assert "Fix:" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "j").exists()
