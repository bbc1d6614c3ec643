"""The embedded SmolLM2 conversion, checked against readers that share no code with it:
transformers' own GGUF tokenizer conversion (fed by llama.cpp's ``gguf`` reader) and a numpy llama
forward pass over ``gguf``'s dequantization of the same file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from src.data.sample import generate_rows
from src.modeling import smollm2

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "model"
    smollm2.build(out)
    return out


@pytest.fixture(scope="module")
def reader():
    return gguf.GGUFReader(str(smollm2.gguf_path()))


def _field(reader, key):
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]][0].item()


def test_tokenizer_matches_transformers_gguf_conversion(smol, reader):
    """Every sample row, rendered with the chat template, gets the same ids from our tokenizer
    as from transformers' conversion of the GGUF metadata (read by llama.cpp's reader)."""
    from tokenizers import Tokenizer
    from transformers.integrations.gguf import convert_gguf_tokenizer

    keys = {
        "tokenizer.ggml.model": "tokenizer_type",
        "tokenizer.ggml.pre": "pre_tokenizer_type",
        "tokenizer.ggml.tokens": "tokens",
        "tokenizer.ggml.token_type": "token_type",
        "tokenizer.ggml.merges": "merges",
        "tokenizer.ggml.bos_token_id": "bos_token_id",
        "tokenizer.ggml.eos_token_id": "eos_token_id",
        "tokenizer.ggml.unknown_token_id": "unk_token_id",
        "tokenizer.ggml.padding_token_id": "pad_token_id",
    }
    tokenizer_dict = {name: _field(reader, key) for key, name in keys.items()}
    theirs, _ = convert_gguf_tokenizer("llama", tokenizer_dict)
    ours = Tokenizer.from_file(str(smol / "tokenizer.json"))

    from src.modeling.source import load_tokenizer

    chat = load_tokenizer(str(smol))  # the local folder, as the stages load it
    texts = []
    for reference in (False, True):
        for row in generate_rows(3000, seed=0, reference=reference):
            texts.append(chat.apply_chat_template(row["messages"], tokenize=False))
    texts += ["Hello  world\n\n\tunicode: é ü 中文 🙂", " leading space", "123456789 12.5"]
    a = [e.ids for e in ours.encode_batch(texts, add_special_tokens=False)]
    b = [e.ids for e in theirs.encode_batch(texts, add_special_tokens=False)]
    mismatched = [t for t, x, y in zip(texts, a, b, strict=True) if x != y]
    assert not mismatched, mismatched[:2]
    assert sum(map(len, a)) > 500_000  # really the whole sample set


def test_special_tokens_and_chat_template(smol, reader):
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(
        smol, eos_token_ids=json.loads((smol / "config.json").read_text())["eos_token_id"]
    )
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert tok.eos_token == "<|im_end|>" == tokens[_field(reader, "tokenizer.ggml.eos_token_id")]
    assert tok.bos_token == "<|im_start|>"
    assert tok.pad_token == "<|im_end|>"
    assert tok.eos_token_ids == {tok.convert_tokens_to_ids("<|im_end|>")}  # ends generation
    assert tok.chat_template == _field(reader, "tokenizer.chat_template")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    text = tok.decode(ids)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # special, never split
    assert tok.encode("Hi", add_special_tokens=False) == tok.encode("Hi")  # no BOS added


def _numpy_llama_logits(reader, ids: list[int]) -> np.ndarray:
    """llama.cpp's computation in numpy: GGUF weights as stored (q/k rows in its rotary layout,
    adjacent pairs rotated), dequantized by the gguf package."""
    w = {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        for t in reader.tensors
    }
    heads = _field(reader, "llama.attention.head_count")
    kv = _field(reader, "llama.attention.head_count_kv")
    eps = _field(reader, "llama.attention.layer_norm_rms_epsilon")
    theta = _field(reader, "llama.rope.freq_base")
    layers = _field(reader, "llama.block_count")
    x = w["token_embd.weight"][ids]
    n, d = x.shape
    hd = d // heads
    pos = np.arange(n)[:, None] * theta ** (-np.arange(0, hd, 2) / hd)[None]
    cos, sin = np.cos(pos)[:, None], np.sin(pos)[:, None]

    def rms(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * g

    def rope(v, h):
        v = v.reshape(n, h, hd // 2, 2)
        a, b = v[..., 0], v[..., 1]
        return np.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(n, h, hd)

    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(layers):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope(h @ w[p + "attn_q.weight"].T, heads)
        k = np.repeat(rope(h @ w[p + "attn_k.weight"].T, kv), heads // kv, axis=1)
        v = np.repeat((h @ w[p + "attn_v.weight"].T).reshape(n, kv, hd), heads // kv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", s, v).reshape(n, d) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    return rms(x, w["output_norm.weight"]) @ w["token_embd.weight"].T


def test_logits_match_an_independent_numpy_llama(smol, reader):
    """Same dequantized values on both sides (d * q + m, exact in float32): what remains is
    float32 rounding over 30 layers, measured 1.3e-4 (MLX in float32 vs float64). 2e-3 on logits
    of size ~20 leaves margin for that and catches what matters: weights rounded to fp16 (fp16
    scales) are off by 0.1, a wrong q/k permutation, rope, norm or tied head by whole units."""
    import mlx.core as mx

    from src.modeling.load import load_base

    model, tok, _, info = load_base(str(smol), 4, 64)
    assert info["compute_dtype"] == "float32"
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Compute 12 * 7. Reply with the number."}],
        add_generation_prompt=True,
    )
    ours = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    ref = _numpy_llama_logits(reader, ids)
    assert np.abs(ours - ref).max() < 2e-3, np.abs(ours - ref).max()
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_prequantized_base_is_not_requantized(smol):
    """The shipped 4-bit weights reach training untouched, whatever --bits/--group-size say."""
    import mlx.core as mx
    from mlx_lm.utils import load

    from src.modeling.load import load_base

    shipped = mx.load(str(smol / "model.safetensors"))
    model, _, config, info = load_base(str(smol), 4, 64, "quantized")
    q = model.model.layers[3].self_attn.q_proj
    assert (q.group_size, q.bits) == (32, 4)
    assert mx.array_equal(q.weight, shipped["model.layers.3.self_attn.q_proj.weight"])
    assert mx.array_equal(q.scales, shipped["model.layers.3.self_attn.q_proj.scales"])
    assert model.model.embed_tokens.bits == 8
    assert info["prequantized_base"] and info["base_dtype"] == "float32"
    assert config["quantization"]["group_size"] == 32
    # and the mlx-lm loader sees the same folder the same way
    plain, _ = load(str(smol))
    assert plain.model.layers[3].self_attn.q_proj.group_size == 32
