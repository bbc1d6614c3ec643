"""The judge as a product: the Python reward function, the score CLI, mlx-lm's server."""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from conftest import fake_generation, flags, read_jsonl, write_jsonl

from src.genrm import GenRM, ServedGenRM, _soft_values
from src.genrm_sample import judge_prompt
from src.runtime import StageError
from src.score import main as score
from src.verdicts import regex_format

PAIRS = [
    ("Compute 12 + 30.", "42", "42"),
    ("Compute 12 + 30.", "43", "42"),
    ("Reverse the string 'apple'.", "elppa", "elppa"),
    ("Sort in ascending order: 3, 1, 2.", "1, 3, 2", "1, 2, 3"),
    ("Convert 2 km to m.", "2000 m", "2000 m"),
]


@pytest.fixture(scope="module")
def judge(fused):
    return GenRM(fused / "merged", max_tokens=12, batch_size=2)


def test_scores_are_the_verdicts_on_a_unit_scale(judge, monkeypatch):
    prompts, responses, _ = zip(*PAIRS, strict=True)
    texts = iter(
        ["Critique: ok.\nScore: 8/10", "Score: 0/10", "Score: 10/10", "no verdict", "Score: 11/10"]
    )
    fake_generation(monkeypatch, lambda prompt: next(texts))
    records = judge.judge(list(prompts), list(responses))
    assert [r["raw"] for r in records] == [8.0, 0.0, 10.0, None, None]
    assert [r["score"] for r in records] == [0.8, 0.0, 1.0, None, None]
    texts = iter(["Score: 8/10", "Score: 0/10", "Score: 10/10", "x", "y"])
    fake_generation(monkeypatch, lambda prompt: next(texts))
    assert judge(list(prompts), list(responses)) == [0.8, 0.0, 1.0, 0.0, 0.0]  # unparsed: 0.0


def test_reward_signature_works_for_trl_and_mlx_lm_lora(judge):
    """TRL's GRPOTrainer calls ``f(prompts=, completions=, completion_ids=, **dataset_columns)``
    and names it by ``__name__``; mlx-lm-lora calls ``f(prompts=, completions=, answer=,
    types=)``. Conversational rows (lists of messages) are TRL's other input format."""
    prompts, responses, refs = (list(x) for x in zip(*PAIRS, strict=True))
    assert judge.__name__ == "genrm_score10"
    for call in (
        dict(prompts=prompts, completions=responses, completion_ids=[[1]] * 5, trainer_state=None),
        dict(prompts=prompts, completions=responses, answer=refs, types=[None] * 5),
        dict(
            prompts=[
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}]
                for p in prompts
            ],
            completions=[[{"role": "assistant", "content": r}] for r in responses],
            reference=refs,
        ),
    ):
        inspect.signature(judge).bind(**call)
        rewards = judge(**call)
        assert len(rewards) == 5 and all(isinstance(r, float) and 0 <= r <= 1 for r in rewards)
    # the conversational form is the same pairs: the same rewards
    direct = GenRM(judge.model_path, direct=True)
    as_text = direct(prompts=prompts, completions=responses, answer=refs)
    as_chat = direct(
        prompts=[[{"role": "user", "content": p}] for p in prompts],
        completions=[[{"role": "assistant", "content": r}] for r in responses],
        reference=refs,
    )
    assert as_text == as_chat and len(set(as_text)) > 1


def test_a_reference_reaches_the_judges_prompt(judge):
    assert judge.judge_prompt("Compute 1 + 1.", "2") == judge_prompt("Compute 1 + 1.", "2")
    guided = judge.judge_prompt("Compute 1 + 1.", "2", reference="2")
    assert "Reference answer: 2" in guided and guided == judge_prompt(
        "Compute 1 + 1.", "2", reference="2"
    )
    custom = GenRM.__new__(GenRM)
    custom.template = "Q: {prompt}\nA: {response}\nGold: {reference}"
    custom.fmt = judge.fmt
    assert custom.judge_prompt("q", "a", "g") == "Q: q\nA: a\nGold: g"
    with pytest.raises(StageError, match="no reference was given"):
        custom.judge_prompt("q", "a")


