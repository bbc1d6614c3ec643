"""Training throughput on CPU: this project's train stage vs mlx-lm vs PyTorch + PEFT.

    uv run python benchmarks/bench_train.py [--sizes 20m,100m] [--torch-python PY]
        [--setups ours,ours2,direct,cli,torch] [--data text|genrm]

Gemma-shaped random models of about 20M and 100M parameters, batch 4 x 256 tokens, LoRA rank 16
on every linear layer of every block, fp32 base (no quantization: the CPU QLoRA path computes
with dequantized weights, see src/base_model.py), Adam, no gradient checkpointing. Each setup
trains ``warmup + steps`` iterations in its own process; tokens/s is measured over the last
``steps`` only (after compilation and warm-up), from each tool's own per-step timing:

- ``ours``: ``python -m src.train_sft`` (its per-report tokens/s curve); ``ours2``: the same
  as two local ranks under ``mlx.launch`` with one BLAS thread each;
- ``mlx-lm trainer``: ``mlx_lm.tuner.trainer.train`` called directly, defaults (same BLAS);
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
}
BATCH, SEQ, RANK = 4, 256, 16


def build_model(out: Path, shape: dict) -> int:
    """A random model of ``shape`` with the embedded tokenizer (its vocabulary is smaller than the
    model's: the extra embedding rows are simply never looked up)."""
    import mlx.core as mx

    from src.genrm_sample import generate_rows, render_text
    from src.tiny_gemma import TinyGemmaConfig, _weights, build_tiny_gemma, hf_config

    corpus = [render_text(r) for r in generate_rows(2000, seed=10_000)]
    build_tiny_gemma(out, TinyGemmaConfig(), corpus)
    cfg = TinyGemmaConfig(**shape)
    from mlx_lm.utils import load_tokenizer

    config = hf_config(cfg, load_tokenizer(out)._tokenizer)
    config["vocab_size"] = cfg.vocab_size
    (out / "config.json").write_text(json.dumps(config, indent=2))
    weights = {k: mx.array(v) for k, v in _weights(cfg).items()}
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
        text = " ".join(rng.choice(words) for _ in range(400))
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
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
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
) -> float:
    """``ranks`` > 1: that many local processes under ``mlx.launch`` (ring backend), one BLAS
    thread each, as ``train.launcher`` would run them."""
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
            "--curves-dir",
            str(work / "ours_curves"),
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
            "0",
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
    rows = list(csv.DictReader((work / "ours_curves" / "train.csv").open()))[warmup:]
    metrics = json.loads((work / "ours.json").read_text())
    trained_per_step = metrics["trained_tokens"] / metrics["iterations"]  # rows are alike
    seconds = sum(trained_per_step / float(r["tokens_per_sec"]) for r in rows)
    return BATCH * row_tokens * len(rows) / seconds


MLX_LM_DIRECT = """
import sys, json, types
import src  # MKL preload, as for our stage
import mlx.core as mx, mlx.optimizers as optim
from mlx_lm import load
from mlx_lm.tuner.datasets import CacheDataset, create_dataset
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.utils import linear_to_lora_layers
model_path, data, layers, iters, out, mask_prompt = sys.argv[1:7]
model, tok = load(model_path)
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
""" % (RANK, BATCH, SEQ)  # noqa: UP031


def mlx_lm_direct(
    model: Path, data: Path, work: Path, layers: int, warmup: int, steps: int, row_tokens: int = SEQ
) -> float:
    out = _run(
        [
            sys.executable,
            "-c",
            MLX_LM_DIRECT,
            str(model),
            str(data),
            str(layers),
            str(warmup + steps),
            str(work / "direct.safetensors"),
            "1" if row_tokens < SEQ else "0",
        ]
    )
    times = json.loads(out.split("STEP_TIMES", 1)[1].strip().splitlines()[0])[warmup:]
    return BATCH * row_tokens * len(times) / sum(times)


def mlx_lm_cli(
    model: Path, data: Path, work: Path, layers: int, warmup: int, steps: int, preload: bool
) -> float:
    config = work / "lora.yaml"
    config.write_text(f"lora_parameters:\n  rank: {RANK}\n  scale: 20.0\n  dropout: 0.0\n")
    env = {}
    if preload:
        from src.blas import _candidates

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
    return BATCH * SEQ * sum(rates) / len(rates)


def torch_peft(python: str, shape: dict, warmup: int, steps: int) -> float:
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
        ]
    )
    return float(out.split("TOKENS_PER_SEC", 1)[1].split()[0])


def gemm_peak() -> float:
    import mlx.core as mx

    a = mx.random.normal((2048, 2048))
    mx.eval(a @ a)
    t = time.perf_counter()
    for _ in range(10):
        mx.eval(a @ a)
    return 2 * 2048**3 * 10 / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="20m,100m")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--torch-python", default=None)
    p.add_argument(
        "--setups",
        default="ours,direct,cli,torch",
        help="comma-separated subset of: ours, ours2, direct, cli, torch",
    )
    p.add_argument(
        "--data",
        choices=("text", "genrm"),
        default="text",
        help="text: every target trained; genrm: prompt/completion rows, 70%% prompt, "
        "mask_prompt (ours and mlx-lm's trainer only)",
    )
    args = p.parse_args()

    import src  # noqa: F401  (MKL preload before mlx.core)
    from src.blas import blas_report

    peak = gemm_peak()
    print(f"fp32 GEMM peak (MLX, 2048^2): {peak / 1e9:.1f} GFLOP/s  [BLAS: {blas_report()}]")
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
                chosen &= {"ours", "direct"}
            results = {"ours (python -m src.train_sft)": ours(*run, row_tokens)}
            if "ours2" in chosen:
                results["ours, 2 local ranks (mlx.launch)"] = ours(*run, row_tokens, ranks=2)
            if "direct" in chosen:
                results["mlx-lm trainer, called directly"] = mlx_lm_direct(*run, row_tokens)
            if "cli" in chosen:
                results["python -m mlx_lm lora (MKL preloaded)"] = mlx_lm_cli(*run, preload=True)
            if "cli" in chosen and size == "20m":
                results["python -m mlx_lm lora (as installed)"] = mlx_lm_cli(
                    work / "model", work / "data", work, layers, 1, 2, preload=False
                )
            if "torch" in chosen and args.torch_python:
                results["PyTorch + transformers + PEFT"] = torch_peft(
                    args.torch_python, shape, args.warmup, args.steps
                )
        base = results["ours (python -m src.train_sft)"]
        print(
            f"\n{size}: {n / 1e6:.1f}M params, batch {BATCH} x {row_tokens} ({args.data} rows), "
            f"LoRA rank {RANK} on all {layers} layers"
        )
        print("| setup | tokens/s | ours / setup | GFLOP/s | of GEMM peak |\n|---|---|---|---|---|")
        for name, tps in results.items():
            flops = 4 * n * tps
            print(
                f"| {name} | {tps:,.0f} | {base / tps:.2f}x | {flops / 1e9:.1f} | "
                f"{flops / peak:.0%} |"
            )


if __name__ == "__main__":
    main()
