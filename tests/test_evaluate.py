"""evaluate stage: parsing the judge, the metrics, and the stage on a tiny fused model."""

from __future__ import annotations

import json
import re

import pytest
from conftest import fake_generation, flags, read_jsonl, write_jsonl, written_format

from src.data.sample import generate_rows
from src.evaluate_genrm import main as evaluate
from src.judging.metrics import auc, pairwise_accuracy
from src.judging.scores import value_paths
from src.judging.verdicts import FORMATS


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
    assert FORMATS["score10"].parse(text) == score


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


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_value_paths_tell_every_verdict_apart(tiny_model, fmt):
    from src.modeling.source import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    f = FORMATS[fmt]
    prefix, paths = value_paths(tok, f)
    opening = f.template.split("{}")[0]
    assert (
        tok.decode(prefix).replace(" ", "")
        == opening.replace(" ", "")[: len(tok.decode(prefix).replace(" ", ""))]
    )
    assert len({tuple(p) for p in paths.values()}) == len(f.direct_values())
    for value, path in paths.items():  # each path is how that verdict's text goes on
        full = tok.encode(f.template.format(value), add_special_tokens=False)
        assert full[: len(prefix) + len(path)] == prefix + path


@pytest.mark.parametrize(
    "fmt, target, want",
    [
        ("score10", "2", 2.0),
        ("score10", "7", 7.0),
        ("score10", "10", 10.0),
        ("yes_no", "Yes", 1.0),
        ("yes_no", "No", 0.0),
        ("result5", "4", 4.0),
        ("rating10", "10", 10.0),
        ("rating10", "1", 1.0),
        ("pairwise", "B", 0.0),
        ("pairwise", "C", 0.5),
    ],
)
def test_direct_score_follows_the_model(tiny_model, fmt, target, want):
    """With a model that puts all mass on one verdict, the direct score is that verdict."""
    import mlx.core as mx

    from src.judging.scores import direct_scores
    from src.modeling.source import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    f = FORMATS[fmt]
    prefix, _ = value_paths(tok, f)
    seq = tok.encode(f.template.format(target), add_special_tokens=False)[len(prefix) :]

    def model(x):  # after the prefix, emit the target verdict's tokens
        b, t = x.shape
        logits = mx.full((b, t, 512), -30.0)
        done = [int((x[i] != 0).sum()) for i in range(b)]
        for i in range(b):
            row = x[i, : done[i]].tolist()
            k = max(j for j in range(len(seq) + 1) if j == 0 or row[-j:] == seq[:j])
            logits[i, done[i] - 1, seq[min(k, len(seq) - 1)]] = 30.0
        return logits

    got = direct_scores(model, tok, [[5, 6, 7], [8, 9]], f)
    assert got == pytest.approx([want, want], abs=1e-3)


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


def test_base_model_judges_the_same_rows_in_the_same_run(fused, tiny_model):
    assert evaluate(_eval_args(fused, limit=6, base_model=tiny_model)) == 0
    m = json.loads((fused / "eval.json").read_text())
    assert m["base_n_eval"] == m["n_eval"] == 6 and 0 <= m["base_parse_rate"] <= 1
    assert all("base_judgement" in j for j in read_jsonl(fused / "j.jsonl"))


def test_metrics_of_a_perfect_and_a_broken_judge(fused, monkeypatch):
    from src.judging import generate as gen

    rows = read_jsonl(fused / "valid.jsonl")
    answers = {
        "perfect": [r["messages"][-1]["content"] for r in rows],
        "broken": ["Score: 11/10", "no verdict", "Score: /10"] * len(rows),
    }
    results = {}
    for name, texts in answers.items():
        queue = list(texts)

        def fake(model, tokenizer, prompts, max_tokens, batch_size, *more, queue=queue):
            return [queue.pop(0) for _ in prompts], None, None

        monkeypatch.setattr(gen, "judge_texts", fake)
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


