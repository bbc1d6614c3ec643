"""Where the pipeline's files live: the defaults of every stage's flags, in one place.

dvc.yaml's ``vars`` name the same paths for DVC (it cannot import Python);
``tests/test_params.py`` checks that the two agree.
"""

from __future__ import annotations

from pathlib import Path

BASE = "checkpoints/base_model"  # a model: a folder, 'embedded' or a Hub id, hence a string
RAW = Path("data/processed/sft/sft_genrm_train.jsonl")
TRAIN_SPLIT = Path("data/processed/sft/sft_train.jsonl")
VALID_SPLIT = Path("data/processed/sft/sft_valid.jsonl")
REJECTS = Path("data/processed/sft/sft_rejects.jsonl")
OOD = Path("data/processed/sft/sft_heldout_families.jsonl")  # evaluation only
FREE_FORM = Path("data/processed/sft/sft_free_form_eval.jsonl")  # evaluation only
ADAPTER = Path("checkpoints/sft_adapter")
STATE = Path("checkpoints/sft_adapter_state")
MERGED = Path("checkpoints/sft_merged_model")
LIVE = Path("metrics/live")

# dvc.yaml var -> the path above
DVC_VARS = {
    "base": BASE,
    "raw": RAW,
    "train_split": TRAIN_SPLIT,
    "valid_split": VALID_SPLIT,
    "rejects": REJECTS,
    "ood": OOD,
    "ff": FREE_FORM,
    "adapter": ADAPTER,
    "state": STATE,
    "merged": MERGED,
    "live": LIVE,
}
