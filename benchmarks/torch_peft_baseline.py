"""PyTorch + transformers + PEFT on the same shapes as bench_train.py (run by a Python that has
torch, transformers and peft installed; torch is not a project dependency).

    python benchmarks/torch_peft_baseline.py '<shape json>' BATCH SEQ RANK WARMUP STEPS
"""

import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import GemmaConfig, GemmaForCausalLM


def main() -> None:
    shape = json.loads(sys.argv[1])
    batch, seq, rank, warmup, steps = map(int, sys.argv[2:7])
    torch.manual_seed(0)
    config = GemmaConfig(
        **shape,
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        torch_dtype="float32",
        attn_implementation="sdpa",
    )
    model = GemmaForCausalLM(config)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=20 * rank, lora_dropout=0.0, target_modules=targets)
    )
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 2048, (batch, seq))
    times = []
    for _ in range(warmup + steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    per_step = sum(times[warmup:]) / steps
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}")
    print("TOKENS_PER_SEC", batch * seq / per_step)


if __name__ == "__main__":
    main()
