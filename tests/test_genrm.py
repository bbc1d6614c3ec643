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
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import fake_generation, flags, read_jsonl, write_jsonl, written_format

from src.judging.genrm import GenRM, ServedGenRM, _soft_values
from src.judging.prompts import judge_prompt
from src.judging.verdicts import regex_format
from src.runtime import StageError
from src.score import main as score

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
    from src.judging.scores import direct_scores

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
        served = ServedGenRM(url, max_tokens=12, tokenizer=fused / "merged")
        got, want = served.judge(prompts, responses, refs), local.judge(prompts, responses, refs)
        assert served(prompts=prompts, completions=responses, answer=refs) == local(
            prompts=prompts, completions=responses, answer=refs
        )
    assert [g["judgement"] for g in got] == [w["judgement"] for w in want]
    assert [g["score"] for g in got] == [w["score"] for w in want]
    assert all(g["judgement"] for g in got)  # the server really generated text


def test_soft_verdict_reads_the_verdict_position(fused):
    import math

    from src.judging.scores import soft_verdict, value_token_ids
    from src.judging.verdicts import FORMATS
    from src.modeling.source import load_tokenizer

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


def _written(fused, template: str, prompts: list, responses: list):
    """A format reading what the tiny judge writes for these rows (``conftest.written_format``)."""
    judge = GenRM(fused / "merged", "yes_no", template, max_tokens=6, batch_size=2)
    tokens, tops = judge._generate(judge.prompt_ids(judge.user_turns(prompts, responses, None)))
    return written_format(judge.tokenizer, tokens, tops)


def test_soft_scores_from_mlx_lm_server_logprobs_equal_the_python_ones(fused, tmp_path):
    """``logprobs`` through the real server give the soft score the Python interface computes.
    The tiny judge writes no real verdict, so the format here is a test double that reads a
    token it does write (= 1) against one it nearly writes (= 0, among the top alternatives at
    each step: ``conftest.written_format``); the model, server and arithmetic are real."""
    prompts, responses, refs = (list(x) for x in zip(*PAIRS, strict=True))
    template = "Task: {prompt}\nResponse: {response}\nVerdict:"
    the = _written(fused, template, prompts, responses)
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


def _judge_copy(fused, tmp_path, verdict: str, reference: bool) -> Path:
    """The fused tiny judge with another card: what a judge trained on other data carries."""
    import shutil

    from src.judging.card import JudgeCard
    from src.judging.prompts import judge_template

    folder = tmp_path / f"judge-{verdict}"
    shutil.copytree(fused / "merged", folder)
    JudgeCard(verdict, judge_template(verdict, reference), reference, 100, "0" * 64).write(folder)
    return folder


REFERENCED = [
    {"prompt": "Compute 12 + 30.", "response": "The answer is 42.", "reference": "42"},
    {"prompt": "Compute 12 + 30.", "response": "41", "reference": "42"},
]


def test_the_judge_carries_its_format_into_the_score_cli(fused, tmp_path, monkeypatch):
    """No --verdict: the card's format (yes_no, reference-guided) writes the prompt and reads
    the verdict; the fused model of the train -> fuse stages carries the card it was trained
    with."""
    card = json.loads((fused / "merged" / "genrm_judge.json").read_text())
    assert card["verdict"] == "score10" and card["reference"] is False
    assert card["n_rows"] == 100 and len(card["data_sha256"]) == 64
    folder = _judge_copy(fused, tmp_path, "yes_no", True)
    seen = []

    def answer(prompt):
        seen.append(prompt)
        good = "The answer is 42." in prompt
        return f"Critique: ...\nIs the answer correct (Yes/No)? {'Yes' if good else 'No'}"

    fake_generation(monkeypatch, answer)
    inp = write_jsonl(tmp_path / "in.jsonl", REFERENCED)
    out = tmp_path / "scores.jsonl"
    assert score(flags(model=folder, input=inp, output=out, max_tokens=8)) == 0
    assert [o["score"] for o in read_jsonl(out)] == [1.0, 0.0]
    assert all("Reference answer: 42" in p and "(Yes/No)?" in p for p in seen)
    # a flag still overrides the card: score10 reads no verdict in these judgements
    assert score(flags(model=folder, input=inp, output=out, verdict="score10")) == 0
    assert [o["score"] for o in read_jsonl(out)] == [None, None]
    # the README's example rows (chat rows too) carry references: every one is judged and parsed
    from conftest import ROOT

    assert score(flags(model=folder, input=ROOT / "docs/candidates.jsonl", output=out)) == 0
    assert all(o["score"] in (0.0, 1.0) for o in read_jsonl(out)) and len(read_jsonl(out)) == 6


def test_a_reference_guided_judge_refuses_a_row_without_reference(
    fused, tmp_path, monkeypatch, capsys
):
    folder = _judge_copy(fused, tmp_path, "yes_no", True)
    inp = write_jsonl(tmp_path / "in.jsonl", [*REFERENCED, {"prompt": "q", "response": "a"}])
    out = tmp_path / "scores.jsonl"
    assert score(flags(model=folder, input=inp, output=out)) == 1
    err = capsys.readouterr().err
    assert f'{inp}:3: no "reference"' in err and "--allow-missing-reference" in err
    assert "Traceback" not in err and not out.exists()
    fake_generation(monkeypatch, lambda prompt: "Is the answer correct (Yes/No)? No")
    assert score(flags(model=folder, input=inp, output=out, allow_missing_reference=True)) == 0
    assert len(read_jsonl(out)) == 3
    judge = GenRM(folder)
    with pytest.raises(StageError, match="pair 1 has no reference answer"):
        judge(prompts=["q", "q"], completions=["a", "b"], answer=["a", None])
    # without a card a model needs its verdict format named
    bare = tmp_path / "bare"
    (folder / "genrm_judge.json").rename(tmp_path / "card.json")
    folder.rename(bare)
    with pytest.raises(StageError, match="no judge card"):
        GenRM(bare)
    assert GenRM(bare, verdict="yes_no").fmt.name == "yes_no"


