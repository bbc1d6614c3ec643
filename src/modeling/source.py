"""Resolve ``--model`` to a local directory without ever falling back to the network by accident.

mlx-lm's ``load`` downloads from the Hugging Face Hub whenever a path does not exist, so a typo in
a local path turns into a confusing Hub request. Here a name that looks local and does not exist
is an error; only a bare ``org/name`` id goes to the Hub, and only when the user asked for it.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..runtime import StageError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_local(name: str) -> bool:
    """A path-like name: absolute, relative with ./ or ~, deeper than org/name, or rooted in a
    directory that exists here (``checkpoints/typo``)."""
    if name.startswith(("/", ".", "~")) or not _HUB_ID.match(name):
        return True
    return Path(name.split("/", 1)[0]).is_dir()


def resolve_model(name: str, revision: str | None = None) -> Path:
    """Return a local directory holding the model; download only a genuine Hub id."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise StageError(
                f"{path} has no config.json, so it is not a model directory. Fix: point --model "
                "at a directory in the Hugging Face layout (config.json, *.safetensors, tokenizer)."
            )
        return path
    if looks_local(name):
        raise StageError(
            f"model path {name} does not exist. Fix: check the path, or build the embedded "
            "default with `dvc repro prepare_model`; Hub ids have the form org/name."
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                name,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"],
            )
        )
    except Exception as err:  # network, auth, or unknown repo: one clear line, not a traceback
        raise StageError(
            f"could not fetch {name!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            "Fix: check the id and your network/HF_TOKEN, or pass a local model directory."
        ) from err


def load_tokenizer(name: str, revision: str | None = None):
    """mlx-lm's tokenizer wrapper for a model, as ``mlx_lm.load`` would build it."""
    import json

    from mlx_lm.utils import load_tokenizer as _load

    path = resolve_model(name, revision)
    config = json.loads((path / "config.json").read_text())
    return _load(path, eos_token_ids=config.get("eos_token_id"))