@pytest.mark.parametrize("verdict", ["yes_no", "result5", "rating10"])
def test_other_pointwise_formats_are_detected_and_scored(tmp_path, fused, monkeypatch, verdict):
    """Rows in another verdict format are read in that format: a judge that copies the
    reference scores perfectly, one that always answers the lowest verdict scores at chance."""
    rows = list(generate_rows(40, seed=3, long_fraction=0.0, verdict=verdict))
    data = write_jsonl(tmp_path / "v.jsonl", rows)
    lowest = {"yes_no": "No", "result5": "1", "rating10": "1"}[verdict]
    low_text = FORMATS[verdict].template.format(lowest)
    results = {}
    references = iter([r["messages"][-1]["content"] for r in rows])  # judged in row order
    for name, answer in {
        "copy": lambda p: next(references),
        "lowest": lambda p: "Critique: no.\n" + low_text,
    }.items():
        fake_generation(monkeypatch, answer)
        out = tmp_path / f"{name}.json"
        judgements = tmp_path / f"{name}.jsonl"
        assert evaluate(_eval_args(fused, data=data, metrics=out, judgements_out=judgements)) == 0
        results[name] = json.loads(out.read_text())
        assert {j["verdict_format"] for j in read_jsonl(judgements)} == {verdict}
    copy, lowest_m = results["copy"], results["lowest"]
    assert copy[f"verdict_format_{verdict}"] == 1 and "verdict_format_score10" not in copy
    assert copy["parse_rate"] == 1.0 and copy["verdict_accuracy"] == 1.0
    assert copy["mean_abs_score_error"] == 0.0 and copy["score_pearson"] == 1.0
    assert copy["score_spearman"] == 1.0 and copy["best_of_n_accuracy"] == 1.0
    assert copy["best_of_n_oracle"] == 1.0 and 0.3 < copy["best_of_n_random"] < 0.7
    labels = [r["metadata"]["label"] for r in rows]
    assert lowest_m["verdict_accuracy"] == round(labels.count(0) / len(labels), 4)
    assert lowest_m["best_of_n_accuracy"] == lowest_m["best_of_n_random"]  # all tied: random
    assert "score_pearson" not in lowest_m  # a constant judge has no correlation, not NaN


def test_pairwise_rows_are_judged_in_both_orders(tmp_path, fused, monkeypatch):
    rows = list(generate_rows(30, seed=4, long_fraction=0.0, verdict="pairwise"))
    data = write_jsonl(tmp_path / "v.jsonl", rows)

    def right(prompt):  # a perfect judge reads which response is the correct one
        a = prompt.split("[Response A]\n")[1].split("\n")[0]
        b = prompt.split("[Response B]\n")[1].split("\n")[0]
        row = next(
            r for r in rows if {a, b} == {r["metadata"]["response_a"], r["metadata"]["response_b"]}
        )
        correct = row["metadata"]["response_a" if row["metadata"]["label"] else "response_b"]
        return "Critique: ...\n[[A]]" if a == correct else "Critique: ...\n[[B]]"

    results = {}
    for name, answer in {
        "right": right,
        "always_a": lambda p: "[[A]]",
        "unparsed": lambda p: "A is better",
    }.items():
        fake_generation(monkeypatch, answer)
        out = tmp_path / f"{name}.json"
        assert evaluate(_eval_args(fused, data=data, metrics=out)) == 0
        results[name] = json.loads(out.read_text())
    right_m, always_a, unparsed = results["right"], results["always_a"], results["unparsed"]
    assert right_m["verdict_format_pairwise"] == 1 and right_m["n_pairs"] == len(rows)
    assert right_m["pairwise_accuracy"] == 1.0 and right_m["position_consistency"] == 1.0
    assert right_m["pairwise_accuracy_swapped"] == 1.0 and right_m["parse_rate"] == 1.0
    # always [[A]]: right in one order of every pair, never consistent
    assert always_a["pairwise_accuracy"] == 0.5 and always_a["position_consistency"] == 0.0
    share_a = sum(r["metadata"]["label"] for r in rows) / len(rows)
    assert always_a["pairwise_accuracy_given_order"] == round(share_a, 4)
    # no verdict counts as a tie (RewardBench), not as a loss
    assert unparsed["pairwise_accuracy"] == 0.5 and unparsed["parse_rate"] == 0.0
    judged = read_jsonl(fused / "j.jsonl")
    assert all("judgement_swapped" in j and "direct_score_swapped" in j for j in judged)


