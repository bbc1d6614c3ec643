"""fuse stage: merged model equals base + adapter, and the verification catches a lost adapter."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, flags, read_jsonl, train_tiny_adapter

from src.data.sample import generate_rows, render_text
from src.fuse_model import main as fuse
from src.modeling.tiny_gemma import TinyGemmaConfig, build_tiny_gemma


@pytest.fixture(scope="module", params=[4, 0], ids=["qlora", "lora"])
def trained(request, tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp(f"fuse{request.param}")
    return train_tiny_adapter(root, tiny_model, bits=request.param)


def _args(root, model, out, **extra) -> list[str]:
    return flags(
        model=model,
        adapter_path=root / "adapter",
        save_path=out,
        valid_data=root / "valid.jsonl",
        generations_out=out.parent / "gen.md",
        metrics=out.parent / "fuse.json",
        verify_rows=8,
        n_generations=1,
        max_tokens=8,
        **extra,
    )


def test_fused_model_matches_base_plus_adapter(trained, tiny_model, tmp_path):
    out = tmp_path / "merged"
    assert fuse(_args(trained, tiny_model, out)) == 0
    m = json.loads((tmp_path / "fuse.json").read_text())
    assert m["max_logit_diff"] < 1e-3
    assert m["max_logit_diff_base"] > 100 * m["max_logit_diff"]  # the adapter did something
    assert m["valid_ppl_fused_subset"] == pytest.approx(m["valid_ppl_reference_subset"], 1e-4)
    assert "valid_ppl" not in m  # the whole set's is the train stage's: not measured twice
    assert m["size_mb"] > 0 and m["n_params"] > 0

    from mlx_lm import generate, load

    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config and config["model_type"] == "gemma"
    model, tok = load(str(out))
    assert model.model.embed_tokens.weight.dtype == __import__("mlx.core").core.float32
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Compute 1 + 1."}], add_generation_prompt=True, tokenize=False
    )
    assert isinstance(generate(model, tok, prompt, max_tokens=4, verbose=False), str)
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (
        out / "tokenizer_config.json"
    ).read_text()
    # The sample judgements (the judge's batched generator) are the tokens mlx-lm writes.
    from src.judging.scores import chat_prompt_ids

    samples = (tmp_path / "gen.md").read_text()
    row = read_jsonl(trained / "valid.jsonl")[0]
    ids = chat_prompt_ids(tok, [row["messages"][:-1]])[0]
    want = generate(model, tok, ids, max_tokens=8, verbose=False)
    assert want and f"**Fused model (greedy, 8 tokens max)**\n\n```\n{want}\n```" in samples

    # A second run replaces its own previous output.
    assert fuse(_args(trained, tiny_model, out)) == 0


def test_qlora_fuse_reports_the_full_precision_alternative(tmp_path, tiny_model, trained):
    out = tmp_path / "merged"
    assert fuse(_args(trained, tiny_model, out)) == 0
    m = json.loads((tmp_path / "fuse.json").read_text())
    quantized = json.loads((trained / "adapter" / "adapter_config.json").read_text())[
        "base_quantization"
    ]
    assert ("valid_ppl_fused_into_original_subset" in m) == bool(quantized)


def test_verification_catches_a_fuse_that_lost_the_adapter(
    trained, tiny_model, tmp_path, monkeypatch, capsys
):
    from mlx_lm.tuner.lora import LoRALinear

    monkeypatch.setattr(LoRALinear, "fuse", lambda self, dequantize=False: self.linear)
    out = tmp_path / "merged"
    assert fuse(_args(trained, tiny_model, out)) == 1
    err = capsys.readouterr().err
    assert "failed verification" in err and "the adapter was lost" in err
    assert not out.exists() and not (tmp_path / "fuse.json").exists()


def test_bad_inputs(trained, tiny_model, tmp_path, capsys):
    out = tmp_path / "merged"
    missing = _args(trained, tiny_model, out)
    missing[missing.index("--adapter-path") + 1] = str(tmp_path / "nope")
    assert fuse(missing) == 1
    assert "adapter file" in capsys.readouterr().err

    other = TinyGemmaConfig(
        **{**TINY.__dict__, "hidden_size": 128, "intermediate_size": 256, "head_dim": 64}
    )
    wrong_base = build_tiny_gemma(
        tmp_path / "wide", other, [render_text(r) for r in generate_rows(100, seed=1)]
    )
    assert fuse(_args(trained, wrong_base, out)) == 1
    err = capsys.readouterr().err
    assert "does not fit this base model" in err and "Traceback" not in err
    assert not out.exists()

    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert fuse(_args(trained, tiny_model, out)) == 1
    assert "holds files this stage did not write" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_keep_quantized_refuses_a_requantized_model_that_lost_the_adapter(
    trained, tiny_model, tmp_path, capsys
):
    """Re-quantizing merged weights rounds a small LoRA delta away (mlx-lm issue 1172)."""
    quantized = json.loads((trained / "adapter" / "adapter_config.json").read_text())[
        "base_quantization"
    ]
    out = tmp_path / "merged"
    code = fuse(_args(trained, tiny_model, out, keep_quantized="true"))
    if not quantized:  # nothing to re-quantize: a plain LoRA base stays full precision
        assert code == 0
        return
    assert code == 1
    err = capsys.readouterr().err
    assert "issue 1172" in err and not out.exists()


def test_bf16_base_computes_in_float32_on_cpu_and_fuses_back_to_bf16(tiny_model, tmp_path):
    """MLX's CPU runs bf16 matmuls off the BLAS path (~13x slower): train and verify in float32,
    save the merged model in the base's own dtype."""
    import shutil

    import mlx.core as mx

    bf16 = tmp_path / "bf16-base"
    shutil.copytree(tiny_model, bf16)
    weights = mx.load(str(bf16 / "model.safetensors"))
    mx.save_safetensors(
        str(bf16 / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in weights.items()}
    )
    root = train_tiny_adapter(tmp_path / "run", bf16, bits=0)
    base = json.loads((root / "adapter" / "run_info.json").read_text())["base"]
    assert (base["base_dtype"], base["compute_dtype"]) == ("bfloat16", "float32")

    out = tmp_path / "merged"
    assert fuse(_args(root, bf16, out)) == 0
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    saved = mx.load(str(out / "model.safetensors"))
    assert {v.dtype for v in saved.values()} == {mx.bfloat16}


def test_bad_validation_row_is_reported_at_its_own_line(trained, tiny_model, tmp_path, capsys):
    lines = (trained / "valid.jsonl").read_text().splitlines()
    valid = tmp_path / "valid.jsonl"
    valid.write_text("\n".join([lines[0], "", '{"messages": []}'] + lines[1:]) + "\n")
    out = tmp_path / "merged"
    args = _args(trained, tiny_model, out)
    args[args.index("--valid-data") + 1] = str(valid)
    assert fuse(args) == 1
    err = capsys.readouterr().err
    assert f"{valid}:3:" in err and "Traceback" not in err and not out.exists()