def test_score_cli_soft_writes_the_soft_score(fused, tmp_path, monkeypatch):
    """--soft reaches the judge: each row gets soft_score, P(Yes) where the verdict was
    written (the generation is a double with known log-probabilities; the arithmetic is real)."""
    import math

    from src.judging.scores import value_token_ids
    from src.judging.verdicts import FORMATS

    folder = _judge_copy(fused, tmp_path, "yes_no", True)
    judge = GenRM(folder)
    values = value_token_ids(judge.tokenizer, FORMATS["yes_no"])
    yes = next(t for t, v in values.items() if v == 1.0)
    no = next(t for t, v in values.items() if v == 0.0)
    text = "Critique: ok.\nIs the answer correct (Yes/No)? Yes"
    tokens = judge.tokenizer.encode(text, add_special_tokens=False)

    def generate(self, batch):
        top = [{yes: math.log(0.8), no: math.log(0.2)} for _ in tokens]
        return [tokens] * len(batch), [top] * len(batch)

    monkeypatch.setattr(GenRM, "_generate", generate)
    inp = write_jsonl(tmp_path / "in.jsonl", REFERENCED)
    out, metrics = tmp_path / "scores.jsonl", tmp_path / "m.json"
    assert score(flags(model=folder, input=inp, output=out, soft=True, metrics=metrics)) == 0
    rows = read_jsonl(out)
    assert [r["soft_score"] for r in rows] == pytest.approx([0.8, 0.8])
    assert [r["score"] for r in rows] == [1.0, 1.0]
    assert json.loads(metrics.read_text())["n_soft"] == 2


HOST_PROGRAM = """
import json, sys
import mlx.core as mx  # the host program (an RL trainer) imported MLX first
from mlx_lm.models import activations, base, gemma, llama

def fresh_llama_logits():
    args = llama.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2,
        intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
        vocab_size=97, tie_word_embeddings=True)
    mx.random.seed(3)
    model = llama.Model(args)
    return model, model(mx.array([[5, 9, 2, 44, 7, 1, 3, 60]])).tolist()

policy, before = fresh_llama_logits()
out = {"before": before}
if sys.argv[1] == "load":
    sys.path.insert(0, sys.argv[2])
    from src.judging.genrm import GenRM
    from src.modeling.load import load_base

    load_base(sys.argv[3], 0, 64)
    GenRM(sys.argv[3])
    GenRM(sys.argv[3])
    out["untouched"] = (llama.swiglu is activations.swiglu
        and llama.scaled_dot_product_attention is base.scaled_dot_product_attention
        and gemma.scaled_dot_product_attention is base.scaled_dot_product_attention)
    out["policy_after"] = policy(mx.array([[5, 9, 2, 44, 7, 1, 3, 60]])).tolist()
    out["fresh_after"] = fresh_llama_logits()[1]
print(json.dumps(out))
"""


def test_loading_the_judge_leaves_every_other_model_in_the_process_alone(fused, tmp_path):
    """Loading GenRM or a base in a host process changes no mlx-lm function and no other
    model: a llama policy's logits, and a fresh llama's, equal those of a process that never
    imported src. The host imported MLX first, so the reference BLAS runs: said once."""
    from conftest import ROOT

    script = tmp_path / "host.py"
    script.write_text(HOST_PROGRAM)

    def run(*args):
        done = subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout), done.stderr

    loaded, err = run("load", str(ROOT), str(fused / "merged"))
    never, _ = run("never")
    assert loaded["untouched"]
    assert loaded["before"] == never["before"]
    assert loaded["policy_after"] == never["before"] and loaded["fresh_after"] == never["before"]
    if sys.platform == "linux":
        assert err.count("WARNING: MLX is using the reference BLAS") == 1
        assert "Fix: import src before mlx" in err or "Fix: install the project" in err


def test_soft_scores_of_written_judgements_equal_those_read_while_generating(fused):
    """evaluate's soft score (one forward pass over prompt + judgement up to the verdict) is
    the one GenRM reads from the generation's own log-probabilities at that position."""
    from src.judging.scores import soft_scores, soft_verdict

    template = "Task: {prompt}\nResponse: {response}\nVerdict:"
    prompts, responses, _ = (list(x) for x in zip(*PAIRS, strict=True))
    the = _written(fused, template, prompts, responses)
    local = GenRM(fused / "merged", the, template, max_tokens=6, batch_size=2, soft=True)
    tok = local.tokenizer
    ids = local.prompt_ids(local.user_turns(prompts, responses, None))
    tokens, tops = local._generate(ids)
    pairs = zip(tokens, tops, strict=True)
    want = [soft_verdict(the, tok, local.soft_values, t, top) for t, top in pairs]
    got = soft_scores(local.model, tok, ids, [tok.decode(t) for t in tokens], the)
    assert all(w is not None for w in want)
    assert got == pytest.approx(want, abs=1e-4)
