"""src/modeling/kernels.py against MLX's own kernels: values, gradients, every mask kind, and the
per-model binding into an mlx-lm model (nothing process-wide)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models import activations, base, llama
from mlx_lm.models.base import create_causal_mask

from src.modeling import kernels as cpu_kernels


def _close(a, b, tol):
    err = mx.abs(a - b).max().item()
    assert err <= tol, err


def _qkv(b=2, hq=6, hkv=2, length=7, s=7, d=16, seed=0):
    mx.random.seed(seed)
    return (
        mx.random.normal((b, hq, length, d)) * 2,
        mx.random.normal((b, hkv, s, d)) * 2,
        mx.random.normal((b, hkv, s, d)),
    )


@pytest.mark.parametrize(
    "length, s, mask",
    [
        (7, 7, None),
        (7, 7, "causal"),
        (3, 9, "causal"),  # queries are the last 3 of 9 positions (prefill after a cache)
        (1, 9, None),  # one decoding step
        (7, 7, create_causal_mask(7, 0, left_padding=mx.array([0, 4]))),  # rows fully masked
        (3, 9, create_causal_mask(3, 6, left_padding=mx.array([2, 0]))),
        (7, 7, mx.where(create_causal_mask(7), 0.0, -1e9)),  # additive
        (7, 7, mx.where(create_causal_mask(7), 0.0, -mx.inf)),
    ],
)
def test_attention_matches_mlx(length, s, mask):
    q, k, v = _qkv(length=length, s=s)
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    got = cpu_kernels.attention(q, k, v, 0.25, mask)
    assert not mx.isnan(got).any().item()
    _close(got, want, 2e-6)


def test_attention_per_head_mask():
    q, k, v = _qkv()
    mask = mx.random.uniform(shape=(2, 6, 7, 7)) > 0.3
    mask = mask | mx.eye(7, dtype=mx.bool_)  # every row attends somewhere
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    _close(cpu_kernels.attention(q, k, v, 0.25, mask), want, 2e-6)


def test_exp_softmax_and_sigmoid_accuracy():
    x = mx.linspace(-100.0, 0.0, 100001)
    exact = mx.exp(x)
    rel = mx.abs(cpu_kernels.exp_nonpositive(x) - exact) / mx.maximum(exact, 1e-30)
    assert mx.where(exact > 1e-37, rel, 0).max().item() < 2e-6
    assert cpu_kernels.exp_nonpositive(mx.array([-mx.inf, -200.0])).tolist() == [0.0, 0.0]
    z = mx.linspace(-30.0, 30.0, 100001)
    _close(cpu_kernels._sigmoid(z), mx.sigmoid(z), 3e-7)
    scores = mx.random.normal((4, 33)) * 20
    _close(cpu_kernels.softmax(scores), mx.softmax(scores, axis=-1), 1e-6)


def test_gradients_match_the_exact_functions():
    mx.random.seed(1)
    gate, x, cot = (mx.random.normal((3, 50)) * 4 for _ in range(3))
    for ours, exact in [
        (cpu_kernels.swiglu, activations.swiglu),
        (lambda g, y: cpu_kernels.softmax(g) * y, lambda g, y: mx.softmax(g, axis=-1) * y),
    ]:
        _, g1 = mx.vjp(ours, [gate, x], [cot])
        _, g0 = mx.vjp(exact, [gate, x], [cot])
        for a, b in zip(g1, g0, strict=True):
            _close(a, b, 1e-5 * max(1.0, mx.abs(b).max().item()))
    q, k, v = _qkv()
    mask = create_causal_mask(7, 0, left_padding=mx.array([0, 2]))

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v) * v[:, :1].mean()).sum()

    fast = loss(lambda q, k, v: cpu_kernels.attention(q, k, v, 0.25, mask))
    slow = loss(
        lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    )
    grads = mx.grad(fast, (0, 1, 2))(q, k, v), mx.grad(slow, (0, 1, 2))(q, k, v)
    for a, b in zip(*grads, strict=True):
        _close(a, b, 1e-5)


def _tiny_llama():
    from conftest import tiny_llama

    return tiny_llama(97, seed=2, tied=True, kernels="exact")


def _untouched():
    """mlx-lm's modules hold their own functions (nothing of ours is process-wide)."""
    from mlx_lm.models import gemma

    for module in (llama, gemma):
        assert module.scaled_dot_product_attention is base.scaled_dot_product_attention
    assert llama.swiglu is activations.swiglu


