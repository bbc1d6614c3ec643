"""fuse stage: merge the LoRA adapter into the base and prove the merged model is right.

Recipe steps 4-5. Reads the base model and ``checkpoints/sft_adapter``; writes
``checkpoints/sft_merged_model`` (Hugging Face layout, tokenizer and chat template included),
``metrics/fuse.json`` and a few greedy judgements in ``metrics/fuse_generations.md``.

Which base: a QLoRA adapter was trained against the *quantized* base, so it is fused into the
dequantized 4-bit weights (``--fuse-into quantized``, the default): that reproduces the trained
model. Fusing into the original full-precision weights (``--fuse-into original``) gives a
different model; the stage measures that alternative's perplexity on the verification rows
too (``valid_ppl_fused_into_original_subset``) so the choice is visible in ``dvc metrics``.

Output precision: the base's own dtype by default (the reference model for PPO / GRPO);
``--keep-quantized`` re-quantizes the fused weights.

Verification, before anything is written: on the first ``--verify-rows`` validation rows the
fused model must match base + adapter (max |logit difference| and perplexity within tolerance)
and must be much closer to it than the base without adapter is. The perplexity of the whole
validation set is the train stage's (``valid_ppl`` in ``metrics/train.json``, of this adapter):
the fused model is proven equal to it, so a second pass over every row (61 s of the default's
fuse) would only repeat that number. Otherwise the stage fails and leaves no model behind; this is
what catches mlx-lm issue 1172 (a fuse into a quantized base that silently drops the adapter).

Params: ``fuse.*`` (the base model and the adapter come from the stages before it).

    uv run python -m src.fuse_model --model google/gemma-2b-it \\
        --adapter-path checkpoints/sft_adapter --save-path checkpoints/sft_merged_model
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .data.batches import BatchIterator
from .data.sft import make_dataset, read_jsonl, validate_rows
from .judging.card import JudgeCard
from .judging.scores import chat_prompt_ids
from .modeling.head import checked_head, trained_mask
from .modeling.kernels import KERNELS, kernels_arg
from .modeling.load import load_base
from .modeling.losses import mean_loss, perplexity, token_cross_entropy
from .runtime import (
    DataError,
    StageError,
    arg,
    atomic_path,
    check_choice,
    check_range,
    config_parser,
    stage_main,
    write_json,
)

MARKER = "fuse_info.json"  # written into every model this stage saves


@dataclass
class FuseConfig:
    model: str = arg(paths.BASE, "the base model the adapter was trained on")
    adapter_path: Path = arg(paths.ADAPTER, "the train stage's adapter folder")
    save_path: Path = arg(paths.MERGED, "where the merged model is written")
    valid_data: Path = arg(paths.VALID_SPLIT, "validation rows: verification and perplexity")
    generations_out: Path = arg(
        Path("metrics/fuse_generations.md"), "sample judgements of the merged model (markdown)"
    )
    fuse_into: str = arg(
        "quantized",
        "quantized: the dequantized 4-bit base the adapter was trained on; original: the "
        "full-precision weights",
        choices=("quantized", "original"),
    )
    keep_quantized: bool = arg(False, "re-quantize the merged model (may erase the adapter)")
    verify_rows: int = arg(64, "validation rows on which fused and base + adapter must agree")
    n_generations: int = arg(3, "sample judgements written to --generations-out")
    max_tokens: int = arg(48, "length of each sample judgement")
    batch_size: int = arg(8, "rows per forward pass")
    logit_atol: float | None = arg(None, "max |logit difference| allowed (default: by dtype)")
    ppl_rtol: float | None = arg(None, "relative perplexity difference allowed (default: by dtype)")
    cpu_kernels: str = kernels_arg()

    def __post_init__(self) -> None:
        check_choice("--fuse-into", self.fuse_into, ("quantized", "original"))
        check_choice("--cpu-kernels", self.cpu_kernels, KERNELS)
        check_range("--verify-rows", self.verify_rows, 1)


def _tolerances(dtype, cfg: FuseConfig) -> tuple[float, float]:
    """fp32 fuses agree to rounding; 16-bit weights round the merged sum once more."""
    import mlx.core as mx

    wide = dtype == mx.float32
    atol = cfg.logit_atol if cfg.logit_atol is not None else (1e-3 if wide else 0.25)
    rtol = cfg.ppl_rtol if cfg.ppl_rtol is not None else (1e-4 if wide else 2e-2)
    return atol, rtol


def _read_adapter(path: Path) -> dict:
    cfg_file, weights = path / "adapter_config.json", path / "adapters.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise StageError(
                f"adapter file {f} not found. Fix: run the train stage first "
                "(`dvc repro train`) or point --adapter-path at its output."
            )
    config = json.loads(cfg_file.read_text())
    for key in ("num_layers", "lora_parameters"):
        if key not in config:
            raise DataError(
                cfg_file,
                None,
                f"missing key {key!r}",
                "use an adapter_config.json written by the train stage or mlx-lm",
            )
    return config


def _check_save_path(path: Path) -> None:
    if path.exists() and any(path.iterdir()) and not (path / MARKER).is_file():
        raise StageError(
            f"{path} holds files this stage did not write. Fix: choose another "
            "--save-path or move those files away; nothing was overwritten."
        )


def _with_adapter(model, adapter_path: Path):
    from mlx_lm.tuner.utils import load_adapters

    try:
        return load_adapters(model, str(adapter_path))
    except ValueError as err:
        raise StageError(
            f"the adapter in {adapter_path} does not fit this base model: {err}. "
            "Fix: fuse with the --model the adapter was trained on."
        ) from None


@contextmanager
def _adapter_off(model):
    """The base without its adapter, from the same weights: every LoRA layer's scale set to 0
    (``y + 0 * z`` is exactly the base layer's output), instead of loading the base twice."""
    lora = [m for _, m in model.named_modules() if hasattr(m, "fuse") and hasattr(m, "scale")]
    scales = [m.scale for m in lora]
    for m in lora:
        m.scale = 0.0
    try:
        yield model
    finally:
        for m, scale in zip(lora, scales, strict=True):
            m.scale = scale


def _logits(model, batches, kernels: str) -> tuple[list, float]:
    """Each batch's logits, and the perplexity of its trained tokens (the same forward pass:
    one pass per model, not one for the logits and one for the perplexity)."""
    import mlx.core as mx
    import numpy as np

    out, nll, count = [], 0.0, 0
    for batch, lengths in batches:
        logits = model(batch[:, :-1]).astype(mx.float32)
        where = mx.array(np.flatnonzero(trained_mask(np.array(lengths), logits.shape[1])))
        ce = token_cross_entropy(
            logits.reshape(-1, logits.shape[-1])[where], batch[:, 1:].reshape(-1)[where], kernels
        )
        mx.eval(logits, ce)
        nll, count = nll + ce.sum().item(), count + ce.size
        out.append((logits, lengths))
    return out, math.exp(nll / max(count, 1))


def _max_diff(a: list, b: list) -> float:
    import mlx.core as mx

    worst = 0.0
    for (la, lengths), (lb, _) in zip(a, b, strict=True):
        valid = mx.arange(la.shape[1])[None, :] < (lengths[:, 1:] - 1)
        diff = mx.abs(la - lb).max(axis=-1) * valid
        worst = max(worst, diff.max().item())
    return worst


def _generate(model, tokenizer, rows: list[dict], n: int, max_tokens: int) -> str:
    """Greedy judgements of the first ``n`` rows, in one batch through the judge's own generator
    (the tokens mlx-lm's ``generate`` writes, tested). mlx-lm's took 11 s of the default's fuse
    for 3 rows, one row at a time, normalizing the whole vocabulary every step; the stage went
    from 58 s to 47 (benchmarks/README.md)."""
    from .judging.generate import judge_texts

    parts = ["# Greedy judgements of the fused model on validation prompts\n"]
    conversations = [
        row["messages"][:-1]
        if "messages" in row
        else [{"role": "user", "content": row.get("prompt", row.get("text", ""))}]
        for row in rows[:n]
    ]
    prompts = chat_prompt_ids(tokenizer, conversations)
    texts = judge_texts(
        model, tokenizer, prompts, max_tokens, max(len(prompts), 1), checked_head(model)
    )[0]
    for i, (row, messages, text) in enumerate(
        zip(rows[:n], conversations, texts, strict=True), start=1
    ):
        reference = (
            row["messages"][-1]["content"] if "messages" in row else row.get("completion", "")
        )
        parts.append(
            f"## Example {i}\n\n**Prompt**\n\n```\n{messages[-1]['content']}\n```\n\n"
            f"**Fused model (greedy, {max_tokens} tokens max)**\n\n```\n{text}\n```\n\n"
            f"**Reference**\n\n```\n{reference}\n```\n"
        )
    return "\n".join(parts)


def _fuse(model, config: dict, keep_quantized: bool, bits: int, group: int):
    """Merge every LoRA layer into its base layer: a full-precision model (the quantization
    removed from ``config``), or with ``keep_quantized`` one re-quantized to ``bits``."""
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, quantize_model

    merged = [
        (n, m.fuse(dequantize=not keep_quantized))
        for n, m in model.named_modules()
        if hasattr(m, "fuse")
    ]
    model.update_modules(tree_unflatten(merged))
    plain = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    if keep_quantized and bits:
        return quantize_model(model, plain, group, bits)
    return dequantize_model(model), plain


def _verify(fused_diff, base_diff, fused_ppl, ref_ppl, atol, rtol, keep_quantized) -> None:
    """Fail, before anything is written, unless the fused model is base + adapter."""
    problems = []
    if fused_diff > atol:
        problems.append(f"max |logit difference| to base + adapter is {fused_diff:.3g} > {atol:g}")
    if abs(fused_ppl / ref_ppl - 1) > rtol:
        problems.append(
            f"perplexity {fused_ppl:.4f} vs {ref_ppl:.4f} for base + adapter "
            f"(relative tolerance {rtol:g})"
        )
    if base_diff > 0 and fused_diff > 0.5 * base_diff:
        problems.append(
            f"the fused model is as far from base + adapter ({fused_diff:.3g}) as the "
            f"base without adapter is ({base_diff:.3g}): the adapter was lost"
        )
    if problems:
        hint = (
            " Fusing into a quantized base re-rounds the merged weights (mlx-lm issue 1172); "
            "drop --keep-quantized."
            if keep_quantized
            else ""
        )
        raise StageError(
            "fused model failed verification, nothing saved: " + "; ".join(problems) + "." + hint
        )
    if base_diff == 0:
        print(
            "WARNING: the adapter changes nothing (base and base + adapter give identical "
            "logits); was it trained?",
            file=sys.stderr,
        )


def _alternative_ppl(cfg: FuseConfig, group: int, verify_set, max_len: int) -> float:
    """The road not taken: perplexity on the verification rows of the adapter fused into the
    original full-precision weights."""
    alt, *_ = load_base(cfg.model, 0, group, "dequantized", cfg.cpu_kernels)
    alt = _with_adapter(alt, cfg.adapter_path)
    loss = mean_loss(alt, verify_set, cfg.batch_size, max_len, checked_head(alt), cfg.cpu_kernels)
    return perplexity(loss)


def _write(cfg: FuseConfig, fused, tokenizer, config: dict, info: dict, fused_diff: float) -> int:
    """The merged model in the Hugging Face layout, its fuse record and the judge's card;
    returns the weights' size in bytes."""
    from mlx_lm.utils import save

    with atomic_path(cfg.save_path, is_dir=True) as tmp:
        save(tmp, info["path"], fused, tokenizer, config, donate_model=False)
        write_json(
            tmp / MARKER,
            {
                "adapter_path": str(cfg.adapter_path),
                "base": cfg.model,
                "fuse_into": cfg.fuse_into,
                "keep_quantized": cfg.keep_quantized,
                "max_logit_diff": fused_diff,
                "cpu_kernels": cfg.cpu_kernels,  # what the verification computed with
            },
        )
        card = JudgeCard.read(cfg.adapter_path)
        if card is not None:  # the judge carries its format into the merged model
            card.write(tmp)
        return sum(f.stat().st_size for f in tmp.iterdir() if f.suffix == ".safetensors")


def run(cfg: FuseConfig) -> dict:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    adapter = _read_adapter(cfg.adapter_path)
    _check_save_path(cfg.save_path)
    quant = adapter.get("base_quantization") or {}
    bits = quant.get("bits", 0) if cfg.fuse_into == "quantized" else 0
    group = quant.get("group_size", 64)
    mask_prompt = bool(adapter.get("mask_prompt", False))
    max_len = int(adapter.get("max_seq_length", 2048))

    numbered = read_jsonl(cfg.valid_data)
    validate_rows(numbered, cfg.valid_data)  # errors cite the file's own line numbers
    rows = [r for _, r in numbered]

    # Reference: base + adapter (unfused), exactly as trained. Base: the same without adapter.
    ref, tokenizer, config, info = load_base(cfg.model, bits, group, "dequantized", cfg.cpu_kernels)
    ref = _with_adapter(ref, cfg.adapter_path)
    # Verified in the dtype it computes in (float32 on the CPU, src/modeling/load.py), saved in
    # the base's own dtype: rounding a merged bf16 model is the user's choice of dtype, not a bug.
    atol, rtol = _tolerances(getattr(mx, info["compute_dtype"]), cfg)
    verify_set = make_dataset(rows[: cfg.verify_rows], tokenizer, mask_prompt)
    batches = list(BatchIterator(0)(verify_set, cfg.batch_size, max_len))
    ref_logits, ref_ppl = _logits(ref, batches, cfg.cpu_kernels)
    with _adapter_off(ref):
        base_diff = _max_diff(_logits(ref, batches, cfg.cpu_kernels)[0], ref_logits)

    fused, config = _fuse(ref, config, cfg.keep_quantized, bits, group)
    fused.eval()
    fused_logits, fused_ppl = _logits(fused, batches, cfg.cpu_kernels)
    fused_diff = _max_diff(fused_logits, ref_logits)
    del fused_logits, ref_logits
    _verify(fused_diff, base_diff, fused_ppl, ref_ppl, atol, rtol, cfg.keep_quantized)

    alt_ppl = None
    if bits and not info["prequantized_base"]:  # a base shipped quantized has no original
        alt_ppl = _alternative_ppl(cfg, group, verify_set, max_len)
    samples = _generate(fused, tokenizer, rows, cfg.n_generations, cfg.max_tokens)

    if not (cfg.keep_quantized and bits):
        fused.set_dtype(getattr(mx, info["base_dtype"]), lambda d: mx.issubdtype(d, mx.floating))
        config["torch_dtype"] = info["base_dtype"]
    size = _write(cfg, fused, tokenizer, config, info, fused_diff)
    with atomic_path(cfg.generations_out) as tmp:
        tmp.write_text(samples, encoding="utf-8")

    metrics = {
        "max_logit_diff": fused_diff,
        "max_logit_diff_base": base_diff,
        "valid_ppl_reference_subset": round(ref_ppl, 6),
        "valid_ppl_fused_subset": round(fused_ppl, 6),
        "n_params": int(sum(v.size for _, v in tree_flatten(fused.parameters()))),
        "size_mb": round(size / 1e6, 3),
    }
    if alt_ppl is not None:
        metrics["valid_ppl_fused_into_original_subset"] = round(alt_ppl, 6)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    return config_parser(FuseConfig, "src.fuse_model", __doc__, "metrics/fuse.json")


def main(argv: list[str] | None = None) -> int:
    return stage_main(build_parser(), FuseConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
