"""Check that the merged model loads in Hugging Face transformers and agrees with MLX.

Needs a Python with torch and transformers (not project dependencies), then the project's env:

    PY=/path/to/torch-python
    $PY benchmarks/check_transformers_load.py hf checkpoints/sft_merged_model /tmp/hf.npz
    uv run python benchmarks/check_transformers_load.py mlx checkpoints/sft_merged_model /tmp/hf.npz

Measured on the embedded default: GemmaForCausalLM loads it; last-position logits agree with
MLX's to 1.0e-4 (mlx-lm's Gemma uses the exact GELU, transformers the tanh approximation).
"""

import sys

import numpy as np

PROMPT = [{"role": "user", "content": "Task: Compute 2 + 3.\n\nResponse: 5\n\nJudge."}]


def main() -> None:
    side, path, out = sys.argv[1:4]
    if side == "hf":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.no_grad():
            logits = model(ids).logits[0, -1].numpy()
        np.savez(out, ids=ids.numpy(), logits=logits)
        print(f"{type(model).__name__} loaded {path}")
    else:
        import mlx.core as mx
        from mlx_lm import load

        saved = np.load(out)
        model, _ = load(path)
        logits = np.array(model(mx.array(saved["ids"]))[0, -1])
        diff = float(np.abs(logits - saved["logits"]).max())
        print(f"max |MLX - transformers| logit difference: {diff:.2e}")
        sys.exit(0 if diff < 1e-2 else 1)


if __name__ == "__main__":
    main()
