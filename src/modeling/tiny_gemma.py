"""Build a tiny Gemma-architecture model and tokenizer, offline and deterministically.

The result is saved in the Hugging Face layout (config.json, model.safetensors, tokenizer files
with Gemma's special tokens and chat template) so that ``mlx_lm.load(path)`` treats it exactly
like a model from the Hub. Weights are random (numpy ``default_rng(seed)``): the model stands in
for gemma-2b-it for wiring, demos and tests; it knows nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Gemma's special tokens, in Gemma's own id order for the first four.
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]

# gemma-2b-it's chat template, verbatim: no system role, strict user/model alternation.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


@dataclass(frozen=True)
class TinyGemmaConfig:
    """Shape of the embedded model. Defaults: 18 layers like gemma-2b-it, width 64."""

    num_hidden_layers: int = 18
    hidden_size: int = 64
    intermediate_size: int = 256
    num_attention_heads: int = 4
    num_key_value_heads: int = 1
    head_dim: int = 16
    vocab_size: int = 2048
    seed: int = 0
    init_std: float = 0.02


def build_tokenizer(corpus: Iterable[str], vocab_size: int):
    """Train a byte-level BPE tokenizer with Gemma's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    # Like Gemma's tokenizer, plain encode() prepends <bos>; the chat template writes its own.
    bos_id = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        padding_side="left",
    )
    fast.chat_template = GEMMA_CHAT_TEMPLATE
    return fast


def _weights(cfg: TinyGemmaConfig, normal=None) -> dict[str, np.ndarray]:
    """Gemma's weight names and shapes for ``cfg``; ``normal(*shape)`` draws the matrices
    (default: numpy, seeded by ``cfg.seed``; benchmarks pass a faster MLX one for big shapes)."""
    if normal is None:
        rng = np.random.default_rng(cfg.seed)

        def normal(*shape: int) -> np.ndarray:
            return (rng.standard_normal(shape) * cfg.init_std).astype(np.float32)

    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    w = {"model.embed_tokens.weight": normal(cfg.vocab_size, d)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        w[f"{p}.self_attn.q_proj.weight"] = normal(cfg.num_attention_heads * hd, d)
        w[f"{p}.self_attn.k_proj.weight"] = normal(cfg.num_key_value_heads * hd, d)
        w[f"{p}.self_attn.v_proj.weight"] = normal(cfg.num_key_value_heads * hd, d)
        w[f"{p}.self_attn.o_proj.weight"] = normal(d, cfg.num_attention_heads * hd)
        w[f"{p}.mlp.gate_proj.weight"] = normal(f, d)
        w[f"{p}.mlp.up_proj.weight"] = normal(f, d)
        w[f"{p}.mlp.down_proj.weight"] = normal(d, f)
        # Gemma's RMSNorm scales by (1 + weight): zeros are the identity scale.
        w[f"{p}.input_layernorm.weight"] = np.zeros(d, np.float32)
        w[f"{p}.post_attention_layernorm.weight"] = np.zeros(d, np.float32)
    w["model.norm.weight"] = np.zeros(d, np.float32)
    return w


def hf_config(cfg: TinyGemmaConfig, tokenizer) -> dict:
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    return {
        "architectures": ["GemmaForCausalLM"],
        "model_type": "gemma",
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": len(tokenizer),
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 8192,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        # Generation stops at <end_of_turn> as for gemma-2b-it.
        "eos_token_id": [tokenizer.eos_token_id, end_of_turn],
        "tiny_gemma": asdict(cfg),
    }


def build_tiny_gemma(out_dir: Path, cfg: TinyGemmaConfig, corpus: Iterable[str]) -> Path:
    """Write model + tokenizer to ``out_dir`` (which must not exist yet or be empty)."""
    import mlx.core as mx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus, cfg.vocab_size)
    if len(tokenizer) != cfg.vocab_size:
        cfg = TinyGemmaConfig(**{**asdict(cfg), "vocab_size": len(tokenizer)})
    tokenizer.save_pretrained(out_dir)
    config = hf_config(cfg, tokenizer)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out_dir / "generation_config.json").write_text(
        json.dumps(
            {
                "eos_token_id": config["eos_token_id"],
                "bos_token_id": config["bos_token_id"],
                "pad_token_id": config["pad_token_id"],
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    weights = {k: mx.array(v) for k, v in sorted(_weights(cfg).items())}
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "pt"})
    return out_dir
