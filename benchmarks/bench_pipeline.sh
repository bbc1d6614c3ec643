#!/usr/bin/env bash
# Time the default pipeline from scratch and a no-op rerun, in a fresh clone of this repo.
#   bash benchmarks/bench_pipeline.sh
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$src" "$work/repo"
cd "$work/repo"
uv sync -q --frozen
start=$(date +%s.%N)
uv run dvc repro -q
mid=$(date +%s.%N)
uv run dvc repro -q
end=$(date +%s.%N)
python3 -c "print(f'dvc repro from scratch: {$mid - $start:.0f} s; no-op dvc repro: {$end - $mid:.1f} s')"
grep -E '"valid_ppl(_initial)?"' metrics/train.json