def test_direct_scores_match_the_evaluate_stage(judge, fused):
    """The Python interface's direct score is the evaluate stage's, on the same row."""
    from src.judge import direct_scores

    prompts, responses, _ = zip(*PAIRS, strict=True)
    direct = GenRM(judge.model_path, direct=True, batch_size=3)
    records = direct.judge(list(prompts), list(responses))
    ids = direct.prompt_ids([judge_prompt(p, r) for p, r in zip(prompts, responses, strict=True)])
    want = direct_scores(direct.model, direct.tokenizer, ids)
    assert [r["raw"] for r in records] == pytest.approx(want, abs=1e-5)
    assert [r["score"] for r in records] == pytest.approx([w / 10 for w in want], abs=1e-6)


def test_formats_without_a_pointwise_judge_are_refused(fused):
    with pytest.raises(StageError, match="compares two"):
        GenRM(fused / "merged", verdict="pairwise")
    with pytest.raises(StageError, match="no built-in judge prompt"):
        ServedGenRM(verdict=regex_format(r"(\d)", 0, 9))


def _score_args(fused, tmp_path, inp, **extra):
    return flags(
        model=fused / "merged", input=inp, output=tmp_path / "scores.jsonl", max_tokens=8, **extra
    )


def test_score_cli_on_good_input(fused, tmp_path):
    rows = [
        {"prompt": "Compute 12 + 30.", "response": "42"},
        {"prompt": "Compute 12 + 30.", "response": "41", "reference": "42"},
        {
            "messages": [
                {"role": "user", "content": "Reverse 'abc'."},
                {"role": "assistant", "content": "cba"},
            ]
        },
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(rows[0]) + "\n\n" + "\n".join(map(json.dumps, rows[1:])) + "\n")
    for direct in (False, True):
        assert (
            score(_score_args(fused, tmp_path, inp, direct=direct, metrics=tmp_path / "m.json"))
            == 0
        )
        out = read_jsonl(tmp_path / "scores.jsonl")
        assert [o["line"] for o in out] == [1, 3, 4]  # file lines, blank line skipped
        for o in out:
            assert o["score"] is None or 0 <= o["score"] <= 1
            assert (o["judgement"] is None) == direct
        m = json.loads((tmp_path / "m.json").read_text())
        assert m["n_rows"] == 3 and m["n_unparsed"] == sum(o["score"] is None for o in out)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "Compute 1 + 1."}', '2: "response" is missing or not a non-empty string'),
        ('{"prompt": "", "response": "2"}', '2: "prompt" is missing or not a non-empty string'),
        (
            '{"messages": [{"role": "user", "content": "hi"}]}',
            "2: a chat row must end with the assistant",
        ),
        ('{"messages": "hi"}', "2: a chat row must end with the assistant"),
        ('{"prompt": "q", "response": "a", "reference": ["x"]}', '2: "reference" must be a string'),
        ('{"prompt": "q", "response": "a"', "2: malformed JSON"),
        ("[1, 2]", "2: expected a JSON object"),
    ],
)
def test_score_cli_refuses_bad_rows_and_writes_nothing(fused, tmp_path, capsys, line, message):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "Compute 1 + 1.", "response": "2"}\n' + line + "\n")
    assert score(_score_args(fused, tmp_path, inp)) == 1
    err = capsys.readouterr().err
    assert f"{inp}:{message}" in err and "Fix:" in err and "Traceback" not in err
    assert not (tmp_path / "scores.jsonl").exists()