def test_pairwise_rows_whose_responses_cannot_be_swapped_are_refused(tmp_path, capsys, fused):
    rows = list(generate_rows(10, seed=4, long_fraction=0.0, verdict="pairwise"))
    rows[3]["metadata"]["response_b"] = "not in the prompt"
    data = write_jsonl(tmp_path / "v.jsonl", rows)
    out = tmp_path / "eval.json"
    assert evaluate(_eval_args(fused, data=data, metrics=out)) == 1
    err = capsys.readouterr().err
    assert f"{data}:4: cannot swap this pairwise row's responses" in err and "Fix:" in err
    assert not out.exists()


def test_references_in_no_known_format_are_refused(tmp_path, capsys, fused):
    """A format nothing parses must not turn into metrics that look like results (Yes/No rows
    used to give parse_rate 0.66 and a score error against nothing)."""
    rows = read_jsonl(fused / "valid.jsonl")
    for r in rows:
        r["messages"][-1]["content"] = "Critique: fine.\nVerdict: good"
    data = write_jsonl(tmp_path / "v.jsonl", rows)
    out = tmp_path / "eval.json"
    assert evaluate(_eval_args(fused, data=data, metrics=out, judgements_out=tmp_path / "j")) == 1
    err = capsys.readouterr().err
    n = len(rows)
    assert f"{data}:1: no verdict format parses (nearly) all {n} reference judgements" in err
    assert f"score10 0/{n}, yes_no 0/{n}" in err and "eval.verdict=regex" in err
    assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "j").exists()
    # a regex whose group captures words, not numbers, parses nothing: refused the same way
    pattern = "Verdict: (good|bad)"
    assert (
        evaluate(
            _eval_args(fused, data=data, metrics=out, verdict="regex", verdict_pattern=pattern)
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"eval.verdict=regex parses 0 of {n} reference judgements" in err
    assert "Traceback" not in err and not out.exists()


def test_a_format_that_does_not_match_the_references_is_refused(tmp_path, capsys, fused):
    rows = list(generate_rows(20, seed=3, long_fraction=0.0, verdict="yes_no"))
    data = write_jsonl(tmp_path / "v.jsonl", rows)
    out = tmp_path / "eval.json"
    assert evaluate(_eval_args(fused, data=data, metrics=out, verdict="score10")) == 1
    err = capsys.readouterr().err
    assert f"{data}:1: eval.verdict=score10 parses 0 of 20 reference judgements" in err
    assert "Fix: set eval.verdict=yes_no or auto" in err
    assert not out.exists()


def test_a_regex_verdict_format(tmp_path, fused, monkeypatch):
    rows = list(generate_rows(20, seed=3, long_fraction=0.0))
    for r in rows:  # "Score: 8/10" -> "Grade: 4 of 5"
        s = r["metadata"]["score"]
        r["messages"][-1]["content"] = (
            r["messages"][-1]["content"].split("Score:")[0] + f"Grade: {round(s / 2)} of 5"
        )
    data = write_jsonl(tmp_path / "v.jsonl", rows)
    fake_generation(monkeypatch, lambda p: "Grade: 5 of 5")
    out = tmp_path / "eval.json"
    args = _eval_args(
        fused,
        data=data,
        metrics=out,
        verdict="regex",
        verdict_pattern=r"Grade: (\d) of 5",
        verdict_min=0.0,
        verdict_max=5.0,
    )
    assert evaluate(args) == 0
    m = json.loads(out.read_text())
    assert m["verdict_format_regex"] == 1 and m["parse_rate"] == 1.0 and "direct_auc" not in m
    labels = [r["metadata"]["label"] for r in rows]
    assert m["verdict_accuracy"] == round(sum(labels) / len(labels), 4)  # always 5 >= 2.5


@pytest.mark.parametrize(
    "extra, message",
    [
        (dict(verdict="regex", verdict_pattern="Grade: (\\d"), "is not a valid regex"),
        (dict(verdict="regex", verdict_pattern="Grade: \\d"), "must have exactly one group"),
        (
            dict(verdict="regex", verdict_pattern="(\\d)", verdict_min=5.0, verdict_max=5.0),
            "must be below",
        ),
    ],
)
def test_bad_verdict_flags_are_refused(fused, capsys, extra, message):
    assert evaluate(_eval_args(fused, **extra)) == 2
    assert message in capsys.readouterr().err


def test_bootstrap_interval_resamples_whole_tasks_and_is_seeded():
    from src.judging.metrics import bootstrap_interval, mean_of

    def accuracy(values):
        return lambda rows, ids: mean_of([values[i] for i in rows])

    # 100 independent rows, 87 right: the interval of a binomial proportion (+-0.066 at 95%)
    right = [True] * 87 + [False] * 13
    lo, hi = bootstrap_interval([None] * 100, accuracy(right))
    assert lo == pytest.approx(0.87 - 0.066, abs=0.02) and hi == pytest.approx(
        0.87 + 0.066, abs=0.02
    )
    assert bootstrap_interval([None] * 100, accuracy(right)) == (lo, hi)  # seeded
    assert bootstrap_interval([None] * 100, accuracy([True] * 100)) == (1.0, 1.0)
    # two tasks of ten rows, one all right, one all wrong: resampled whole, a resample's mean is
    # 0, 0.5 or 1 (row-level resampling would give every tenth in between)
    tasks = ["a"] * 10 + ["b"] * 10
    seen = set()

    def record(rows, ids):
        seen.add(mean_of([i < 10 for i in rows]))
        assert len(set(ids)) == 2 and len(rows) == 20  # a task drawn twice counts twice
        return seen and mean_of([i < 10 for i in rows])

    assert bootstrap_interval(tasks, record) == (0.0, 1.0)
    assert seen == {0.0, 0.5, 1.0}


def test_exact_match_normalizes_case_whitespace_and_punctuation():
    from src.judging.metrics import normalize_answer

    assert normalize_answer(" Elppa.") == normalize_answer("elppa") == "elppa"
    assert normalize_answer("2000 M ") == normalize_answer("2000 m")
    assert normalize_answer('"1, 2, 3"') == "1, 2, 3"  # inner punctuation stays
    assert normalize_answer("0.5") != normalize_answer("1/2")  # the rule's limit: no equivalence


def test_intervals_exact_match_and_soft_scores_in_the_metrics(tmp_path, fused, monkeypatch):
    """A judge that copies the reference judgements: every headline metric carries its
    interval, the exact-match rule is scored on the same rows (bare sample answers: 1.0), and
    the soft score P(Yes) is read where each judgement wrote its verdict."""
    rows = list(generate_rows(40, seed=3, long_fraction=0.0, verdict="yes_no", reference=True))
    data = write_jsonl(tmp_path / "v.jsonl", rows)
    references = iter([r["messages"][-1]["content"] for r in rows])
    fake_generation(monkeypatch, lambda p: next(references))
    out, judgements = tmp_path / "m.json", tmp_path / "j.jsonl"
    assert evaluate(_eval_args(fused, data=data, metrics=out, judgements_out=judgements)) == 0
    m = json.loads(out.read_text())
    assert m["exact_match_accuracy"] == 1.0 and m["n_exact_match"] == 40
    for name in ("verdict_accuracy", "pairwise_accuracy", "best_of_n_accuracy", "soft_auc"):
        assert m[f"{name}_lo"] <= m[name] <= m[f"{name}_hi"], name
    assert m["verdict_accuracy_lo"] == m["verdict_accuracy_hi"] == 1.0
    assert m["n_soft"] == 40 and 0 <= m["soft_auc"] <= 1
    soft = [j["soft_score"] for j in read_jsonl(judgements)]
    assert all(0 <= s <= 1 for s in soft) and len(set(soft)) > 1  # the model's, not the verdict


def test_average_votes_groups_consecutive_votes():
    from src.evaluate_genrm import average_votes

    assert average_votes([0.2, 0.4, None, None, 1.0, None], 2) == [
        pytest.approx(0.3),
        None,
        1.0,
    ]


def _tiny_judge_format(fused, n: int):
    """The tiny judge, its first ``n`` validation conversations, and a verdict format that reads
    a token it writes (``conftest.written_format``)."""
    from src.judging import generate as gen
    from src.judging.scores import chat_prompt_ids
    from src.modeling.load import load_base

    model, tok, _, _ = load_base(str(fused / "merged"), 0, 64)
    conversations = [r["messages"][:-1] for r in read_jsonl(fused / "valid.jsonl")[:n]]
    out = gen.generate(model, tok, chat_prompt_ids(tok, conversations), 6, n, top=11)
    return model, tok, conversations, written_format(tok, out.tokens, out.tops)


def test_one_vote_at_temperature_zero_is_the_greedy_judgement(fused):
    """Voting with K=1 at temperature 0 gives the greedy judge's soft score and verdict, row
    for row (the tiny judge's own generations, read by a test double of a format)."""
    from src.evaluate_genrm import EvalConfig, _generate, _votes

    model, tok, conversations, fmt = _tiny_judge_format(fused, 6)
    cfg = EvalConfig(max_tokens=6, batch_size=4, votes=1, temperature=0.0)
    texts, _, soft, _ = _generate(model, tok, conversations, fmt, cfg)
    vote_soft, vote_verdicts, _ = _votes(model, tok, conversations, fmt, cfg)
    assert any(s is not None for s in soft)
    assert vote_soft == pytest.approx(soft, abs=1e-6)
    assert vote_verdicts == [None if (v := fmt.parse(t)) is None else v for t in texts]


def test_votes_through_the_command(tmp_path, fused, monkeypatch):
    """--votes K --temperature T: K judgements per row; a judge whose every vote copies the
    reference judgement has a perfect majority, with its interval."""
    rows = list(generate_rows(24, seed=6, long_fraction=0.0, verdict="yes_no", reference=True))
    data = write_jsonl(tmp_path / "v.jsonl", rows)
    by_prompt = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in rows}
    calls = []

    def answer(prompt):
        calls.append(prompt)
        return next(ref for user, ref in by_prompt.items() if user in prompt)

    fake_generation(monkeypatch, answer)
    out, judgements = tmp_path / "m.json", tmp_path / "j.jsonl"
    args = _eval_args(fused, data=data, metrics=out, judgements_out=judgements)
    assert evaluate([*args, "--votes", "3", "--temperature", "0.7"]) == 0
    m = json.loads(out.read_text())
    assert len(calls) == 24 * (1 + 3)  # the greedy judgement and three votes per row
    assert m["verdict_accuracy_votes"] == m["verdict_accuracy_votes_lo"] == 1.0
    assert 0 <= m["soft_auc_votes_lo"] <= m["soft_auc_votes"] <= m["soft_auc_votes_hi"] <= 1
    assert all(j["verdict_votes"] in (0.0, 1.0) for j in read_jsonl(judgements))
    assert evaluate([*args, "--votes", "-1"]) == 2


def test_held_out_families_and_free_form_rows_are_scored_apart(tmp_path, fused, monkeypatch):
    """--ood-data / --ff-data: the held-out families' rows and the free-form rows are judged too
    (ood_* / ff_* metrics, records marked "ood" / "ff"); on free-form rows a judge that reads
    the final answer beats the exact-match rule."""
    from src.data.sample import FREE_FORM_MAKERS, HELD_OUT_MAKERS

    common = dict(long_fraction=0.0, verdict="yes_no", reference=True, free_form=0.5)
    rows = list(generate_rows(30, seed=7, **common))
    held = list(generate_rows(20, seed=7, makers=HELD_OUT_MAKERS, prefix="ood", **common))
    common["free_form"] = 1.0
    free = list(generate_rows(12, 7, makers=FREE_FORM_MAKERS, prefix="ff", stream="ff", **common))
    data = write_jsonl(tmp_path / "v.jsonl", rows)
    ood = write_jsonl(tmp_path / "ood.jsonl", held)
    ff = write_jsonl(tmp_path / "ff.jsonl", free)
    by_prompt = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in rows + held}
    # the free-form rows get a judge that reads the first number it sees (a rule in disguise):
    # wrong wherever the worked step's number is not the final answer
    for r in free:
        meta = r["metadata"]
        first = re.search(r"-?\d+(\.\d+)?|[A-Za-z]+(?=\.?$)", meta["response"]).group(0)
        said = "Yes" if first == meta["reference"].split()[0] else "No"
        by_prompt[r["messages"][0]["content"]] = (
            f"Critique: .\nIs the answer correct (Yes/No)? {said}"
        )
    fake_generation(monkeypatch, lambda p: next(v for u, v in by_prompt.items() if u in p))
    out, judgements = tmp_path / "m.json", tmp_path / "j.jsonl"
    sets = dict(ood_data=ood, ff_data=ff)
    args = _eval_args(fused, data=data, metrics=out, judgements_out=judgements, **sets)
    assert evaluate(args) == 0
    m = json.loads(out.read_text())
    assert m["ood_n_eval"] == 20 and m["ood_verdict_accuracy"] == 1.0
    assert m["ood_exact_match_accuracy"] < 1.0  # the rule misreads free-form answers
    assert m["verdict_accuracy_free_form"] == 1.0 > m["exact_match_accuracy_free_form"]
    assert m["n_free_form"] == sum(bool(r["metadata"].get("free_form")) for r in rows)
    assert m["ood_verdict_accuracy_free_form_lo"] <= 1.0
    assert m["ff_n_eval"] == m["ff_n_free_form"] == 12
    misread = [
        j for j in read_jsonl(judgements) if j.get("set") == "ff" and j["score"] != j["label"]
    ]
    assert m["ff_verdict_accuracy"] == round(1 - len(misread) / 12, 4) < 1.0
    assert m["ff_exact_match_accuracy"] < 1.0
    marked = [j.get("set") for j in read_jsonl(judgements)]
    assert marked.count("ood") == 20 and marked.count("ff") == 12 and len(marked) == 62

    # an empty file (sample_data at data.ood_rows 0) is no set: no ood_* metrics, the rest kept
    ood.write_bytes(b"")
    assert evaluate(args) == 0
    m = json.loads(out.read_text())
    assert not any(k.startswith("ood_") for k in m) and m["ff_n_eval"] == 12
    assert [j.get("set") for j in read_jsonl(judgements)].count("ood") == 0


def test_soft_scores_read_off_the_generation_are_the_second_passes(fused):
    """evaluate reads each judgement's soft score off its own generation (the verdict values'
    logits where the verdict was written); a second forward pass over prompt and judgement
    (scores.soft_scores, what evaluate did before) gives the same scores."""
    from src.evaluate_genrm import EvalConfig, _generate
    from src.judging.scores import chat_prompt_ids, soft_scores

    model, tok, conversations, fmt = _tiny_judge_format(fused, 8)
    texts, _, soft, _ = _generate(model, tok, conversations, fmt, EvalConfig(max_tokens=6))
    again = soft_scores(model, tok, chat_prompt_ids(tok, conversations), texts, fmt)
    assert sum(s is not None for s in soft) >= 2
    assert soft == pytest.approx(again, abs=1e-4)
