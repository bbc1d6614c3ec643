"""split stage: lengths as training sees them, leakage-free deterministic split, bad input."""

from __future__ import annotations

import json

import pytest
from conftest import read_jsonl, write_jsonl

from src.data.sample import generate_rows
from src.data.sft import make_dataset
from src.modeling.source import load_tokenizer
from src.split_data import main


def _args(tmp_path, model, src, **extra) -> list[str]:
    out = tmp_path / "out"
    args = [
        "--input",
        str(src),
        "--model",
        str(model),
        "--train-out",
        str(out / "train.jsonl"),
        "--valid-out",
        str(out / "valid.jsonl"),
        "--rejects-out",
        str(out / "rejects.jsonl"),
        "--metrics",
        str(out / "split.json"),
        "--valid-size",
        "20",
    ]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _outputs(tmp_path):
    return (
        sorted(p.name for p in (tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else []
    )


def test_split_filters_dedups_and_keeps_groups_and_balance(tmp_path, tiny_model):
    rows = list(generate_rows(400, seed=1, long_fraction=0.03))
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(_args(tmp_path, tiny_model, src, max_seq_length=300, valid_size=60)) == 0
    out = tmp_path / "out"
    train, valid = read_jsonl(out / "train.jsonl"), read_jsonl(out / "valid.jsonl")
    rejects = read_jsonl(out / "rejects.jsonl")
    m = json.loads((out / "split.json").read_text())

    assert len(valid) == 60 and m["n_valid"] == 60
    assert m["n_read"] == 400
    assert m["n_read"] == m["n_kept"] + m["n_duplicates"] + m["n_filtered_too_long"]
    assert m["n_duplicates"] > 0 and m["n_filtered_too_long"] > 0
    assert len(rejects) == m["n_duplicates"] + m["n_filtered_too_long"]  # nothing silently lost
    assert {r["reason"] for r in rejects if "duplicate" not in r["reason"]} == {"too_long"}
    assert all(r["n_tokens"] > 300 for r in rejects if r["reason"] == "too_long")

    keys = [json.dumps(r, sort_keys=True) for r in train + valid]
    assert len(keys) == len(set(keys))  # no exact duplicate survives
    tasks_train = {r["metadata"]["task_id"] for r in train}
    tasks_valid = {r["metadata"]["task_id"] for r in valid}
    assert not tasks_train & tasks_valid  # no task on both sides
    prompts = lambda rs: {json.dumps(r["messages"][:-1]) for r in rs}  # noqa: E731
    assert not prompts(train) & prompts(valid)
    pos_valid = sum(r["metadata"]["label"] for r in valid) / len(valid)
    assert abs(pos_valid - m["label_pos_frac_all"]) <= 1 / 60 + 1e-9

    # Deterministic for a seed, different for another.
    first = (out / "valid.jsonl").read_bytes()
    assert main(_args(tmp_path, tiny_model, src, max_seq_length=300, valid_size=60)) == 0
    assert (out / "valid.jsonl").read_bytes() == first
    assert main(_args(tmp_path, tiny_model, src, max_seq_length=300, valid_size=60, seed=1)) == 0
    assert (out / "valid.jsonl").read_bytes() != first


def test_lengths_match_the_trainers_tokenization(tmp_path, tiny_model):
    """Every kept row, tokenized by mlx-lm's dataset code, fits; every filtered row does not."""
    rows = list(generate_rows(300, seed=2, long_fraction=0.05))
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    limit = 200
    assert main(_args(tmp_path, tiny_model, src, max_seq_length=limit)) == 0
    tok = load_tokenizer(str(tiny_model))
    out = tmp_path / "out"
    kept = read_jsonl(out / "train.jsonl") + read_jsonl(out / "valid.jsonl")
    too_long = [r["row"] for r in read_jsonl(out / "rejects.jsonl") if r["reason"] == "too_long"]
    assert too_long
    kept_ds, long_ds = make_dataset(kept, tok, True), make_dataset(too_long, tok, True)
    assert all(len(kept_ds[i][0]) <= limit for i in range(len(kept_ds)))
    assert all(len(long_ds[i][0]) > limit for i in range(len(long_ds)))
    rejects = read_jsonl(out / "rejects.jsonl")
    for i, r in enumerate(r for r in rejects if r["reason"] == "too_long"):
        assert r["n_tokens"] == len(long_ds[i][0])


@pytest.mark.parametrize("fmt", ["completions", "text", "tools"])
def test_other_formats_and_exact_lengths(tmp_path, tiny_model, fmt):
    from src.data.sft import render, token_lengths

    base = list(generate_rows(60, seed=4, long_fraction=0.0))
    if fmt == "completions":
        rows = [
            {"prompt": r["messages"][0]["content"], "completion": r["messages"][1]["content"]}
            for r in base
        ]
    elif fmt == "text":
        rows = [
            {"text": r["messages"][0]["content"] + "\n" + r["messages"][1]["content"]} for r in base
        ]
    else:
        rows = [{**r, "tools": [{"type": "function", "function": {"name": "f"}}]} for r in base]
    tok = load_tokenizer(str(tiny_model))
    kind = {"completions": "completions", "text": "text", "tools": "chat"}[fmt]
    lengths = token_lengths([render(r, kind, tok) for r in rows], kind, tok)
    ds = make_dataset(rows, tok, mask_prompt=False)
    assert lengths == [len(ds[i][0]) for i in range(len(ds))]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(_args(tmp_path, tiny_model, src)) == 0


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path, tiny_model, genrm_rows):
    text = "\r\n".join(json.dumps(r) for r in genrm_rows[:60]) + "\r\n\r\n"
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + text.replace("\r\n", "\r\n\r\n", 3).encode())
    assert main(_args(tmp_path, tiny_model, src)) == 0
    m = json.loads((tmp_path / "out" / "split.json").read_text())
    assert m["n_read"] == 60


