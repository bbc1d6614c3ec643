"""Decode attention in C (src/modeling/host_attention.py): the same numbers as the MLX attention
it replaces, the same judgements, and generation without it where no compiler is found."""

from __future__ import annotations

import numpy as np
import pytest

from src.modeling import host_attention


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

    assert host_attention.library() is not None  # CI machines have a C compiler
    rng = np.random.default_rng(0)
    rows, cap, pos = 5, 12, 7
    left = np.array([0, 3, 7, 1, 5], np.int32)  # row 2 has only the new position
    keys = rng.normal(size=(rows, kv_heads, cap, dim)).astype(np.float32)
    values = rng.normal(size=(rows, kv_heads, cap, dim)).astype(np.float32)
    new_k, new_v = (rng.normal(size=(rows, kv_heads, 1, dim)).astype(np.float32) for _ in "kv")
    q = rng.normal(size=(rows, heads, 1, dim)).astype(np.float32)
    before = keys.copy()
    cache = host_attention.HostKV(keys, values, left, pos, mx.array(pos - left))
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
    cache = host_attention.HostKV(z, z.copy(), np.zeros(1, np.int32), 1, mx.array([1]))
    two = mx.zeros((1, 1, 2, 8))
    with pytest.raises(ValueError, match="one position"):
        cache.attend(two, two, two, 1.0)


def test_without_a_compiler_generation_keeps_mlx_attention(
    tiny_model, tmp_path, monkeypatch, capsys
):
    from src.judging import generate as gen
    from src.modeling.kernels import attention_bound
    from src.modeling.load import load_base

    monkeypatch.setattr(host_attention, "_state", {})  # no library built in this process yet
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert host_attention.library() is None
    assert host_attention.library() is None  # said once
    err = capsys.readouterr().err
    assert err.count("NOTE: judging decodes with MLX's attention") == 1
    assert "could not build cpu_attention.c" in err and "Fix: check the compiler" in err
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
    monkeypatch.setattr(host_attention, "_state", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert host_attention.library() is not None
    built = list((tmp_path / "genrm-cpu-kernels").glob("cpu_attention-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(host_attention, "_state", {})  # a new process: loads, does not rebuild
    assert host_attention.library() is not None
    assert built[0].stat().st_mtime_ns == stamp


def test_only_models_bound_with_the_fast_kernels_get_it(tiny_model):
    from src.modeling.kernels import attention_bound
    from src.modeling.load import load_base

    assert attention_bound(load_base(str(tiny_model), 0, 64, kernels="fast")[0])
    assert not attention_bound(load_base(str(tiny_model), 0, 64, kernels="exact")[0])