def test_fast_kernels_bind_to_one_model_and_keep_its_outputs():
    model, other = _tiny_llama(), _tiny_llama()
    tokens = mx.array([[5, 9, 2, 44, 7, 1, 3, 60]])
    before = model(tokens)
    assert cpu_kernels.use_fast_kernels(model, "fast")
    _untouched()
    mlp, attention = model.layers[0].mlp, model.layers[0].self_attn
    assert type(mlp).__call__.__globals__["swiglu"] is cpu_kernels._swiglu_cpu
    assert (
        type(attention).__call__.__globals__["scaled_dot_product_attention"]
        is cpu_kernels._attention_cpu
    )
    assert type(other.layers[0].mlp) is llama.MLP  # the second model is as mlx-lm built it
    _close(model(tokens), before, 1e-5)
    assert not mx.array_equal(model(tokens), before).item()  # ours ran, not MLX's
    # other dtypes take mlx-lm's own path, unchanged
    model.set_dtype(mx.float16)
    other.set_dtype(mx.float16)
    assert mx.array_equal(model(tokens), other(tokens)).item()


def test_exact_kernels_leave_the_model_as_mlx_lm_built_it():
    model = _tiny_llama()
    assert not cpu_kernels.use_fast_kernels(model, "exact")
    assert all(type(m).__module__.startswith("mlx") for _, m in model.named_modules())
    assert type(model.layers[0].mlp) is llama.MLP
    with pytest.raises(ValueError, match="fast, exact"):
        cpu_kernels.use_fast_kernels(model, "quick")


def test_a_lora_training_step_gives_the_exact_gradient():
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model = _tiny_llama()
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 20.0, "dropout": 0.0})
    for _, p in tree_flatten(model.trainable_parameters()):  # LoRA's B starts at zero
        p += 0.01
    tokens = mx.array([[5, 9, 2, 44, 7, 1, 3, 60], [8, 8, 1, 0, 0, 0, 0, 0]])

    def loss(m):
        return nn.losses.cross_entropy(m(tokens[:, :-1]), tokens[:, 1:]).mean()

    l0, g0 = nn.value_and_grad(model, loss)(model)
    assert cpu_kernels.use_fast_kernels(model, "fast")
    l1, g1 = nn.value_and_grad(model, loss)(model)
    assert abs(l0.item() - l1.item()) < 1e-5
    for (name, a), (_, b) in zip(tree_flatten(g1), tree_flatten(g0), strict=True):
        assert mx.abs(a - b).max().item() <= 1e-4 * max(1e-3, mx.abs(b).max().item()), name


def test_fast_kernels_report_true_for_every_model_they_bind():
    """Gemma has no SwiGLU: only its attention is routed, and a second model of the same
    architecture (evaluate loads the judge and the base) must still be reported as routed."""
    from mlx_lm.models import gemma

    args = gemma.ModelArgs(
        model_type="gemma",
        hidden_size=32,
        num_hidden_layers=1,
        intermediate_size=64,
        num_attention_heads=2,
        head_dim=16,
        rms_norm_eps=1e-6,
        vocab_size=50,
        num_key_value_heads=1,
    )
    first, second = gemma.Model(args), gemma.Model(args)
    assert cpu_kernels.use_fast_kernels(first, "fast")
    assert cpu_kernels.use_fast_kernels(first, "fast")  # a second call on the same model
    assert cpu_kernels.use_fast_kernels(second, "fast")
    assert type(gemma.Model(args).layers[0].self_attn) is gemma.Attention
    _untouched()
