"""Run the pipeline's stages without DVC, as ``dvc repro`` would run them from scratch: each
stage's ``cmd`` from dvc.yaml, rendered with params.yaml (plus ``--set key=value`` overrides) and
dvc.yaml's ``vars``, in file order. For machines that have MLX but not DVC (the CUDA check).

    python benchmarks/run_stages.py [--set train.iters=40] [--stages split,train]
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REF = re.compile(r"\$\{([^}]+)\}")


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def render(text: str, values: dict) -> str:
    """Fill ``${key}`` as DVC does (booleans as true/false)."""

    def value(m: re.Match) -> str:
        v = values[m.group(1)]
        return str(v).lower() if isinstance(v, bool) else str(v)

    return REF.sub(value, text)


def commands(overrides: dict[str, str]) -> dict[str, list[str]]:
    """Stage name -> argv, with ``python`` replaced by this interpreter."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    values = flat(yaml.safe_load((ROOT / "params.yaml").read_text()))
    values.update({k: v for block in dvc["vars"] for k, v in block.items()})
    values.update(overrides)
    out = {}
    for name, stage in dvc["stages"].items():
        argv = shlex.split(render(stage["cmd"], values))
        argv[argv.index("python")] = sys.executable
        out[name] = argv
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stages", default="", help="comma-separated; default: all, in order")
    args = p.parse_args()
    cmds = commands(dict(kv.split("=", 1) for kv in args.set))
    for name in args.stages.split(",") if args.stages else cmds:
        print(f"== {name}: {shlex.join(cmds[name])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmds[name], cwd=ROOT).returncode
        print(f"== {name}: exit {rc} after {time.perf_counter() - t:.1f} s", flush=True)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
