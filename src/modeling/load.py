"""Load the base model the way an adapter is trained against it: the one place that decides
quantization, so the train and fuse stages cannot disagree about what "the base" is."""

from __future__ import annotations

from ..runtime import check_choice
from .kernels import KERNELS, use_fast_kernels
from .source import resolve_model

QLORA_COMPUTE = ("auto", "dequantized", "quantized")


def load_base(model: str, bits: int, group_size: int, compute: str = "auto", kernels: str = "fast"):
    """Return ``(model, tokenizer, config, info)``.

    A full-precision base is quantized to ``bits`` (QLoRA) unless ``bits`` is 0 or it is already
    quantized. ``compute``: MLX's CPU backend runs quantized matmuls 10-20x slower than fp32, so
    on CPU (``auto``) the quantized weights are dequantized once: the model still sees exactly the
    4-bit values (QLoRA's numerics) at BLAS speed, at full-precision memory cost. On Metal and
    CUDA ``auto`` keeps the memory-saving quantized layers.
    """
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.utils import dequantize_model, quantize_model

    check_choice("qlora compute", compute, QLORA_COMPUTE)
    check_choice("cpu_kernels", kernels, KERNELS)
    path = resolve_model(model)
    net, tokenizer, config = load(str(path), return_config=True)
    already = "quantization" in config
    if bits and not already:
        net, config = quantize_model(net, config, group_size, bits)
    quantized = bool(bits) or already
    if compute == "auto":
        compute = "dequantized" if mx.default_device() == mx.cpu else "quantized"
    dtype = weights_dtype(net)
    if quantized and compute == "dequantized":
        net = dequantize_model(net)
    if not quantized or compute == "dequantized":
        cpu_float32(net)
    fast = use_fast_kernels(net, kernels)
    info = {
        "path": str(path),
        "quantized_base": quantized,
        "prequantized_base": already,  # shipped quantized: there are no original weights
        "qlora_compute": compute if quantized else "none",
        "base_quantization": config.get("quantization"),
        "base_dtype": str(dtype).removeprefix("mlx.core."),
        "compute_dtype": str(weights_dtype(net)).removeprefix("mlx.core."),
        "cpu_kernels": kernels,  # the choice; fast_kernels: whether this model computes with them
        "fast_kernels": fast,
    }
    return net, tokenizer, config, info


def weights_dtype(net):
    """The floating dtype holding most of the model's values (a quantized layer's scales stand
    for its weights)."""
    from collections import Counter

    import mlx.core as mx
    from mlx.utils import tree_flatten

    counts = Counter()
    for _, value in tree_flatten(net.parameters()):
        if mx.issubdtype(value.dtype, mx.floating):
            counts[value.dtype] += value.size
    return counts.most_common(1)[0][0]


def cpu_float32(net) -> None:
    """On MLX's CPU backend compute in float32, whatever the weights' dtype: a LoRA training step
    of SmolLM2-135M ran at 8 tokens/s in bf16, 5 in fp16 and 112 in fp32 here
    (benchmarks/bench_dtype.py). No-op on Metal and CUDA. Called only once no layer is quantized
    (the scales of a quantized layer must keep their dtype)."""
    import mlx.core as mx

    if mx.default_device() == mx.cpu:
        net.set_dtype(mx.float32, lambda dtype: mx.issubdtype(dtype, mx.floating))
