"""PyTorch + transformers + PEFT on the same shapes as bench_train.py (run by a Python that has
torch, transformers and peft installed; torch is not a project dependency).

    python benchmarks/torch_peft_baseline.py '<shape json>' BATCH SEQ RANK WARMUP STEPS [DTYPE]

On CUDA when torch sees a GPU (the model in DTYPE, default float32), else on the CPU.
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
    dtype = sys.argv[7] if len(sys.argv) > 7 else "float32"
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    config = GemmaConfig(
        **shape,
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        torch_dtype=dtype,
        attn_implementation="sdpa",
    )
    with device:  # initialise on the GPU directly (a 2B model takes minutes on the CPU)
        model = GemmaForCausalLM(config).to(getattr(torch, dtype))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=20 * rank, lora_dropout=0.0, target_modules=targets)
    )
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 2048, (batch, seq), device=device)
    times = []
    for _ in range(warmup + steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    per_step = sum(times[warmup:]) / steps
    where = torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {where}, {dtype}")
    if cuda:
        print("PEAK_GB", torch.cuda.max_memory_allocated() / 1e9)
    print("TOKENS_PER_SEC", batch * seq / per_step)


if __name__ == "__main__":
    main()