def test_score_cli_with_a_template(fused, tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q", "response": "a"}])
    template = tmp_path / "t.txt"
    template.write_text("Question: {prompt}\nAnswer: {response}\nGrade it. Score: N/10")
    assert score(_score_args(fused, tmp_path, inp, template=template)) == 0
    template.write_text("Question: {prompt}\nAnswer: {response}\nGold: {gold}")
    assert score(_score_args(fused, tmp_path, inp, template=template)) == 1
    assert "unknown field 'gold'" in capsys.readouterr().err
    assert score(_score_args(fused, tmp_path, inp, template=tmp_path / "none.txt")) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _server(fused, tmp_path):
    """mlx-lm's own server on the fused tiny judge, on a free localhost port."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlx_lm.server",
            "--model",
            str(fused / "merged"),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                assert time.time() < deadline, "mlx_lm.server did not start"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_mlx_lm_server_round_trip(fused, tmp_path):
    """The fused judge served by mlx-lm's own server scores like the Python interface."""
    prompts, responses, refs = (list(x) for x in zip(*PAIRS, strict=True))
    local = GenRM(fused / "merged", max_tokens=12, batch_size=1)
    with _server(fused, tmp_path) as url:
        served = ServedGenRM(url, max_tokens=12)
        got, want = served.judge(prompts, responses, refs), local.judge(prompts, responses, refs)
        assert served(prompts=prompts, completions=responses, answer=refs) == local(
            prompts=prompts, completions=responses, answer=refs
        )
    assert [g["judgement"] for g in got] == [w["judgement"] for w in want]
    assert [g["score"] for g in got] == [w["score"] for w in want]
    assert all(g["judgement"] for g in got)  # the server really generated text


def test_soft_verdict_reads_the_verdict_position(fused):
    import math

    from src.judge import soft_verdict, value_token_ids
    from src.model_source import load_tokenizer
    from src.verdicts import FORMATS

    tok = load_tokenizer(str(fused / "merged"))
    yes_no = FORMATS["yes_no"]
    values = value_token_ids(tok, yes_no)
    assert sorted(values.values()) == [0.0, 1.0]
    yes = next(t for t, v in values.items() if v == 1.0)
    no = next(t for t, v in values.items() if v == 0.0)
    tokens = tok.encode(
        "Critique: fine.\nIs the answer correct (Yes/No)? Yes", add_special_tokens=False
    )
    at = len(tokens) - 1 - tokens[::-1].index(yes)  # the verdict, not "(Yes/No)"
    top = [{t: 0.0} for t in tokens]
    top[at] = {yes: math.log(0.6), no: math.log(0.2), 7: math.log(0.2)}
    assert soft_verdict(yes_no, tok, values, tokens, top) == pytest.approx(0.75)  # 0.6 / 0.8
    top[at] = {yes: math.log(0.9)}  # No outside the reported alternatives: probability 0
    assert soft_verdict(yes_no, tok, values, tokens, top) == pytest.approx(1.0)
    assert soft_verdict(yes_no, tok, values, tokens[:at], top) is None  # no verdict written
    # where digits are split (one token per character here), 1 and 10 share a first token:
    # no soft score for Score: N/10, and asking for one is refused
    chars = SimpleNamespace(encode=lambda text, add_special_tokens=False: [ord(c) for c in text])
    assert value_token_ids(chars, FORMATS["score10"]) is None
    assert value_token_ids(chars, FORMATS["result5"]) == {ord(str(v)): v for v in range(1, 6)}
    with pytest.raises(StageError, match="soft scores need each score10 verdict to be one token"):
        _soft_values(chars, FORMATS["score10"])


def test_soft_scores_from_mlx_lm_server_logprobs_equal_the_python_ones(fused, tmp_path):
    """``logprobs`` through the real server give the soft score the Python interface computes.
    The tiny judge writes no real verdict, so the format here is a test double that reads the
    word it does write ("The" = 1) against one it nearly writes ("is" = 0, among the top
    alternatives at each step); the model, server and arithmetic are real."""
    import re

    from src.verdicts import VerdictFormat

    words = {"The": 1.0, "is": 0.0}
    the = VerdictFormat("the", re.compile(r"\b(The|is)\b"), 0, 1, 1, words, "x {}")
    prompts, responses, refs = (list(x) for x in zip(*PAIRS, strict=True))
    template = "Task: {prompt}\nResponse: {response}\nVerdict:"
    local = GenRM(fused / "merged", the, template, max_tokens=6, batch_size=2, soft=True)
    with _server(fused, tmp_path) as url:
        served = ServedGenRM(
            url, the, template, max_tokens=6, soft=True, tokenizer=fused / "merged"
        )
        got, want = served.judge(prompts, responses), local.judge(prompts, responses)
    assert [g["judgement"] for g in got] == [w["judgement"] for w in want]
    soft = [w["soft_score"] for w in want]
    assert all(s is not None and 0 < s < 1 for s in soft), want  # both words weighed
    assert [g["soft_score"] for g in got] == pytest.approx(soft, abs=1e-4)
