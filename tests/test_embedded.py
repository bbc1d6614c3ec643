"""The embedded default: deterministic sample data and tiny Gemma, loadable by mlx-lm."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict

from src.data.sample import generate_rows
from src.data.sft import dumps
from src.prepare_model import PrepareModelConfig
from src.prepare_model import run as prepare_model


def _digest(directory) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def test_sample_data_is_deterministic():
    a = "".join(dumps(r) for r in generate_rows(500, seed=3))
    b = "".join(dumps(r) for r in generate_rows(500, seed=3))
    c = "".join(dumps(r) for r in generate_rows(500, seed=4))
    assert a == b
    assert a != c


def _truth(row) -> bool:
    """Recompute the ground truth from the user turn for the verifiable task kinds."""
    user = row["messages"][0]["content"]
    task = re.search(r"Task: (.*?)\n\nResponse: (.*?)\n\n", user, re.S)
    question, response = task.group(1), task.group(2)
    if m := re.fullmatch(r"Compute (\d+) ([-+*]) (\d+)\.", question):
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return int(response) == {"+": a + b, "-": a - b, "*": a * b}[op]
    if m := re.fullmatch(r"Sort in (\w+) order: (.*)\.", question):
        nums = [int(x) for x in m.group(2).split(", ")]
        return [int(x) for x in response.split(", ")] == sorted(
            nums, reverse=m.group(1) == "descending"
        )
    if m := re.fullmatch(r"Reverse the string '(\w+)'\.", question):
        return response == m.group(1)[::-1]
    if m := re.fullmatch(r"Convert ([\d.]+) (\w+) to (\w+)\.", question):
        number = response.removesuffix(f" {m.group(3)}")  # a wrong answer is a bare number
        return float(number) == float(m.group(1)) * _FACTORS[m.group(2), m.group(3)]
    return None


_FACTORS = {
    ("km", "m"): 1000,
    ("m", "cm"): 100,
    ("kg", "g"): 1000,
    ("hours", "minutes"): 60,
    ("minutes", "seconds"): 60,
    ("liters", "milliliters"): 1000,
}


def test_sample_data_labels_match_ground_truth_and_mix():
    rows = list(generate_rows(3000, seed=0))
    checked = 0
    for row in rows:
        truth = _truth(row)
        if truth is not None:
            assert truth == bool(row["metadata"]["label"]), row
            checked += 1
        score = int(re.search(r"Score: (\d+)/10$", row["messages"][1]["content"]).group(1))
        assert score == row["metadata"]["score"]
        assert (score >= 8) == bool(row["metadata"]["label"])
    assert checked > 1000
    labels = Counter(r["metadata"]["label"] for r in rows)
    assert abs(labels[0] - labels[1]) < 0.05 * len(rows)
    per_task = defaultdict(set)
    for r in rows:
        per_task[r["metadata"]["task_id"]].add(r["metadata"]["label"])
    assert sum(len(v) == 2 for v in per_task.values()) > 200  # pairs for pairwise accuracy
    assert len({dumps(r) for r in rows}) < len(rows)  # some exact duplicates for the split
    assert sum(len(r["messages"][0]["content"]) > 4000 for r in rows) >= 20  # long rows


def test_reference_guided_rows_are_the_same_tasks_with_the_answer_in_the_prompt():
    plain = list(generate_rows(1500, seed=0))
    guided = list(generate_rows(1500, seed=0, reference=True))
    for p, g in zip(plain, guided, strict=True):
        assert p["metadata"] == g["metadata"]  # same tasks, responses, labels and scores
        user, critique = g["messages"][0]["content"], g["messages"][1]["content"]
        task = re.search(r"Task: (.*?)\n\nReference answer: (.*?)\n\nResponse: (.*?)\n\n", user)
        question, answer, response = task.groups()
        assert p["messages"][0]["content"].startswith(f"Task: {question}\n\nResponse: {response}")
        assert (answer == response) == bool(g["metadata"]["label"])
        verdict = "it matches the reference" if answer == response else "does not match"
        assert verdict in critique and critique.endswith(f"Score: {g['metadata']['score']}/10")


def test_sorted_list_critiques_walk_the_two_lists_to_their_first_difference():
    """A reference-guided sorted-list critique names pairs response/reference in order, each
    "same" or "differ", and stops at the first that differs (a wrong list) or after the last (a
    right one), re-read here from the prompt, not from the generator."""
    walked = 0
    for row in generate_rows(1500, seed=0, reference=True, verdict="yes_no"):
        user, critique = row["messages"][0]["content"], row["messages"][1]["content"]
        if not user.startswith("Task: Sort in") or len(user) > 4000:  # long lists: split drops
            continue
        reference = re.search(r"Reference answer: (.*?)\n", user).group(1).split(", ")
        response = re.search(r"Response: (.*?)\n", user).group(1).split(", ")
        walk = re.match(r"Critique: Pairs: (.*?); it (.*)", critique)
        pairs = [re.fullmatch(r"(\d+)/(\d+) (same|differ)", p) for p in walk.group(1).split(", ")]
        both = list(zip(response, reference, strict=True))
        first = next((i for i, (a, b) in enumerate(both) if a != b), None)
        expected = both[: len(both) if first is None else first + 1]
        assert [p.groups()[:2] for p in pairs] == expected, critique
        assert all((p.group(3) == "same") == (p.group(1) == p.group(2)) for p in pairs)
        wrong = row["metadata"]["label"] == 0
        assert (first is not None) == wrong
        assert walk.group(2).startswith("does not match" if wrong else "matches")
        walked += 1
    assert walked > 150


def test_embedded_model_is_deterministic_and_loads(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    metrics = prepare_model(PrepareModelConfig(model="embedded", out=a))
    prepare_model(PrepareModelConfig(model="embedded", out=b))
    assert _digest(a) == _digest(b)
    assert metrics["num_hidden_layers"] == 18  # like gemma-2b-it, so lora_layers 16 applies

    import json

    from mlx_lm import generate, load

    config = json.loads((a / "config.json").read_text())
    assert config["model_type"] == "gemma"
    model, tokenizer = load(str(a))
    assert len(model.layers) == 18
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Compute 2 + 3."}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<bos><start_of_turn>user\nCompute 2 + 3.<end_of_turn>\n<start_of_turn>model\n"
    text = generate(model, tokenizer, prompt, max_tokens=5, verbose=False)
    assert isinstance(text, str) and len(text) > 0
    # generation stops at <end_of_turn>, as gemma-2b-it's does
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in tokenizer.eos_token_ids


def _final_answer(response: str, reference: str) -> str:
    """The final answer of a free-form response, read back independently of the generator: the
    last number where the truth is a number (a unit after it is not restated), else the last
    word."""
    if re.match(r"-?\d", reference):
        return re.findall(r"-?\d+(?:\.\d+)?", response)[-1]
    return re.findall(r"[A-Za-z]+", response)[-1]


def _same(final: str, answer: str) -> bool:
    number = re.match(r"-?\d+(?:\.\d+)?", answer)
    if number:  # 2050.0 is 2050, 7.50 is 7.5 (a unit after the number is not restated)
        return float(final) == float(number.group(0))
    return final == answer


def test_free_form_rows_are_labelled_by_their_final_answer():
    """Every free-form response's label is re-checked from its text: its final answer (the
    last number, or the last word) against the truth; sentences, worked solutions, equivalent
    forms and right-step-wrong-end responses all occur, and free_form=0 keeps the old bytes."""
    rows = list(generate_rows(3000, seed=0, reference=True, verdict="yes_no", free_form=0.5))
    free = [r for r in rows if r["metadata"].get("free_form")]
    assert 950 < len(free) < 1300  # half of the rows that have a free form (~75%: not sorting)
    for r in free:
        meta = r["metadata"]
        final = _final_answer(meta["response"], meta["reference"])
        assert _same(final, meta["reference"]) == bool(meta["label"]), meta
        # the critique names that final answer (in the reference's form) before comparing
        named = re.search(r"response gives (.*?)\. The", r["messages"][1]["content"]).group(1)
        assert _same(final, named), (final, named)
    texts = [r["metadata"]["response"] for r in free]
    assert any(t.startswith("The answer is ") for t in texts)
    assert any(re.fullmatch(r"\d+ [-+*] \d+ = -?\d+", t) for t in texts)  # worked
    assert any(re.fullmatch(r"-?\d+\.\d+0?( \w+)?", t) for t in texts)  # equivalent form
    assert any(", so the answer is " in t for t in texts)  # right step, wrong end
    plain = "".join(dumps(r) for r in generate_rows(500, seed=0, reference=True))
    same = "".join(dumps(r) for r in generate_rows(500, seed=0, reference=True, free_form=0.0))
    assert plain == same


def test_held_out_families_never_reach_the_training_data(tmp_path):
    from src.data.sample import HELD_OUT_MAKERS
    from src.make_sample_data import SampleDataConfig
    from src.make_sample_data import run as make_sample_data

    out, ood = tmp_path / "train.jsonl", tmp_path / "ood.jsonl"
    cfg = SampleDataConfig(
        rows=600, reference=True, verdict="yes_no", out=out, ood_rows=60, ood_out=ood
    )
    metrics = make_sample_data(cfg)
    assert metrics["n_ood"] == 60
    import json

    train = [json.loads(line) for line in out.read_text().splitlines()]
    held = [json.loads(line) for line in ood.read_text().splitlines()]
    families = {"weekday", "largest", "letter_count"}
    assert len(HELD_OUT_MAKERS) == len(families)
    assert {r["metadata"]["task_type"] for r in held} == families
    assert not families & {r["metadata"]["task_type"] for r in train}
    assert not {r["metadata"]["task_id"] for r in held} & {r["metadata"]["task_id"] for r in train}
    assert 15 < sum(bool(r["metadata"].get("free_form")) for r in held) < 45
    for r in held:  # labels by construction, re-checked
        meta = r["metadata"]
        final = _final_answer(meta["response"], meta["reference"])
        assert _same(final, meta["reference"]) == bool(meta["label"]), meta


def test_free_form_evaluation_rows_are_fresh_free_form_tasks_of_the_trained_families(
    tmp_path, monkeypatch
):
    """--ff-rows: evaluation-only rows from the trained families (sorted lists have no free
    form), every response free-form and its label re-checked from the text; tasks drawn from a
    stream of their own (not the training rows' first tasks again); 0 rows: a named file is
    written empty (an output DVC expects; evaluate reads it as no set), a set left unnamed
    writes nothing at its default path."""
    from conftest import read_jsonl

    from src.make_sample_data import SampleDataConfig
    from src.make_sample_data import run as make_sample_data

    out, ff = tmp_path / "train.jsonl", tmp_path / "ff.jsonl"
    common = dict(rows=600, reference=True, verdict="yes_no", out=out, ff_out=ff)
    assert make_sample_data(SampleDataConfig(ff_rows=40, **common))["n_ff"] == 40
    train, rows = read_jsonl(out), read_jsonl(ff)
    assert {r["metadata"]["task_type"] for r in rows} == {"arithmetic", "conversion", "string"}
    assert all(r["metadata"]["free_form"] for r in rows)
    for r in rows:
        meta = r["metadata"]
        assert meta["task_id"].startswith("ff0-")
        final = _final_answer(meta["response"], meta["reference"])
        assert _same(final, meta["reference"]) == bool(meta["label"]), meta
    prompts = [r["messages"][0]["content"].split("\n")[0] for r in rows]
    firsts = [r["messages"][0]["content"].split("\n")[0] for r in train[: len(rows)]]
    assert prompts != firsts  # another stream, not the same tasks in another dress
    monkeypatch.chdir(tmp_path)  # where the default paths would be
    assert make_sample_data(SampleDataConfig(ff_rows=0, **common))["n_ff"] == 0
    assert ff.read_bytes() == b""
    assert not (tmp_path / "data").exists()  # the held-out set: 0 rows, unnamed, not written
