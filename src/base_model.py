"""Load the base model the way an adapter is trained against it: the one place that decides
quantization, so the train and fuse stages cannot disagree about what "the base" is."""

from __future__ import annotations

from .model_source import resolve_model
from .runtime import StageError

QLORA_COMPUTE = ("auto", "dequantized", "quantized")


def load_base(model: str, bits: int, group_size: int, compute: str = "auto"):
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

    if compute not in QLORA_COMPUTE:
        raise StageError(
            f"qlora compute must be one of {', '.join(QLORA_COMPUTE)}, got {compute!r}."
        )
    path = resolve_model(model)
    net, tokenizer, config = load(str(path), return_config=True)
    already = "quantization" in config
    if bits and not already:
        net, config = quantize_model(net, config, group_size, bits)
    quantized = bool(bits) or already
    if compute == "auto":
        compute = "dequantized" if mx.default_device() == mx.cpu else "quantized"
    if quantized and compute == "dequantized":
        net = dequantize_model(net)
    info = {
        "path": str(path),
        "quantized_base": quantized,
        "qlora_compute": compute if quantized else "none",
        "base_quantization": config.get("quantization"),
    }
    return net, tokenizer, config, info
