"""Decode attention in C (src/modeling/cpu_decode.py): the same numbers as the MLX attention
it replaces, the same judgements, and generation without it where no compiler is found."""

from __future__ import annotations

import numpy as np
import pytest

from src.modeling import cpu_decode


def _mlx_reference(q, keys, values, left, pos, scale):
    """The compiled decoder's attention (src/modeling/kernels.py) over the same cache and mask."""
    import mlx.core as mx

    from src.modeling import kernels

    cols = np.arange(keys.shape[2])
    mask = (cols[None] >= left[:, None]) & (cols[None] <= pos)
    out = kernels.attention(
        mx.array(q)[:, :, None],
        mx.array(keys),
        mx.array(values),
        scale,
        mx.array(mask)[:, None, None],
    )
    return np.array(out)[:, :, 0]


@pytest.mark.parametrize("heads, kv_heads, dim", [(9, 3, 64), (4, 1, 20), (2, 2, 8)])
def test_the_c_kernel_writes_the_step_and_attends_as_mlx_does(heads, kv_heads, dim):
    import mlx.core as mx

    assert cpu_decode.library() is not None  # CI machines have a C compiler
    rng = np.random.default_rng(0)
    rows, cap, pos = 5, 12, 7
    left = np.array([0, 3, 7, 1, 5], np.int32)  # row 2 has only the new position
    keys = rng.normal(size=(rows, kv_heads, cap, dim)).astype(np.float32)
    values = rng.normal(size=(rows, kv_heads, cap, dim)).astype(np.float32)
    new_k, new_v = (rng.normal(size=(rows, kv_heads, 1, dim)).astype(np.float32) for _ in "kv")
    q = rng.normal(size=(rows, heads, 1, dim)).astype(np.float32)
    before = keys.copy()
    cache = cpu_decode.HostKV(keys, values, left, pos, mx.array(pos - left))
    got = np.array(cache.attend(mx.array(q), mx.array(new_k), mx.array(new_v), 0.3))

    want_keys = before.copy()
    want_keys[:, :, pos] = new_k[:, :, 0]
    np.testing.assert_array_equal(keys, want_keys)  # only position pos was written
    np.testing.assert_array_equal(values[:, :, pos], new_v[:, :, 0])
    want = _mlx_reference(q[:, :, 0], keys, values, left, pos, 0.3)
    assert got.shape == (rows, heads, 1, dim)
    np.testing.assert_allclose(got[:, :, 0], want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got[2, :, 0], np.repeat(new_v[2, :, 0], heads // kv_heads, 0))


def test_attend_refuses_more_than_one_position():
    import mlx.core as mx

    z = np.zeros((1, 1, 4, 8), np.float32)
    cache = cpu_decode.HostKV(z, z.copy(), np.zeros(1, np.int32), 1, mx.array([1]))
    two = mx.zeros((1, 1, 2, 8))
    with pytest.raises(ValueError, match="one position"):
        cache.attend(two, two, two, 1.0)


def test_without_a_compiler_generation_keeps_mlx_attention(
    tiny_model, tmp_path, monkeypatch, capsys
):
    from src.judging import generate as gen
    from src.modeling.kernels import attention_bound
    from src.modeling.load import load_base

    monkeypatch.setattr(cpu_decode, "_state", {})  # no library built in this process yet
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert cpu_decode.library() is None
    assert cpu_decode.library() is None  # said once
    err = capsys.readouterr().err
    assert err.count("NOTE: judging decodes in MLX on the CPU") == 1
    assert "could not build cpu_decode.c" in err and "Fix: check the compiler" in err
    assert not list(tmp_path.rglob("*.so"))  # nothing half-written left behind

    model, tok, _, _ = load_base(str(tiny_model), 0, 64)
    assert attention_bound(model)
    chosen = []
    real = gen._decoder
    monkeypatch.setattr(gen, "_decoder", lambda *a: chosen.append(real(*a)) or chosen[-1])
    out = gen.generate(model, tok, [[2, 5, 6, 7], [2, 9]], 4, 2)
    assert [type(d).__name__ for d in chosen] == ["_CompiledDecoder"]
    assert [len(t) for t in out.tokens] == [4, 4]


def test_the_library_is_built_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_decode, "_state", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cpu_decode.library() is not None
    built = list((tmp_path / "genrm-cpu-kernels").glob("cpu_decode-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(cpu_decode, "_state", {})  # a new process: loads, does not rebuild
    assert cpu_decode.library() is not None
    assert built[0].stat().st_mtime_ns == stamp


def test_only_models_bound_with_the_fast_kernels_get_it(tiny_model):
    from src.modeling.kernels import attention_bound
    from src.modeling.load import load_base

    assert attention_bound(load_base(str(tiny_model), 0, 64, kernels="fast")[0])
    assert not attention_bound(load_base(str(tiny_model), 0, 64, kernels="exact")[0])


@pytest.mark.parametrize("tied", [False, True])
def test_a_llama_decodes_whole_steps_in_c_as_mlx_does(tied):
    """``HostLlama`` decodes a Llama (own or tied head) step by step to MLX's logits; the
    generation tests (tests/test_generate.py, ``[step]``) check its tokens against mlx-lm's."""
    import mlx.core as mx
    from conftest import tiny_llama

    model = tiny_llama(300, tied=tied)
    host = cpu_decode.HostLlama.build(model)
    assert host is not None and host.check(model, tokens=9)
    ids = np.random.default_rng(1).integers(0, 300, (3, 7)).astype(np.int32)
    left = np.array([0, 3, 1], np.int32)
    keys, values = host.caches(3, 8)
    steps = [host.step(ids[:, t], keys, values, left, t) for t in range(7)]
    for i in range(3):
        want = np.array(model(mx.array(ids[i : i + 1, left[i] :]))[0])
        got = np.stack([s[i] for s in steps[left[i] :]])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="past the cache"):
        host.step(ids[:, 0], keys, values, left, 8)


def test_a_model_that_computes_otherwise_keeps_mlx(monkeypatch):
    """What the layout does not show is caught by the check: a Llama whose MLP is GELU is
    refused (generation then keeps ``_HostDecoder``: attention in C, MLX's layers)."""
    import mlx.nn as nn
    from conftest import tiny_llama
    from mlx_lm.models import llama

    assert cpu_decode.HostLlama.build(tiny_llama(300, seed=2)) is not None
    other = tiny_llama(300, seed=3)
    gelu = lambda self, x: self.down_proj(nn.gelu(self.gate_proj(x)) * self.up_proj(x))  # noqa: E731
    monkeypatch.setattr(llama.MLP, "__call__", gelu)
    for layer in other.model.layers:  # the fast kernels' subclass calls the original code
        layer.mlp.__class__ = llama.MLP
    assert cpu_decode._llama_layout(other) is not None
    assert cpu_decode.HostLlama.build(other) is None


def test_other_layouts_are_not_decoded_in_c(tiny_model):
    import mlx.core as mx
    import mlx.nn as nn
    from conftest import tiny_llama

    from src.modeling.load import load_base

    assert cpu_decode._llama_layout(load_base(str(tiny_model), 0, 64, kernels="fast")[0]) is None
    half = tiny_llama(300)
    half.set_dtype(mx.float16)
    quantized = tiny_llama(300)
    nn.quantize(quantized, group_size=32, bits=4)
    traditional = tiny_llama(300)
    for layer in traditional.model.layers:
        layer.self_attn.rope = nn.RoPE(16, traditional=True, base=10000.0)
    for model in (half, quantized, traditional):
        assert cpu_decode._llama_layout(model) is None


def test_the_c_step_is_built_once_per_model_and_weights():
    import gc

    import mlx.core as mx
    from conftest import tiny_llama

    model = tiny_llama(300)
    first = cpu_decode.HostLlama.build(model)
    assert cpu_decode.HostLlama.build(model) is first
    model.update({"model": {"norm": {"weight": mx.ones(64)}}})  # new weights: built again
    again = cpu_decode.HostLlama.build(model)
    assert again is not None and again is not first
    del model, first, again
    gc.collect()
    assert "llama" not in cpu_decode._state  # the model's arrays are not held after it