def test_system_role_needs_fold_flag(tmp_path, tiny_model, genrm_rows, capsys):
    rows = [
        {**r, "messages": [{"role": "system", "content": "Be strict."}, *r["messages"]]}
        for r in genrm_rows[:60]
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(_args(tmp_path, tiny_model, src)) == 1
    err = capsys.readouterr().err
    assert f"{src}:1:" in err and "System role not supported" in err and "--fold-system" in err
    assert _outputs(tmp_path) == []
    assert main(_args(tmp_path, tiny_model, src) + ["--fold-system"]) == 0
    first = read_jsonl(tmp_path / "out" / "train.jsonl")[0]["messages"][0]
    assert first["role"] == "user" and first["content"].startswith("Be strict.\n\n")


def _chat(user="hi", assistant="Score: 5/10"):
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    }


BAD = {
    "malformed_json": ('{"messages": [}', 3, "malformed JSON"),
    "missing_fields": ({"foo": 1}, 3, "none of the known fields"),
    "unknown_role": (
        {"messages": [{"role": "human", "content": "x"}, {"role": "assistant", "content": "y"}]},
        3,
        "unknown role 'human'",
    ),
    "out_of_order": (
        {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]},
        3,
        "roles out of order",
    ),
    "non_string": (
        {"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]},
        3,
        "content must be a string",
    ),
    "no_assistant": ({"messages": [{"role": "user", "content": "x"}]}, 3, "no assistant turn"),
    "mixed_formats": ({"text": "hello"}, 3, "text row in a chat file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rows_fail_with_file_line_and_fix(tmp_path, tiny_model, capsys, case):
    bad, line, what = BAD[case]
    lines = [
        json.dumps(_chat()),
        json.dumps(_chat("b")),
        bad if isinstance(bad, str) else json.dumps(bad),
    ]
    lines += [json.dumps(_chat(str(i))) for i in range(40)]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    assert main(_args(tmp_path, tiny_model, src)) == 1
    err = capsys.readouterr().err
    assert f"{src}:{line}:" in err and what in err and "Fix:" in err
    assert "Traceback" not in err
    assert _outputs(tmp_path) == []


def test_invalid_utf8_empty_file_and_too_few_rows(tmp_path, tiny_model, capsys):
    src = tmp_path / "in.jsonl"
    src.write_bytes(json.dumps(_chat()).encode() + b"\n" + b'{"text": "\xff"}\n')
    assert main(_args(tmp_path, tiny_model, src)) == 1
    assert f"{src}:2: invalid UTF-8" in capsys.readouterr().err

    src.write_text("\n\n")
    assert main(_args(tmp_path, tiny_model, src)) == 1
    assert "file is empty" in capsys.readouterr().err

    write_jsonl(src, [_chat(str(i)) for i in range(20)])
    assert main(_args(tmp_path, tiny_model, src)) == 1
    err = capsys.readouterr().err
    assert "only 20 usable rows" in err and "--valid-size is 20" in err
    assert _outputs(tmp_path) == []


def test_missing_local_model_is_an_error_not_a_download(tmp_path, capsys, genrm_rows):
    src = write_jsonl(tmp_path / "in.jsonl", genrm_rows[:50])
    assert main(_args(tmp_path, tmp_path / "no-such-model", src)) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "Hub" in err


def test_streaming_chunks_keep_order_and_fail_cleanly_mid_file(tmp_path, tiny_model, capsys):
    """Rows are rendered and tokenized a chunk at a time while the file is still being read:
    lengths stay in row order across chunks, and a bad row after several chunks were already
    sent to the tokenizer still fails with its line and writes nothing."""
    from src.data.sft import render, token_lengths
    from src.split_data import SplitConfig, _read_and_measure

    rows = list({json.dumps(r): r for r in generate_rows(52, seed=5, long_fraction=0.0)}.values())
    rows = rows[:50]
    src = write_jsonl(tmp_path / "in.jsonl", rows + rows[:3])  # 3 duplicates at the end
    tok = load_tokenizer(str(tiny_model))
    cfg = SplitConfig(input=src, model=str(tiny_model))
    fmt, n_read, kept, _, lengths, rejects = _read_and_measure(cfg, tok, chunk=4)
    assert (fmt, n_read, len(kept), len(rejects)) == ("chat", 53, 50, 3)
    assert lengths == token_lengths([render(r, fmt, tok) for r in rows], fmt, tok)

    system = {"role": "system", "content": "x"}
    bad = {**rows[0], "messages": [system, *rows[0]["messages"]]}
    write_jsonl(src, rows[1:30] + [bad] + rows[31:])
    assert main(_args(tmp_path, tiny_model, src)) == 1
    err = capsys.readouterr().err
    assert f"{src}:30:" in err and "--fold-system" in err and "Traceback" not in err
    assert _outputs(tmp_path) == []


def test_rows_read_exactly_as_the_json_module_reads_them(tmp_path):
    """The fast parser (orjson) falls back to ``json`` for what only ``json`` accepts."""
    from src.data.sft import read_jsonl_lines

    lines = [
        '{"text": "a", "metadata": {"score": NaN, "big": 123456789012345678901234567890}}',
        '{"text": "lone \\ud800 surrogate", "k": 1.5e300, "dup": 1, "dup": 2}',
        '{"text": "caf\\u00e9 \\u2603", "nested": [1, {"x": null}]}',
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    got = [row for _, row, _ in read_jsonl_lines(src)]
    want = [json.loads(line) for line in lines]
    assert json.dumps(got) == json.dumps(want)  # NaN != NaN, so compare the serialised forms
