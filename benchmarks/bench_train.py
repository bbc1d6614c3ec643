"""Training throughput on CPU: this project's train stage vs mlx-lm vs PyTorch + PEFT.

    uv run python benchmarks/bench_train.py [--sizes 20m,100m] [--torch-python PY]
        [--setups ours,ours2,direct,cli,torch] [--data text|genrm]
    # on a GPU (benchmarks/cuda_check.sh): bf16 base, QLoRA rows, long sequences, a 2B shape
    python benchmarks/bench_train.py --sizes 100m,2b --dtype bfloat16 --batch 4 --seq 2048 \
        --setups ours,ours_q4,direct_q4,torch --torch-python python3

Gemma-shaped random models of about 20M and 100M parameters, batch 4 x 256 tokens, LoRA rank 16
on every linear layer of every block, fp32 base (no quantization: the CPU QLoRA path computes
with dequantized weights, see src/base_model.py), Adam, no gradient checkpointing. Each setup
trains ``warmup + steps`` iterations in its own process; tokens/s is measured over the last
``steps`` only (after compilation and warm-up), from each tool's own per-step timing
(``--batch``, ``--seq``, ``--dtype`` and the ``_q4`` setups are for GPU runs):

- ``ours``: ``python -m src.train_sft`` (its per-report tokens/s curve); ``ours2``: the same
  as two local ranks under ``mlx.launch`` with one BLAS thread each; ``ours_q4``: QLoRA, the
  base quantized to 4 bits (group 64) by the stage, ``qlora.compute: auto``;
- ``mlx-lm trainer``: ``mlx_lm.tuner.trainer.train`` called directly, defaults (same BLAS);
  ``direct_q4``: the same on the 4-bit base (``mlx_lm.utils.quantize_model``);
- ``mlx_lm lora (MKL)`` / ``mlx_lm lora (as installed)``: the ``python -m mlx_lm lora`` CLI with
  and without MKL preloaded (as installed = the mlx-cpu wheel's reference BLAS; 20M only, it is
  very slow);
- ``torch + peft``: ``benchmarks/torch_peft_baseline.py`` run by ``--torch-python`` (a Python with
  torch, transformers and peft; torch is never a project dependency).

Achieved FLOP/s counts 4 x params x tokens (LoRA on a frozen base: forward 2N, input gradients
2N; the LoRA matmuls and attention scores are left out) and is shown as a fraction of the fp32
GEMM peak measured here with MLX (2048^2 matmul).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {  # Gemma-shaped: MQA (1 KV head), head_dim 64, GeGLU MLP 4x, tied embeddings
    "20m": dict(
        num_hidden_layers=8,
        hidden_size=384,
        intermediate_size=1536,
        num_attention_heads=6,
        num_key_value_heads=1,
        head_dim=64,
        vocab_size=16384,
    ),
    "100m": dict(
        num_hidden_layers=9,
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_key_value_heads=1,
        head_dim=64,
        vocab_size=32000,
    ),
    "2b": dict(  # gemma-2b's config.json
        num_hidden_layers=18,
        hidden_size=2048,
        intermediate_size=16384,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=256,
        vocab_size=256000,
    ),
}
BATCH, SEQ, RANK = 4, 256, 16  # --batch and --seq override the first two
DTYPE = "float32"  # --dtype: the base's dtype


def build_model(out: Path, shape: dict) -> int:
    """A random model of ``shape`` with the embedded tokenizer (its vocabulary is smaller than the
    model's: the extra embedding rows are simply never looked up). Weights come from MLX's RNG
    in ``DTYPE`` (numpy would take about a minute for the 2B shape)."""
    import mlx.core as mx

    from src.data.sample import generate_rows, render_text
    from src.modeling.tiny_gemma import TinyGemmaConfig, _weights, build_tiny_gemma, hf_config

    corpus = [render_text(r) for r in generate_rows(2000, seed=10_000)]
    build_tiny_gemma(out, TinyGemmaConfig(), corpus)
    cfg = TinyGemmaConfig(**shape)
    from mlx_lm.utils import load_tokenizer

    config = hf_config(cfg, load_tokenizer(out)._tokenizer)
    config["vocab_size"] = cfg.vocab_size
    (out / "config.json").write_text(json.dumps(config, indent=2))
    dtype = getattr(mx, DTYPE)
    mx.random.seed(0)
    weights = _weights(cfg, lambda *shape: (mx.random.normal(shape) * cfg.init_std).astype(dtype))
    weights = {k: mx.array(v).astype(dtype) for k, v in weights.items()}
    config["torch_dtype"] = DTYPE
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    return sum(v.size for v in weights.values())


def write_data(data_dir: Path, model: Path, kind: str = "text") -> int:
    """``text``: rows of exactly SEQ tokens (BOS + words + EOS), so every setup sees 4 x 256 and
    trains every target. ``genrm``: identical prompt/completion rows of at most SEQ tokens,
    ~70% prompt as in GenRM data, trained with mask_prompt. Returns tokens per row."""
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(model)
    rng = random.Random(0)
    words = [
        "the",
        "judge",
        "reads",
        "a",
        "task",
        "and",
        "a",
        "response",
        "then",
        "writes",
        "a",
        "short",
        "critique",
        "score",
    ]
    rows = []
    for _ in range(64):
        text = " ".join(rng.choice(words) for _ in range(max(400, 2 * SEQ)))
        ids = tok.encode(text, add_special_tokens=False)[: SEQ - 2]
        rows.append({"text": tok.decode(ids)})
    if kind == "genrm":
        ids = tok.encode(rows[0]["text"], add_special_tokens=False)
        cut = int(0.7 * len(ids)) - 20  # room for the chat template's tokens
        row = {"prompt": tok.decode(ids[:cut]), "completion": tok.decode(ids[cut : len(ids) - 20])}
        rows = [row] * 64
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
        n = len(tok.apply_chat_template(messages, tokenize=True))
        assert n <= SEQ, n
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows), ("valid", rows[:4])):
        (data_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    if kind == "genrm":
        return n
    lengths = {len(tok.encode(r["text"])) + 1 for r in rows}
    assert max(lengths) <= SEQ, lengths
    return SEQ


def _run(cmd: list[str], env: dict | None = None) -> str:
    done = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        },
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def ours(
    model: Path,
    data: Path,
    work: Path,
    layers: int,
    warmup: int,
    steps: int,
    row_tokens: int = SEQ,
    ranks: int = 1,
    bits: int = 0,
) -> tuple[float, float]:
    """Tokens/s and peak memory (GB). ``ranks`` > 1: that many local processes under
    ``mlx.launch`` (ring backend), one BLAS thread each, as ``train.launcher`` would run them.
    ``bits``: the stage quantizes the base (QLoRA)."""
    iters = warmup + steps
    launch, env = [], {}
    if ranks > 1:
        launcher = str(Path(sys.executable).parent / "mlx.launch")
        launch = [launcher, "-n", str(ranks), "--backend", "ring", "--"]
        env = {"MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    _run(
        launch
        + [
            sys.executable,
            "-m",
            "src.train_sft",
            "--model",
            str(model),
            "--train-data",
            str(data / "train.jsonl"),
            "--valid-data",
            str(data / "valid.jsonl"),
            "--adapter-path",
            str(work / "ours"),
            "--live-dir",
            str(work / "ours_live"),
            "--metrics",
            str(work / "ours.json"),
            "--iters",
            str(iters),
            "--batch-size",
            str(BATCH),
            "--grad-accum",
            "1",
            "--lora-layers",
            str(layers),
            "--rank",
            str(RANK),
            "--bits",
            str(bits),
            "--warmup-steps",
            "0",
            "--steps-per-report",
            "1",
            "--steps-per-eval",
            str(iters),
            "--steps-per-save",
            str(iters),
            "--max-seq-length",
            str(SEQ),
            "--mask-prompt",
            str(row_tokens < SEQ).lower(),
        ],
        env=env,
    )
    tsv = work / "ours_live" / "plots" / "metrics" / "tokens_per_sec.tsv"
    rows = list(csv.DictReader(tsv.open(), delimiter="\t"))[warmup:]
    metrics = json.loads((work / "ours.json").read_text())
    trained_per_step = metrics["trained_tokens"] / metrics["iterations"]  # rows are alike
    seconds = sum(trained_per_step / float(r["tokens_per_sec"]) for r in rows)
    return BATCH * row_tokens * len(rows) / seconds, metrics["peak_memory_gb"]


MLX_LM_DIRECT = """
import sys, json, types
import src  # MKL preload, as for our stage
import mlx.core as mx, mlx.optimizers as optim
from mlx_lm import load
from mlx_lm.tuner.datasets import CacheDataset, create_dataset
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.utils import linear_to_lora_layers
model_path, data, layers, iters, out, mask_prompt, bits = sys.argv[1:8]
model, tok, config = load(model_path, return_config=True)
if int(bits):
    from mlx_lm.utils import quantize_model
    model, config = quantize_model(model, config, 64, int(bits))
model.freeze()
linear_to_lora_layers(model, int(layers), {"rank": %d, "scale": 20.0, "dropout": 0.0})
rows = [json.loads(l) for l in open(data + "/train.jsonl")]
ds = CacheDataset(create_dataset(rows, tok, types.SimpleNamespace(mask_prompt=mask_prompt == "1")))
times = []
class CB(TrainingCallback):
    def on_train_loss_report(self, info):
        times.append(1.0 / info["iterations_per_second"])
train(model, optim.Adam(learning_rate=1e-4), ds, None,
      TrainingArgs(batch_size=%d, iters=int(iters), steps_per_report=1, steps_per_save=10**9,
                   max_seq_length=%d, adapter_file=out), training_callback=CB())
print("STEP_TIMES", json.dumps(times))
print("PEAK_GB", mx.get_peak_memory() / 1e9)
"""  # filled with (RANK, BATCH, SEQ) when run


def mlx_lm_direct(
    model: Path,
    data: Path,
    work: Path,
    layers: int,
    warmup: int,
    steps: int,
    row_tokens: int = SEQ,
    bits: int = 0,
) -> tuple[float, float]:
    out = _run(
        [
            sys.executable,
            "-c",
            MLX_LM_DIRECT % (RANK, BATCH, SEQ),
            str(model),
            str(data),
            str(layers),
            str(warmup + steps),
            str(work / "direct.safetensors"),
            "1" if row_tokens < SEQ else "0",
            str(bits),
        ]
    )
    times = json.loads(out.split("STEP_TIMES", 1)[1].strip().splitlines()[0])[warmup:]
    peak = float(out.split("PEAK_GB", 1)[1].split()[0])
    return BATCH * row_tokens * len(times) / sum(times), peak


def mlx_lm_cli(
    model: Path, data: Path, work: Path, layers: int, warmup: int, steps: int, preload: bool
) -> tuple[float, None]:
    config = work / "lora.yaml"
    config.write_text(f"lora_parameters:\n  rank: {RANK}\n  scale: 20.0\n  dropout: 0.0\n")
    env = {}
    if preload:
        from src.modeling.blas import _candidates

        env["LD_PRELOAD"] = _candidates()[0]
    out = _run(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "lora",
            "--model",
            str(model),
            "--train",
            "--data",
            str(data),
            "--iters",
            str(warmup + steps),
            "--batch-size",
            str(BATCH),
            "--num-layers",
            str(layers),
            "--steps-per-report",
            "1",
            "--steps-per-eval",
            str(10**6),
            "--val-batches",
            "1",
            "--max-seq-length",
            str(SEQ),
            "--adapter-path",
            str(work / "cli"),
            "-c",
            str(config),
        ],
        env=env,
    )
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # mlx-lm's rich console colours even to a pipe
    # rows "  iter  train_loss ▼  tok/s  tokens"; tok/s counts the trained targets of a step
    rates = [
        float(m.replace(",", "")) / (BATCH * (SEQ - 1))
        for m in re.findall(r"^\s+\d+\s+[\d.]+ [▼▲]\s+([\d,]+)", out, re.M)
    ]
    rates = rates[warmup:]
    return BATCH * SEQ * sum(rates) / len(rates), None


def torch_peft(python: str, shape: dict, warmup: int, steps: int) -> tuple[float, float | None]:
    """PyTorch on CUDA when it sees a GPU (bf16/fp16 as --dtype), else CPU fp32."""
    out = _run(
        [
            python,
            str(ROOT / "benchmarks" / "torch_peft_baseline.py"),
            json.dumps(shape),
            str(BATCH),
            str(SEQ),
            str(RANK),
            str(warmup),
            str(steps),
            DTYPE,
        ]
    )
    print(*[x for x in out.splitlines() if x.startswith("torch ")], flush=True)  # version, device
    peak = out.split("PEAK_GB", 1)[1].split()[0] if "PEAK_GB" in out else "nan"
    return float(out.split("TOKENS_PER_SEC", 1)[1].split()[0]), float(peak)


def gemm_peak() -> tuple[float, str]:
    """Matmul peak of MLX's default device in ``DTYPE`` (2048^2 on CPU, 8192^2 on a GPU)."""
    import mlx.core as mx

    n = 2048 if mx.default_device() == mx.cpu else 8192
    a = mx.random.normal((n, n)).astype(getattr(mx, DTYPE))
    mx.eval(a @ a)
    t = time.perf_counter()
    for _ in range(10):
        mx.eval(a @ a)
    return 2 * n**3 * 10 / (time.perf_counter() - t), f"{DTYPE} {n}^2 on {mx.default_device()}"


def main() -> None:
    global BATCH, SEQ, DTYPE
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="20m,100m")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--torch-python", default=None)
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--seq", type=int, default=SEQ, help="tokens per row")
    p.add_argument("--dtype", default=DTYPE, choices=("float32", "bfloat16", "float16"))
    p.add_argument(
        "--setups",
        default="ours,direct,cli,torch",
        help="comma-separated subset of: ours, ours2, ours_q4, direct, direct_q4, cli, torch",
    )
    p.add_argument(
        "--data",
        choices=("text", "genrm"),
        default="text",
        help="text: every target trained; genrm: prompt/completion rows, 70%% prompt, "
        "mask_prompt (ours and mlx-lm's trainer only)",
    )
    args = p.parse_args()
    BATCH, SEQ, DTYPE = args.batch, args.seq, args.dtype

    import src  # noqa: F401  (MKL preload before mlx.core)
    from src.modeling.blas import blas_report

    peak, where = gemm_peak()
    print(f"GEMM peak (MLX, {where}): {peak / 1e9:.1f} GFLOP/s  [BLAS: {blas_report()}]")
    for size in args.sizes.split(","):
        shape = SIZES[size]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            n = build_model(work / "model", shape)
            row_tokens = write_data(work / "data", work / "model", args.data)
            layers = shape["num_hidden_layers"]
            run = (work / "model", work / "data", work, layers, args.warmup, args.steps)
            chosen = set(args.setups.split(","))
            if args.data == "genrm":  # the CLI and PyTorch setups train every position
                chosen &= {"ours", "ours_q4", "direct", "direct_q4"}
            setups = [  # (setup, row name, function, arguments)
                ("ours", "ours (python -m src.train_sft)", ours, (*run, row_tokens)),
                ("ours_q4", "ours, QLoRA 4-bit base", ours, (*run, row_tokens, 1, 4)),
                ("ours2", "ours, 2 local ranks (mlx.launch)", ours, (*run, row_tokens, 2)),
                ("direct", "mlx-lm trainer, called directly", mlx_lm_direct, (*run, row_tokens)),
                (
                    "direct_q4",
                    "mlx-lm trainer, QLoRA 4-bit base",
                    mlx_lm_direct,
                    (*run, row_tokens, 4),
                ),
                ("cli", "python -m mlx_lm lora (MKL preloaded)", mlx_lm_cli, (*run, True)),
            ]
            if size == "20m":  # the reference BLAS is very slow: 2 steps
                args_ = (work / "model", work / "data", work, layers, 1, 2, False)
                setups.append(("cli", "python -m mlx_lm lora (as installed)", mlx_lm_cli, args_))
            if args.torch_python:
                args_ = (args.torch_python, shape, args.warmup, args.steps)
                setups.append(("torch", "PyTorch + transformers + PEFT", torch_peft, args_))
            print(
                f"\n{size}: {n / 1e6:.1f}M params ({DTYPE}), batch {BATCH} x {row_tokens} "
                f"({args.data} rows), LoRA rank {RANK} on all {layers} layers\n"
                "| setup | tokens/s | first row / setup | GFLOP/s | of GEMM peak | "
                "peak memory GB |\n|---|---|---|---|---|---|",
                flush=True,
            )
            first = None  # each row prints as soon as it is measured: a time limit loses no row
            for setup, name, fn, fn_args in setups:
                if setup not in chosen:
                    continue
                try:  # one failing setup (out of memory, say) must not lose the others
                    tps, mem = fn(*fn_args)
                except Exception as err:  # noqa: BLE001
                    print(f"| {name} | failed: {str(err)[-3000:]} |", flush=True)
                    continue
                first = first or tps
                flops = 4 * n * tps
                print(
                    f"| {name} | {tps:,.0f} | {first / tps:.2f}x | {flops / 1e9:.1f} | "
                    f"{flops / peak:.0%} | {'-' if mem is None else f'{mem:.2f}'} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
