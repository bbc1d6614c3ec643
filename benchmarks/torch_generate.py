"""transformers' ``generate`` on the judge's prompts, for ``benchmarks/bench_generate.py``.

    PY benchmarks/torch_generate.py JOB.json     # PY: a Python with torch and transformers

JOB gives the model folder, the prompts' token ids, the batch sizes, max new tokens and the end
of turn ids. For each batch size: one warm-up batch, then every batch of the prompts (left
padded, greedy, fp32, ``use_cache``), printing one JSON line: the new tokens of each row (the
stop token left out), the prefill seconds (``generate`` of one token: the time to the first
token) and the total seconds of ``generate``.
"""

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

with open(sys.argv[1]) as f:
    job = json.load(f)
torch.set_num_threads(torch.get_num_threads())
model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32).eval()
eos = set(job["eos"])
pad_id = job["eos"][0]


def batch(prompts):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def judge(prompts, max_tokens):
    ids, mask = batch(prompts)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=1,
            do_sample=False,
            pad_token_id=pad_id,
        )
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=sorted(eos),
            pad_token_id=pad_id,
        )
        total = time.perf_counter() - t0
    tokens = []
    for row in out[:, ids.shape[1] :].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        tokens.append(row[:cut])
    return tokens, prefill, total


prompts = job["prompts"]
judge(prompts[:8], 8)  # warm-up
for b in job["batches"]:
    rows = prompts[: max(b, 8)]
    tokens, prefill, total = [], 0.0, 0.0
    for s in range(0, len(rows), b):
        t, p, tt = judge(rows[s : s + b], job["max_tokens"])
        tokens += t
        prefill += p
        total += tt
    print(
        json.dumps({"batch": b, "tokens": tokens, "prefill": prefill, "total": total}), flush=True
    )
