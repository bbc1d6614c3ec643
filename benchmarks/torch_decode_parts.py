"""PyTorch's side of ``bench_generate.py --profile``: the same parts of a decode step, chained
through the model's layers, on the same model folder (transformers' modules, fp32).

    PY benchmarks/torch_decode_parts.py '{"model": DIR, "batch": 32, "cache": 140}'

Prints one JSON line: part name -> median ms of 10.
"""

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

job = json.loads(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32).eval()
b, s = job["batch"], job["cache"]
cfg = model.config
layers = model.model.layers
hq, hkv, dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
d = dim // hq
torch.manual_seed(0)
h0 = 0.1 * torch.randn(b, 1, dim)
keys = [torch.randn(b, hkv, s, d) for _ in layers]
values = [torch.randn(b, hkv, s, d) for _ in layers]
mask = torch.ones(b, 1, 1, s, dtype=torch.bool)
positions = (torch.arange(b) + 100)[:, None]


def chain(part):
    def run():
        h = h0
        for i, layer in enumerate(layers):
            h = h + part(i, layer, h)
        return h

    return run


def heads(h):
    return h.reshape(b, 1, hq, d).transpose(1, 2)


def back(o):
    return o.transpose(1, 2).reshape(b, 1, dim)


def proj(i, layer, h):
    a = layer.self_attn
    kv = a.k_proj(h) + a.v_proj(h)
    return a.o_proj(a.q_proj(h) + kv.repeat(1, 1, hq // hkv))


def rope(i, layer, h):
    cos, sin = model.model.rotary_emb(h, positions)
    q, k = apply_rotary_pos_emb(heads(h), heads(h)[:, :hkv], cos, sin)
    return back(q) + back(k.repeat(1, hq // hkv, 1, 1))


def attention(i, layer, h):
    o = torch.nn.functional.scaled_dot_product_attention(
        heads(h), keys[i], values[i], attn_mask=mask, scale=0.125, enable_gqa=True
    )
    return back(o)


h1 = 0.1 * torch.randn(b, 1, cfg.intermediate_size)  # the MLP's width
act = layers[0].mlp.act_fn
parts = {
    "MLP (3 matmuls + SwiGLU)": chain(lambda i, layer, h: layer.mlp(h)),
    "  of which SwiGLU": chain(lambda i, layer, h: (act(h1) * h1)[..., :dim]),
    "q/k/v/o projections": chain(proj),
    "attention over the cache": chain(attention),
    "RoPE (queries and keys)": chain(rope),
    "RMSNorm x 2": chain(
        lambda i, layer, h: layer.post_attention_layernorm(layer.input_layernorm(h))
    ),
    "LM head + argmax": lambda: model.lm_head(h0[:, -1]).argmax(-1),
}


def timed(fn, n=10):
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2] * 1e3


with torch.inference_mode():
    print(json.dumps({name: timed(fn) for name, fn in parts.items()}))
